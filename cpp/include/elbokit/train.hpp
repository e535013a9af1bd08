// elbokit/train.hpp: the minibatch training loop shared by every model.
//
// Shapes: N examples, D data, B batch, P parameters.
// A Model provides: num_params(), param_data(), data_dim(),
//   StepResult train_step(const T* x (B,D), Index B, const Shard&, const FitOptions&, uint64_t step, double beta,
//                         T* grad (P))
//     (grad accumulates ∂loss/∂θ, loss = −objective; noise from (seed, streams::kTrainNoise + step) at the
//     rows' indices in the global minibatch, see Shard),
//   EvalResult evaluate(const T* x (N,D), Index N, const Shard&, const FitOptions&) (means over its N rows,
//     rows [offset, offset + N) of a set of total rows whose random numbers it reproduces) and
//   std::vector<Index> active_units(const T* x (N,D), Index N).
// Optional hook, detected at compile time: void after_step(uint64_t step), called after each
// optimizer step (for example to update an exponential moving average of the parameters).
#pragma once

#include <functional>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <omp.h>
#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#define ELBOKIT_HAVE_MXCSR 1
#endif

#include "elbokit/optim.hpp"
#include "elbokit/rng.hpp"

namespace elbokit {

struct FitOptions {
  Index epochs = 10;
  Index batch_size = 128;
  OptimConfig optim;
  double beta = 1.0;          // weight of the KL term(s)
  Index warmup_steps = 0;     // β rises linearly from 0 to beta over this many steps
  double free_bits = 0.0;     // λ: per-dimension (or per-level) KL floor, 0 = off
  Index n_samples = 1;        // S: Monte-Carlo samples per example
  std::string kl = "analytic";  // "analytic" or "mc"
  double clip_norm = 0.0;     // 0 = no clipping
  uint64_t seed = 0;
  Index report_every = 0;     // steps between progress reports (0: about 50 a epoch)
  bool active_units = true;   // count active units at each epoch's end (models that have them)
};

// The rows of one global minibatch that a train_step computes. Data-parallel training splits each
// minibatch of `total` rows over processes: this one computes rows [offset, offset + B) (B is the
// train_step's own argument). The step draws every random number at the row's index in the global
// minibatch and scales its gradient by B / total, so that the processes' gradients, summed, are the
// gradient of the whole minibatch's mean loss: the one-process result up to the order of
// floating-point summation. The StepResult it returns holds the means over its own B rows.
// total = 0: the rows are the whole minibatch.
struct Shard {
  Index offset = 0, total = 0;
  Index global(Index B) const { return total > 0 ? total : B; }
  double weight(Index B) const { return total > 0 ? double(B) / double(total) : 1.0; }
  // Process rank's rows of n split over R processes: [⌊n·rank/R⌋, ⌊n·(rank+1)/R⌋).
  static Shard of(Index n, int rank, int R) {
    Shard sh;
    sh.offset = n * rank / R;
    sh.total = n;
    return sh;
  }
  static Index count(Index n, int rank, int R) { return n * (rank + 1) / R - n * rank / R; }
};

// The processes of a data-parallel fit (the engine has no MPI of its own: the Python layer binds
// this to mpi4py's COMM_WORLD). `allreduce` sums grad (P) and stats (n) over the processes in place,
// and every process receives the same sums. size = 1 and no allreduce: one process.
template <class T>
struct Collective {
  int rank = 0, size = 1;
  std::function<void(T* grad, Index P, double* stats, Index n)> allreduce;
};

struct StepResult {
  double loss = 0, elbo = 0, reconstruction = 0, kl = 0;  // batch means
  std::vector<double> kl_terms;  // batch-mean KL per latent dimension (VAE) or per level (HVAE)
};

struct EvalResult {
  double elbo = 0, reconstruction = 0, kl = 0;
};

struct FitHistory {
  std::vector<double> train_loss, train_elbo, train_reconstruction, train_kl, beta, grad_norm;
  std::vector<double> val_elbo, val_reconstruction, val_kl;
  std::vector<std::vector<double>> kl_terms;    // (epochs, K): epoch means of StepResult::kl_terms
  std::vector<std::vector<Index>> active_units;  // (epochs, groups)
  std::vector<double> step_loss;                 // one per step
  Index steps = 0;
  bool stopped_early = false;
};

struct Progress {
  Index epoch = 0, epochs = 0, step = 0, total_steps = 0;
  double loss = 0, val_elbo = std::numeric_limits<double>::quiet_NaN();
  bool epoch_end = false;
};

// Return false to stop training early (the history so far is kept).
using ProgressFn = std::function<bool(const Progress&)>;

// Thrown when a loss or gradient becomes non-finite; the parameters are those before that step.
class NonFiniteError : public std::runtime_error {
 public:
  NonFiniteError(const std::string& m, Index step) : std::runtime_error(m), step_(step) {}
  Index step() const { return step_; }

 private:
  Index step_;
};

inline void validate(const FitOptions& o) {
  if (o.epochs <= 0) fail("epochs must be a positive integer, got " + std::to_string(o.epochs));
  if (o.batch_size <= 0) fail("batch_size must be a positive integer, got " + std::to_string(o.batch_size));
  if (o.n_samples <= 0) fail("n_samples must be a positive integer, got " + std::to_string(o.n_samples));
  if (o.warmup_steps < 0) fail("warmup_steps must be >= 0, got " + std::to_string(o.warmup_steps));
  if (!(o.beta >= 0) || !std::isfinite(o.beta)) fail("beta must be a finite number >= 0, got " + std::to_string(o.beta));
  if (!(o.free_bits >= 0) || !std::isfinite(o.free_bits))
    fail("free_bits must be a finite number >= 0, got " + std::to_string(o.free_bits));
  if (!(o.clip_norm >= 0)) fail("clip_norm must be >= 0, got " + std::to_string(o.clip_norm));
  if (o.kl != "analytic" && o.kl != "mc") fail("kl must be one of 'analytic', 'mc', got '" + o.kl + "'");
  validate(o.optim);
}

// Flushes denormal numbers to zero (FTZ and DAZ) on every OpenMP thread for its lifetime, then
// restores each thread's previous mode. Adam's moments of parameters whose gradient is zero decay
// geometrically into the denormal range (below 1.2e-38 in float), where x86 arithmetic takes
// microcode assists and a training step becomes several times slower. Values that small then count
// as zero; results stay deterministic. No effect on machines without an MXCSR.
class FlushDenormals {
 public:
  FlushDenormals() {
#ifdef ELBOKIT_HAVE_MXCSR
    saved_.assign(size_t(omp_get_max_threads()), 0u);
#pragma omp parallel num_threads(int(saved_.size()))
    {
      const unsigned c = _mm_getcsr();
      saved_[size_t(omp_get_thread_num())] = c;
      _mm_setcsr(c | 0x8040u);  // FTZ (bit 15) | DAZ (bit 6)
    }
#endif
  }
  ~FlushDenormals() {
#ifdef ELBOKIT_HAVE_MXCSR
#pragma omp parallel num_threads(int(saved_.size()))
    _mm_setcsr(saved_[size_t(omp_get_thread_num())]);
#endif
  }
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;

 private:
  std::vector<unsigned> saved_;
};
// has_after_step<Model>: whether the model provides the optional after_step(uint64_t) hook.
template <class M, class = void>
struct has_after_step : std::false_type {};
template <class M>
struct has_after_step<M, std::void_t<decltype(std::declval<M&>().after_step(uint64_t(0)))>> : std::true_type {};

// Rows of the training data on which fit counts active units each epoch when it has no validation
// data: enough for the variance of an encoder mean, and a bounded cost per epoch.
constexpr Index kActiveUnitRows = 2048;

// buf (n) = 0, in parallel over blocks when large (zeroing the gradient on one core was ~2.5% of
// a profiled case-1 training step).
template <class T>
void zero_parallel(T* buf, Index n) {
  constexpr Index kBlock = 16384;
  const Index nb = ceil_div(n, kBlock);
#pragma omp parallel for schedule(static) if (n > 4 * kBlock)
  for (Index k = 0; k < nb; ++k) std::fill(buf + k * kBlock, buf + std::min(n, (k + 1) * kBlock), T(0));
}

// β at global step t: KL warm-up rises linearly from 0 (MATH.md §2).
inline double beta_at(const FitOptions& o, Index step) {
  if (o.warmup_steps <= 0) return o.beta;
  return o.beta * std::min(1.0, double(step) / double(o.warmup_steps));
}

// fit: epochs over x (N,D) in shuffled minibatches (the permutation of epoch e comes from
// (seed, streams::kShuffle + e); the last minibatch may be smaller). hist is filled as training
// goes, so it holds what was done even when a NonFiniteError or a stop request ends it early.
//
// Data-parallel (comm with size > 1): every process holds the whole x and the same parameters and
// draws the same permutations; process r computes rows [b0 + ⌊bs·r/R⌋, b0 + ⌊bs·(r+1)/R⌋) of each
// global minibatch [b0, b0 + bs) (Shard), then comm.allreduce sums the gradients and the step's
// weighted statistics, and each process takes the same optimizer step on the same sum. The history
// is the global one on every process. Validation is sharded the same way (each process its rows,
// with their one-process random numbers; the weighted means summed); active units are computed
// whole on each process (a variance over all rows).
template <class T, class Model>
void fit(Model& model, const T* x, Index N, const T* xval, Index Nval, const FitOptions& o, FitHistory& hist,
         const ProgressFn& progress, const Collective<T>& comm = Collective<T>()) {
  validate(o);
  const int R = comm.size, rank = comm.rank;
  if (R < 1 || rank < 0 || rank >= R)
    fail("the process group must have size >= 1 and 0 <= rank < size, got rank " + std::to_string(rank) +
         " of " + std::to_string(R));
  if (R > 1 && !comm.allreduce) fail("a process group of size " + std::to_string(R) + " needs an allreduce");
  if (R > 1 && std::min(o.batch_size, N) < R)
    fail("batch_size must be at least the number of processes (" + std::to_string(R) + ") in data-parallel "
         "training, got " + std::to_string(std::min(o.batch_size, N)) + " (batch_size " + std::to_string(o.batch_size) +
         ", " + std::to_string(N) + " rows)");
  if (R > 1 && o.free_bits > 0)
    fail("free_bits must be 0 in data-parallel training (the floor applies to the whole minibatch's mean KL, "
         "which no process has before the allreduce), got " + std::to_string(o.free_bits));
  const FlushDenormals ftz;
  const Index D = model.data_dim(), P = model.num_params();
  const Index B = std::min(o.batch_size, N);
  std::vector<double> stats;  // the step's weighted means, summed over the processes
  Index nterms = -1;
  const Index steps_per_epoch = ceil_div(N, B);
  const Index total = steps_per_epoch * o.epochs;
  const Index report = o.report_every > 0 ? o.report_every : std::max<Index>(1, steps_per_epoch / 50);
  Optimizer<T> opt(o.optim, P);
  Vec<T> grad(P);
  Mat<T> xb(B, D);  // (B, D) minibatch buffer
  Index step = 0;
  for (Index e = 0; e < o.epochs; ++e) {
    const std::vector<int64_t> perm = permutation(N, o.seed, streams::kShuffle + uint64_t(e));
    double s_loss = 0, s_elbo = 0, s_rec = 0, s_kl = 0, s_norm = 0;
    std::vector<double> s_terms;
    for (Index k = 0; k < steps_per_epoch; ++k, ++step) {
      const Index b0 = k * B, bs_all = std::min(B, N - b0);
      // this process's rows of the minibatch: [lo, lo + bs) (all of them when R = 1)
      const Shard sh = Shard::of(bs_all, rank, R);
      const Index lo = sh.offset, bs = Shard::count(bs_all, rank, R);
#pragma omp parallel for schedule(static) if (bs * D > 65536)
      for (Index i = 0; i < bs; ++i)
        std::copy(x + perm[size_t(b0 + lo + i)] * D, x + (perm[size_t(b0 + lo + i)] + 1) * D, xb.data() + i * D);
      const double beta = beta_at(o, step);
      zero_parallel(grad.data(), P);
      StepResult r;
      if (R == 1) {
        r = model.train_step(xb.data(), bs, Shard(), o, uint64_t(step), beta, grad.data());
      } else {
        if (bs > 0) r = model.train_step(xb.data(), bs, sh, o, uint64_t(step), beta, grad.data());
        // the minibatch's means: Σ over processes of (bs / bs_all) · this process's means
        const double w = sh.weight(bs);
        // the number of KL terms, from the first step (on which every process has rows: B >= R)
        if (nterms < 0) nterms = Index(r.kl_terms.size());
        const size_t K = size_t(nterms);
        stats.assign(4 + K, 0.0);
        if (bs > 0) {
          stats[0] = w * r.loss;
          stats[1] = w * r.elbo;
          stats[2] = w * r.reconstruction;
          stats[3] = w * r.kl;
          for (size_t j = 0; j < std::min(K, r.kl_terms.size()); ++j) stats[4 + j] = w * r.kl_terms[j];
        }
        comm.allreduce(grad.data(), P, stats.data(), Index(stats.size()));
        r.loss = stats[0];
        r.elbo = stats[1];
        r.reconstruction = stats[2];
        r.kl = stats[3];
        r.kl_terms.assign(stats.begin() + 4, stats.end());
      }
      const double norm = grad_norm(grad.data(), P);
      if (!std::isfinite(r.loss) || !std::isfinite(norm)) {
        hist.steps = step;
        throw NonFiniteError("training diverged at step " + std::to_string(step) + " (epoch " + std::to_string(e) +
                                 "): the loss is " + std::to_string(r.loss) + " and the gradient norm " +
                                 std::to_string(norm) +
                                 "; the parameters are kept as they were before that step (lower lr or set clip_norm)",
                             step);
      }
      if (o.clip_norm > 0) clip_grad_norm(grad.data(), P, o.clip_norm);
      opt.step(model.param_data(), grad.data());
      if constexpr (has_after_step<Model>::value) model.after_step(uint64_t(step));
      hist.step_loss.push_back(r.loss);
      const double w = double(bs_all) / double(N);
      s_loss += w * r.loss;
      s_elbo += w * r.elbo;
      s_rec += w * r.reconstruction;
      s_kl += w * r.kl;
      s_norm += norm / double(steps_per_epoch);
      s_terms.resize(r.kl_terms.size(), 0.0);
      for (size_t j = 0; j < r.kl_terms.size(); ++j) s_terms[j] += w * r.kl_terms[j];
      hist.steps = step + 1;
      if (progress && ((step + 1) % report == 0) && k + 1 < steps_per_epoch) {
        Progress p;
        p.epoch = e;
        p.epochs = o.epochs;
        p.step = step + 1;
        p.total_steps = total;
        p.loss = r.loss;
        if (!progress(p)) {
          hist.stopped_early = true;
          return;
        }
      }
    }
    hist.train_loss.push_back(s_loss);
    hist.train_elbo.push_back(s_elbo);
    hist.train_reconstruction.push_back(s_rec);
    hist.train_kl.push_back(s_kl);
    hist.beta.push_back(beta_at(o, step - 1));
    hist.grad_norm.push_back(s_norm);
    hist.kl_terms.push_back(s_terms);
    if (xval) {
      EvalResult v;
      if (R == 1) {
        v = model.evaluate(xval, Nval, Shard(), o);
      } else {  // each process its rows of the validation set, the weighted means summed
        const Shard vsh = Shard::of(Nval, rank, R);
        const Index n = Shard::count(Nval, rank, R);
        double vs[3] = {0, 0, 0};
        if (n > 0) {
          const EvalResult mine = model.evaluate(xval + vsh.offset * D, n, vsh, o);
          const double w = vsh.weight(n);
          vs[0] = w * mine.elbo;
          vs[1] = w * mine.reconstruction;
          vs[2] = w * mine.kl;
        }
        comm.allreduce(grad.data(), 0, vs, 3);
        v.elbo = vs[0];
        v.reconstruction = vs[1];
        v.kl = vs[2];
      }
      hist.val_elbo.push_back(v.elbo);
      hist.val_reconstruction.push_back(v.reconstruction);
      hist.val_kl.push_back(v.kl);
      if (o.active_units) hist.active_units.push_back(model.active_units(xval, Nval));
    } else if (o.active_units) {  // without validation data: the first kActiveUnitRows training rows
      hist.active_units.push_back(model.active_units(x, std::min(N, kActiveUnitRows)));
    }
    if (progress) {
      Progress p;
      p.epoch = e;
      p.epochs = o.epochs;
      p.step = step;
      p.total_steps = total;
      p.loss = s_loss;
      p.epoch_end = true;
      if (xval) p.val_elbo = hist.val_elbo.back();
      if (!progress(p)) {
        hist.stopped_early = true;
        return;
      }
    }
  }
}

}  // namespace elbokit
