// elbokit/mlp.hpp: the flat parameter layout and the MLP trunk (Linear + activation per layer).
//
// Shapes: B batch, I trunk input, H_l width of layer l. Parameters live in one flat buffer; a
// ParamLayout names its views with the keys of the equivalent PyTorch module's state_dict.
#pragma once

#include <string>
#include <vector>

#include "elbokit/layers.hpp"
#include "elbokit/rng.hpp"

namespace elbokit {

struct ParamEntry {
  std::string name;
  std::vector<Index> shape;
  Index offset = 0;
  Index size = 0;
};

// Offsets of one linear layer's weight (out, in) and bias (out) in the flat buffer.
struct Dense {
  Index in = 0, out = 0, w = 0, b = 0;
};

struct ParamLayout {
  std::vector<ParamEntry> entries;
  Index total = 0;

  Index add(const std::string& name, std::vector<Index> shape) {
    Index size = 1;
    for (Index s : shape) size *= s;
    entries.push_back({name, std::move(shape), total, size});
    total += size;
    return entries.back().offset;
  }
  Dense add_dense(const std::string& prefix, Index in, Index out) {
    Dense d;
    d.in = in;
    d.out = out;
    d.w = add(prefix + ".weight", {out, in});
    d.b = add(prefix + ".bias", {out});
    return d;
  }
};

// torch.nn.Linear's default initialization: weight and bias ~ U(-1/√in, 1/√in)
// (kaiming_uniform with a = √5 gives that bound), drawn from the counter-based RNG.
template <class T>
void init_dense(T* params, const Dense& d, uint64_t seed, uint64_t stream) {
  const double bound = 1.0 / std::sqrt(double(d.in));
  for (Index i = 0; i < d.out * d.in; ++i)
    params[d.w + i] = T(bound * (2.0 * uniform_at(seed, stream, uint64_t(d.w + i)) - 1.0));
  for (Index i = 0; i < d.out; ++i)
    params[d.b + i] = T(bound * (2.0 * uniform_at(seed, stream, uint64_t(d.b + i)) - 1.0));
}

// Saved activations of one trunk pass, and its gradient buffers (reused between calls: Eigen's
// resize is free when the shape is unchanged, so a training step allocates nothing).
template <class T>
struct TrunkCache {
  std::vector<Mat<T>> pre, post;  // per layer: (B, H_l)
  std::vector<Mat<T>> dpre, dpost;
};

struct Trunk {
  std::vector<Dense> layers;
  Activation act = Activation::ReLU;
  Index in_dim = 0;

  Index out_dim() const { return layers.empty() ? in_dim : layers.back().out; }

  // forward: returns a pointer to the output (B, out_dim): the last post-activation, or x itself
  // when the trunk has no layers.
  template <class T>
  const T* forward(const T* params, const T* x, Index B, TrunkCache<T>& c) const {
    c.pre.resize(layers.size());
    c.post.resize(layers.size());
    const T* h = x;
    for (size_t l = 0; l < layers.size(); ++l) {
      const Dense& d = layers[l];
      c.pre[l].resize(B, d.out);
      c.post[l].resize(B, d.out);
      linear_forward(c.pre[l].data(), h, params + d.w, params + d.b, B, d.in, d.out);
      activation_forward(c.post[l].data(), c.pre[l].data(), B * d.out, act);
      h = c.post[l].data();
    }
    return h;
  }

  // backward: given dout (B, out_dim) = ∂J/∂output, accumulates parameter gradients into grads and,
  // when dx is not null, ∂J/∂x into dx (B, in_dim). Uses the activations saved by forward.
  template <class T>
  void backward(const T* params, T* grads, const T* x, Index B, TrunkCache<T>& c, const T* dout, T* dx) const {
    if (layers.empty()) {
      if (dx)
        for (Index i = 0; i < B * in_dim; ++i) dx[i] += dout[i];
      return;
    }
    c.dpre.resize(layers.size());
    c.dpost.resize(layers.size());
    const T* g = dout;
    for (size_t l = layers.size(); l-- > 0;) {
      const Dense& d = layers[l];
      c.dpre[l].resize(B, d.out);
      activation_backward(c.dpre[l].data(), g, c.pre[l].data(), c.post[l].data(), B * d.out, act);
      const T* inp = l == 0 ? x : c.post[l - 1].data();
      T* dinp = nullptr;
      if (l > 0) {
        c.dpost[l - 1].setZero(B, d.in);
        dinp = c.dpost[l - 1].data();
      } else {
        dinp = dx;
      }
      linear_backward(dinp, grads + d.w, grads + d.b, c.dpre[l].data(), inp, params + d.w, B, d.in, d.out);
      if (l > 0) g = c.dpost[l - 1].data();
    }
  }
};

// Builds a trunk of Linear+activation layers named prefix.0, prefix.1, ... in the layout.
inline Trunk make_trunk(ParamLayout& layout, const std::string& prefix, Index in_dim,
                        const std::vector<Index>& widths, Activation act) {
  Trunk t;
  t.in_dim = in_dim;
  t.act = act;
  Index prev = in_dim;
  for (size_t i = 0; i < widths.size(); ++i) {
    t.layers.push_back(layout.add_dense(prefix + "." + std::to_string(i), prev, widths[i]));
    prev = widths[i];
  }
  return t;
}

}  // namespace elbokit
