// elbokit/module.hpp: the network interface. A model is its distributions and its ELBO; it takes
// its networks by description (nets.hpp) and calls them only through this interface.
//
// Shapes: B batch rows, I = in_dim(), O = out_dim(), C = cond_dim(), P parameters. Every tensor is
// a row-major (B, features) matrix; an image module reads its rows as NCHW (features = C·H·W).
//
// A Module<T>:
//   - owns views into the model's one flat parameter buffer: it adds its entries to the model's
//     ParamLayout when it is built, under names that match the equivalent PyTorch module's
//     state_dict keys (weights (out, in) for linear layers, (out, in, kh, kw) for convolutions);
//   - forward(p, in (B, I), cond (B, C) or nullptr, B, cache) -> out (B, O): a pointer into the
//     cache (or `in` itself for an empty network), valid until the next forward with that cache;
//   - backward(p, g, in, cond, B, cache, dout (B, O), din): given ∂J/∂out, *accumulates* (+=)
//     ∂J/∂θ into g (P) and, when din is not null, ∂J/∂in into din (B, I); the activations are
//     those the last forward with that cache saved. The conditioning input gets no gradient (it is
//     a fixed embedding, e.g. of the diffusion step t);
//   - init(p, seed): writes its initial parameters (PyTorch's default initialization of the same
//     layer, from the counter-based RNG at each parameter's flat offset: the values depend on the
//     offset alone, not on the order of the calls).
// Modules are immutable after construction and keep no state of their own: forward and backward
// are const and write only into the cache, so one module serves every thread of a row-chunk
// pipeline (common.hpp), each thread with its own cache.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "elbokit/common.hpp"
#include "elbokit/rng.hpp"

namespace elbokit {

// ---- Parameter views ------------------------------------------------------------------------

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

// The stream of the initial weights of the models' networks (torch's default initialization).
constexpr uint64_t kInitStream = 0x1217;

// U(−bound, bound) at the flat offsets [offset, offset + n) of the buffer.
template <class T>
void init_uniform(T* params, Index offset, Index n, double bound, uint64_t seed, uint64_t stream = kInitStream) {
  for (Index i = 0; i < n; ++i)
    params[offset + i] = T(bound * (2.0 * uniform_at(seed, stream, uint64_t(offset + i)) - 1.0));
}

// torch.nn.Linear's default initialization: weight and bias ~ U(-1/√in, 1/√in)
// (kaiming_uniform with a = √5 gives that bound), drawn from the counter-based RNG.
template <class T>
void init_dense(T* params, const Dense& d, uint64_t seed, uint64_t stream = kInitStream) {
  const double bound = 1.0 / std::sqrt(double(d.in));
  init_uniform(params, d.w, d.out * d.in, bound, seed, stream);
  init_uniform(params, d.b, d.out, bound, seed, stream);
}

// ---- Saved activations -----------------------------------------------------------------------

// A module's per-call state (activations, gradient scratch). Each module kind defines its own
// state type; a Cache holds one, created on first use and reused (Eigen's resize is free when the
// shape is unchanged, so a training step allocates nothing after the first).
struct CacheState {
  virtual ~CacheState() = default;
};

class Cache {
 public:
  template <class S>
  S& get() {
    S* s = dynamic_cast<S*>(state_.get());
    if (!s) {
      state_ = std::make_unique<S>();
      s = static_cast<S*>(state_.get());
    }
    return *s;
  }

 private:
  std::unique_ptr<CacheState> state_;
};

// ---- The interface ---------------------------------------------------------------------------

template <class T>
class Module {
 public:
  virtual ~Module() = default;

  Index in_dim() const { return in_; }
  Index out_dim() const { return out_; }
  Index cond_dim() const { return cond_; }
  // A short description, for repr and errors: "mlp(784-400-20)", "conv(1x28x28: 32, 64)".
  virtual std::string describe() const = 0;

  virtual const T* forward(const T* p, const T* in, const T* cond, Index B, Cache& c) const = 0;
  virtual void backward(const T* p, T* g, const T* in, const T* cond, Index B, Cache& c, const T* dout,
                        T* din) const = 0;
  virtual void init(T* p, uint64_t seed) const = 0;
  // Whether a model's training step should run as two halves of its batch, each through this
  // network forward and backward on one thread (common.hpp: RowHalves), rather than each layer's
  // work split over the threads. True for the conv networks and the U-Net: their products stay
  // wide on one core (grouped over images) and a half's layers then meet at no barrier (2 threads,
  // alternating runs: the conv VAE's step, batch 128, 83-85 -> 92-93 steps/s; the U-Net's, batch 64,
  // 10.1-10.4 -> 10.5-10.9). The VAE and HVAE split their steps (RowHalves), the diffusion model
  // its network's forward and backward (diffusion.cpp: net_forward).
  virtual bool split_rows() const { return false; }

 protected:
  Index in_ = 0, out_ = 0, cond_ = 0;
};

template <class T>
using ModulePtr = std::unique_ptr<Module<T>>;

}  // namespace elbokit
