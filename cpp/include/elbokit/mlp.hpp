// elbokit/mlp.hpp: the MLP trunk (Linear + activation per layer) and the MLP network module.
//
// Shapes: B batch, I trunk input, C conditioning input, H_l width of layer l, O output. Parameters
// live in one flat buffer (module.hpp: ParamLayout, names as the PyTorch module's state_dict).
#pragma once

#include <cstring>
#include <string>
#include <vector>

#include "elbokit/layers.hpp"
#include "elbokit/module.hpp"

namespace elbokit {

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
  // when the trunk has no layers. With bias0, layer 0 reads only the first in0 of its inputs from x
  // (B, in0) and adds bias0 (H_0) in place of its bias: the rest of its inputs, the same in every
  // row, are folded into bias0 by the caller (MLP below).
  template <class T>
  const T* forward(const T* params, const T* x, Index B, TrunkCache<T>& c, const T* bias0 = nullptr,
                   Index in0 = 0) const {
    c.pre.resize(layers.size());
    c.post.resize(layers.size());
    const T* h = x;
    for (size_t l = 0; l < layers.size(); ++l) {
      const Dense& d = layers[l];
      c.pre[l].resize(B, d.out);
      c.post[l].resize(B, d.out);
      if (l == 0 && bias0)
        linear_forward(c.pre[l].data(), h, params + d.w, bias0, B, in0, d.out, d.in);
      else
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

// The MLP network module (module.hpp): the trunk prefix.0 … prefix.{n−1} (Linear + activation),
// then, when out > 0, the head prefix.out (Linear, no activation) with out outputs. With a
// conditioning input of width C, the first layer reads concat(in, cond) (B, I + C) (the diffusion
// ε-network's input, concat(x_t, emb(t))). With no hidden layers and no head it is the identity.
template <class T>
class MLP final : public Module<T> {
 public:
  MLP(ParamLayout& layout, const std::string& prefix, Index in, Index cond, const std::vector<Index>& widths,
      Activation act, Index out)
      : widths_(widths) {
    this->in_ = in;
    this->cond_ = cond;
    trunk_ = make_trunk(layout, prefix, in + cond, widths, act);
    if (out > 0) head_ = layout.add_dense(prefix + ".out", trunk_.out_dim(), out);
    this->out_ = out > 0 ? out : trunk_.out_dim();
  }

  std::string describe() const override {
    std::string s = "mlp(" + std::to_string(this->in_) + (this->cond_ ? "+" + std::to_string(this->cond_) : "");
    for (Index w : widths_) s += "-" + std::to_string(w);
    if (head_.out) s += "-" + std::to_string(head_.out);
    return s + ")";
  }

  void init(T* p, uint64_t seed) const override {
    for (const Dense& d : trunk_.layers) init_dense(p, d, seed);
    if (head_.out) init_dense(p, head_, seed);
  }

  // forward: [concat(in, cond) (B, I + C)] → trunk (B, H) → [head (B, O)]. When every row of cond
  // is the same (a sampler's step: one t for all rows), layer 0 is in (B, I) · W[:, :I]ᵀ plus the
  // one row b + W[:, I:] · cond[0] (H_0): its product over the C conditioning columns is done once,
  // not per row (the ε-MLP's layer 0 is 34 → 256 wide for 2 → 256 of data; case 7 of the benchmark).
  const T* forward(const T* p, const T* in, const T* cond, Index B, Cache& c) const override {
    State& s = c.get<State>();
    const T* h = nullptr;
    s.folded = this->cond_ && !trunk_.layers.empty() && same_rows(cond, B, this->cond_);
    if (s.folded) {
      fold_cond(p, cond, s.bias0);
      h = trunk_.forward(p, in, B, s.trunk, s.bias0.data(), this->in_);
    } else {
      h = trunk_.forward(p, input(in, cond, B, s), B, s.trunk);
    }
    if (!head_.out) return h;
    s.out.resize(B, head_.out);
    linear_forward(s.out.data(), h, p + head_.w, p + head_.b, B, head_.in, head_.out);
    return s.out.data();
  }

  // backward: the head (dout (B, O) → dh (B, H)), then the trunk down to ∂J/∂in (B, I).
  void backward(const T* p, T* g, const T* in, const T* cond, Index B, Cache& c, const T* dout,
                T* din) const override {
    State& s = c.get<State>();
    if (s.folded) input(in, cond, B, s);  // layer 0's weight gradient reads concat(in, cond)
    const T* x = this->cond_ ? s.inp.data() : in;
    T* dx = din;  // ∂J/∂x, (B, I + C) with a conditioning input: the first I columns go to din
    if (din && this->cond_) {
      s.dinp.setZero(B, this->in_ + this->cond_);
      dx = s.dinp.data();
    }
    if (!head_.out) {
      trunk_.backward(p, g, x, B, s.trunk, dout, dx);
    } else if (trunk_.layers.empty()) {
      linear_backward(dx, g + head_.w, g + head_.b, dout, x, p + head_.w, B, head_.in, head_.out);
    } else {
      s.dh.setZero(B, head_.in);
      linear_backward(s.dh.data(), g + head_.w, g + head_.b, dout, s.trunk.post.back().data(), p + head_.w, B,
                      head_.in, head_.out);
      trunk_.backward(p, g, x, B, s.trunk, s.dh.data(), dx);
    }
    if (din && this->cond_) din_add(din, B, s);
  }

 private:
  struct State : CacheState {
    TrunkCache<T> trunk;
    Mat<T> inp, out, dh, dinp;  // (B, I + C), (B, O), (B, H), (B, I + C)
    Vec<T> bias0;               // (H_0): layer 0's bias with the common conditioning row folded in
    bool folded = false;        // the last forward folded cond into bias0 (inp not built)
  };
  static bool same_rows(const T* cond, Index B, Index C) {
    for (Index b = 1; b < B; ++b)
      if (std::memcmp(cond + b * C, cond, size_t(C) * sizeof(T)) != 0) return false;
    return true;
  }
  // bias0[o] = b[o] + Σ_j W[o, I + j] · cond[j], the sum in double
  void fold_cond(const T* p, const T* cond, Vec<T>& bias0) const {
    const Dense& d = trunk_.layers[0];
    const Index I = this->in_, C = this->cond_;
    bias0.resize(d.out);
    for (Index o = 0; o < d.out; ++o) {
      const T* w = p + d.w + o * d.in + I;
      double a = double(p[d.b + o]);
      for (Index j = 0; j < C; ++j) a += double(w[j]) * double(cond[j]);
      bias0[o] = T(a);
    }
  }
  const T* input(const T* in, const T* cond, Index B, State& s) const {
    if (!this->cond_) return in;
    const Index I = this->in_, C = this->cond_;
    s.inp.resize(B, I + C);
    for (Index b = 0; b < B; ++b) {
      std::copy(in + b * I, in + (b + 1) * I, s.inp.data() + b * (I + C));
      std::copy(cond + b * C, cond + (b + 1) * C, s.inp.data() + b * (I + C) + I);
    }
    return s.inp.data();
  }
  void din_add(T* din, Index B, const State& s) const {
    const Index I = this->in_, W = I + this->cond_;
    for (Index b = 0; b < B; ++b)
      for (Index j = 0; j < I; ++j) din[b * I + j] += s.dinp.data()[b * W + j];
  }

  std::vector<Index> widths_;
  Trunk trunk_;
  Dense head_;  // head_.out == 0: no head
};

}  // namespace elbokit
