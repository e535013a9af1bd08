// elbokit/conv.hpp: the image layers, each a forward/backward pair: Conv2d, ConvTranspose2d, nearest
// upsampling ×2 and GroupNorm, with torch.nn's semantics and parameter layouts.
//
// Shapes: B batch, C input channels, O output channels, H×W input sides, Ho×Wo output sides,
// k kernel side, G groups, P = Ho·Wo output positions, K = C·k·k patch length. Tensors are NCHW
// (a row of a (B, features) matrix is one example, features = C·H·W). Backward functions
// *accumulate* (+=) into parameter gradients and into input gradients (nullptr: not needed).
//
// Parallelism and determinism (common.hpp: threading policy). Forward passes and input gradients
// run in parallel over groups of examples: a result never depends on the thread that computed it.
// Parameter gradients are reduced over the batch in fixed chunks of examples (Chunks: their count
// depends on the shape alone); each chunk sums its examples in order into its own partial, and the
// partials are added in chunk order: bit-identical results for any number of threads.
//
// Scheme: im2col + GEMM (gemm.hpp) on groups of examples side by side (Chunks), the patches in a
// per-thread buffer of the caller's ConvWork (kept in the module's cache: no allocation per step). Conv2d's forward is
// y_b (O, P) = W (O, K) · col(x_b) (K, P) + bias; ConvTranspose2d is the adjoint of a Conv2d from
// its output to its input: col (K', P_in) = Wᵀ · x_b, then col2im into y_b. Two geometries take a
// Winograd path instead (the dispatch at the end of this file): 3×3 at stride 1 (winograd.hpp) and
// 4×4 at stride 2, Conv2d and ConvTranspose2d (winograd_s2.hpp).
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "elbokit/common.hpp"
#include "elbokit/gemm.hpp"

namespace elbokit {

// The geometry of a convolution from a (C, H, W) image: kernel k, stride s, padding p;
// output sides Ho = ⌊(H + 2p − k)/s⌋ + 1, Wo likewise (torch.nn.Conv2d, dilation 1).
struct ConvGeom {
  Index C = 0, H = 0, W = 0, k = 1, stride = 1, pad = 0;
  Index Ho() const { return (H + 2 * pad - k) / stride + 1; }
  Index Wo() const { return (W + 2 * pad - k) / stride + 1; }
  Index patch() const { return C * k * k; }  // K
  Index positions() const { return Ho() * Wo(); }  // P
  Index in_size() const { return C * H * W; }
};

// Checks a geometry: positive sizes, a kernel that fits the padded image, and (exact = true) an
// image whose sides the stride divides exactly, (H + 2p − k) % s = 0, so that no row or column of
// the input is silently dropped. `what` names the layer in the message.
inline void check_conv_geom(const ConvGeom& g, const std::string& what, bool exact) {
  auto s = [](Index v) { return std::to_string(v); };
  if (g.C <= 0 || g.H <= 0 || g.W <= 0)
    fail(what + ": the input must have positive channels and sides, got (" + s(g.C) + ", " + s(g.H) + ", " +
         s(g.W) + ")");
  if (g.k <= 0) fail(what + ": kernel_size must be positive, got " + s(g.k));
  if (g.stride != 1 && g.stride != 2) fail(what + ": stride must be 1 or 2, got " + s(g.stride));
  if (g.pad < 0 || g.pad >= g.k) fail(what + ": padding must be in [0, kernel_size), got " + s(g.pad));
  if (g.H + 2 * g.pad < g.k || g.W + 2 * g.pad < g.k)
    fail(what + ": kernel_size " + s(g.k) + " does not fit the padded input " + s(g.H + 2 * g.pad) + "x" +
         s(g.W + 2 * g.pad));
  if (exact && ((g.H + 2 * g.pad - g.k) % g.stride || (g.W + 2 * g.pad - g.k) % g.stride))
    fail(what + ": stride " + s(g.stride) + " does not fit the input " + s(g.H) + "x" + s(g.W) + " (kernel " +
         s(g.k) + ", padding " + s(g.pad) + "): H + 2·padding − kernel_size must be a multiple of the stride");
}

// ---- Work buffers and the batch's chunks ---------------------------------------------------

// Per-thread patch buffers and the parameter gradients' per-chunk partials, reused between calls.
template <class T>
struct ConvWork {
  std::vector<T> cols;      // (threads, n1 + n2 + n3): per thread a patch matrix, a group's outputs
                            // and an image's phase planes (im2col)
  std::vector<T> partials;  // (chunks, parameter count): one gradient partial per chunk
  std::vector<T> flipped;   // conv2d_backward's flipped kernel (C, O, k, k)
  std::vector<T> wino;      // winograd.hpp: the transformed kernels
  Index per_thread = 0, first = 0, second = 0;
  // this thread's buffers (ensure_cols first): n1 entries, then n2, then n3
  T* col() { return cols.data() + Index(thread_slot()) * per_thread; }
  T* buf() { return col() + first; }
  T* planes() { return col() + first + second; }
  void ensure_cols(Index n1, Index n2, Index n3) {
    const Index need = Index(max_threads()) * (n1 + n2 + n3);
    if (Index(cols.size()) < need) cols.resize(need);
    per_thread = n1 + n2 + n3;
    first = n1;
    second = n2;
  }
  // (chunks, n), not cleared: each chunk's owner clears its own row (clear_partial) in the
  // parallel loop, so that the clearing runs on every thread and touches the memory it then uses.
  T* ensure_partials(Index chunks, Index n) {
    if (Index(partials.size()) < chunks * n) partials.resize(chunks * n);
    return partials.data();
  }
};

// Groups and chunks of the batch. The products run on groups of nb consecutive examples side by
// side, (·, nb·P) matrices, so that a small image (P = 49 positions) still makes a GEMM wide enough
// to run near the core's peak: nb = ⌈kGroupCols / P⌉ (at most B). The parameter gradients are
// reduced over chunks of whole groups, at most kConvChunks of them. Both depend on the shape alone.
constexpr Index kGroupCols = 256;
constexpr Index kConvChunks = 16;
struct Chunks {
  Index B = 0, nb = 1, groups = 1, per_chunk = 1, count = 1;
  Chunks(Index B_, Index P) : B(B_) {
    nb = std::max<Index>(1, std::min(B, ceil_div(kGroupCols, std::max<Index>(1, P))));
    groups = std::max<Index>(1, ceil_div(B, nb));
    per_chunk = ceil_div(groups, kConvChunks);
    count = ceil_div(groups, per_chunk);
  }
  Index group_begin(Index g) const { return std::min(B, g * nb); }
  Index group_len(Index g) const { return std::min(B, (g + 1) * nb) - group_begin(g); }
  Index chunk_groups_begin(Index c) const { return c * per_chunk; }
  Index chunk_groups_end(Index c) const { return std::min(groups, (c + 1) * per_chunk); }
};

// Sums the chunk partials (count, stride), their first n entries, in chunk order into dst (n):
// the deterministic reduction (each entry in chunk order, whichever thread sums its block).
template <class T>
void add_partials(T* dst, const T* partials, Index count, Index n, Index stride) {
  constexpr Index kBlock = 4096;
  const Index nb = ceil_div(n, kBlock);
#pragma omp parallel for schedule(static) if (count * n > 16 * kBlock && nb > 1)
  for (Index k = 0; k < nb; ++k) {
    const Index lo = k * kBlock, hi = std::min(n, lo + kBlock);
    for (Index c = 0; c < count; ++c) {
      const T* src = partials + c * stride;
      for (Index i = lo; i < hi; ++i) dst[i] += src[i];
    }
  }
}

// Chunk c's partial (n entries at part + c·n) set to zero, by the thread that then fills it.
template <class T>
T* clear_partial(T* part, Index c, Index n) {
  std::fill(part + c * n, part + (c + 1) * n, T(0));
  return part + c * n;
}

// Parallel over examples only when the work pays for waking a thread (common.hpp: kParallelFlops).
inline bool conv_parallel(double flops, Index units) { return units > 1 && flops > kParallelFlops; }

// ---- im2col / col2im -----------------------------------------------------------------------
//
// Both go through the image's phase planes, so that every row of a patch matrix is Ho contiguous
// runs of Wo entries, with no bounds test and no strided access per entry. The zero-padded image
// xp (C, H + 2p, W + 2p) is cut by the stride s into s² planes per channel,
//   planes (C, s, s, Hq, Wq)[c, a, b, r, q] = xp[c, r·s + a, q·s + b]  (0 past xp's edge),
// Hq = ⌈(H + 2p)/s⌉, Wq likewise; then patch row (c, i, j) at output (oh, ow), which reads
// xp[c, oh·s + i, ow·s + j], is planes[c, i % s, j % s, oh + ⌊i/s⌋, ow + ⌊j/s⌋].

// Short runs (a patch row's Wo entries, often 7 to 28): on AVX-512 whole 512-bit packets and one
// masked packet for the tail, instead of a scalar tail loop per run. Exact: copies and per-entry adds.
#ifdef __AVX512F__
inline void copy_run(float* d, const float* s, Index n) {
  for (; n >= 16; n -= 16, d += 16, s += 16) _mm512_storeu_ps(d, _mm512_loadu_ps(s));
  if (n > 0) {
    const __mmask16 m = __mmask16((1u << n) - 1);
    _mm512_mask_storeu_ps(d, m, _mm512_maskz_loadu_ps(m, s));
  }
}
inline void copy_run(double* d, const double* s, Index n) {
  for (; n >= 8; n -= 8, d += 8, s += 8) _mm512_storeu_pd(d, _mm512_loadu_pd(s));
  if (n > 0) {
    const __mmask8 m = __mmask8((1u << n) - 1);
    _mm512_mask_storeu_pd(d, m, _mm512_maskz_loadu_pd(m, s));
  }
}
inline void add_run(float* d, const float* s, Index n) {
  for (; n >= 16; n -= 16, d += 16, s += 16) _mm512_storeu_ps(d, _mm512_add_ps(_mm512_loadu_ps(d), _mm512_loadu_ps(s)));
  if (n > 0) {
    const __mmask16 m = __mmask16((1u << n) - 1);
    _mm512_mask_storeu_ps(d, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, d), _mm512_maskz_loadu_ps(m, s)));
  }
}
inline void add_run(double* d, const double* s, Index n) {
  for (; n >= 8; n -= 8, d += 8, s += 8) _mm512_storeu_pd(d, _mm512_add_pd(_mm512_loadu_pd(d), _mm512_loadu_pd(s)));
  if (n > 0) {
    const __mmask8 m = __mmask8((1u << n) - 1);
    _mm512_mask_storeu_pd(d, m, _mm512_add_pd(_mm512_maskz_loadu_pd(m, d), _mm512_maskz_loadu_pd(m, s)));
  }
}
#else
template <class T>
inline void copy_run(T* d, const T* s, Index n) {
  for (Index i = 0; i < n; ++i) d[i] = s[i];
}
template <class T>
inline void add_run(T* d, const T* s, Index n) {
  for (Index i = 0; i < n; ++i) d[i] += s[i];
}
#endif

struct PhaseGeom {
  Index s = 1, Hq = 0, Wq = 0, C = 0;
  explicit PhaseGeom(const ConvGeom& g)
      : s(g.stride), Hq(ceil_div(g.H + 2 * g.pad, g.stride)), Wq(ceil_div(g.W + 2 * g.pad, g.stride)), C(g.C) {}
  Index plane() const { return Hq * Wq; }
  Index size() const { return C * s * s * plane(); }  // entries of the planes buffer
  // the first entry of patch row (c, i, j): planes[c, i % s, j % s, ⌊i/s⌋, ⌊j/s⌋]
  Index row_origin(Index c, Index i, Index j) const {
    return ((c * s + i % s) * s + j % s) * plane() + (i / s) * Wq + j / s;
  }
};

// The scratch entries im2col and col2im need: the planes, then one zero-padded image row (with a
// packet of slack, read past its end and never stored).
inline Index phase_planes_size(const ConvGeom& g) {
  const PhaseGeom q(g);
  return q.size() + q.Wq * q.s + 64;
}

// deinterleave2: even[v] = row[2v], odd[v] = row[2v + 1] for v < n; row has 2n + 32 readable entries.
#ifdef __AVX512F__
inline void deinterleave2(float* even, float* odd, const float* row, Index n) {
  const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  for (Index v = 0; v < n; v += 16) {
    const __m512 lo = _mm512_loadu_ps(row + 2 * v), hi = _mm512_loadu_ps(row + 2 * v + 16);
    const __mmask16 m = n - v >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - v)) - 1);
    _mm512_mask_storeu_ps(even + v, m, _mm512_permutex2var_ps(lo, ie, hi));
    _mm512_mask_storeu_ps(odd + v, m, _mm512_permutex2var_ps(lo, io, hi));
  }
}
inline void deinterleave2(double* even, double* odd, const double* row, Index n) {
  const __m512i ie = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14), io = _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15);
  for (Index v = 0; v < n; v += 8) {
    const __m512d lo = _mm512_loadu_pd(row + 2 * v), hi = _mm512_loadu_pd(row + 2 * v + 8);
    const __mmask8 m = n - v >= 8 ? __mmask8(0xff) : __mmask8((1u << (n - v)) - 1);
    _mm512_mask_storeu_pd(even + v, m, _mm512_permutex2var_pd(lo, ie, hi));
    _mm512_mask_storeu_pd(odd + v, m, _mm512_permutex2var_pd(lo, io, hi));
  }
}
#else
template <class T>
inline void deinterleave2(T* even, T* odd, const T* row, Index n) {
  for (Index v = 0; v < n; ++v) {
    even[v] = row[2 * v];
    odd[v] = row[2 * v + 1];
  }
}
#endif

// to_phase_planes: planes (C, s, s, Hq, Wq) = the zero-padded x (C, H, W), cut by phase; scratch
// as phase_planes_size (the padded row lies after the planes).
template <class T>
void to_phase_planes(T* planes, const T* x, const ConvGeom& g) {
  const PhaseGeom q(g);
  const Index s = g.stride, p = g.pad, Wp = q.Wq * s;
  T* padded = planes + q.size();  // (Wp + slack): one image row with its zero padding
  std::fill(padded, padded + Wp + 64, T(0));
  for (Index c = 0; c < g.C; ++c)
    for (Index a = 0; a < s; ++a)
      for (Index r = 0; r < q.Hq; ++r) {
        T* out = planes + (c * s + a) * s * q.plane() + r * q.Wq;  // phase (a, 0); (a, b) is b planes on
        const Index ih = r * s + a - p;
        if (ih < 0 || ih >= g.H) {
          for (Index b = 0; b < s; ++b) std::fill(out + b * q.plane(), out + b * q.plane() + q.Wq, T(0));
          continue;
        }
        const T* xr = x + (c * g.H + ih) * g.W;
        if (s == 1) {  // the padding (p < k entries each side) by hand: a call per row costs more
          for (Index v = 0; v < p; ++v) out[v] = T(0);
          copy_run(out + p, xr, g.W);
          for (Index v = p + g.W; v < q.Wq; ++v) out[v] = T(0);
        } else {  // s == 2: the padded row, then its even and odd entries
          copy_run(padded + p, xr, g.W);  // the padding around it stays 0
          deinterleave2(out, out + q.plane(), padded, q.Wq);
        }
      }
}

// from_phase_planes: x (C, H, W) += the entries of planes that lie inside the image (the adjoint of
// to_phase_planes).
template <class T>
void from_phase_planes(T* x, const T* planes, const ConvGeom& g) {
  const PhaseGeom q(g);
  const Index s = g.stride, p = g.pad;
  for (Index c = 0; c < g.C; ++c)
    for (Index a = 0; a < s; ++a)
      for (Index b = 0; b < s; ++b) {
        const T* pl = planes + ((c * s + a) * s + b) * q.plane();
        const Index v0 = std::min(q.Wq, ceil_div(std::max<Index>(0, p - b), s));
        const Index v1 = std::max(v0, std::min(q.Wq, ceil_div(g.W + p - b, s)));
        for (Index r = 0; r < q.Hq; ++r) {
          const Index ih = r * s + a - p;
          if (ih < 0 || ih >= g.H) continue;
          const T* in = pl + r * q.Wq;
          T* xr = x + (c * g.H + ih) * g.W + b - p;
          if (s == 1)
            add_run(xr + v0, in + v0, v1 - v0);
          else
            for (Index v = v0; v < v1; ++v) xr[v * s] += in[v];
        }
      }
}

// im2col: col (K, P) with row stride ld (≥ P), row (c·k + i)·k + j, column oh·Wo + ow, = x (C, H, W)
// at (c, oh·s − p + i, ow·s − p + j), or 0 outside the image. planes: phase_planes_size(g) entries
// of scratch.
template <class T>
void im2col(T* col, const T* x, const ConvGeom& g, Index ld, T* planes) {
  const Index Ho = g.Ho(), Wo = g.Wo(), k = g.k;
  if (k == 1 && g.stride == 1 && g.pad == 0) {  // a 1×1 convolution: the patch rows are the channels
    for (Index c = 0; c < g.C; ++c) copy_run(col + c * ld, x + c * Ho * Wo, Ho * Wo);
    return;
  }
  const PhaseGeom q(g);
  to_phase_planes(planes, x, g);
  for (Index c = 0; c < g.C; ++c)
    for (Index i = 0; i < k; ++i)
      for (Index j = 0; j < k; ++j) {
        T* row = col + ((c * k + i) * k + j) * ld;
        const T* src = planes + q.row_origin(c, i, j);
        for (Index oh = 0; oh < Ho; ++oh) {
          const T* sr = src + oh * q.Wq;
          copy_run(row + oh * Wo, sr, Wo);
        }
      }
}

// col2im: the adjoint of im2col: x (C, H, W) += the entries of col (K, P; row stride ld) at their
// image positions, in patch-row order. Stride 1 with short rows (Wo < 16): summed in the
// zero-padded image (the one phase plane, scratch), a row of Wo entries at a time, then added to x.
// Otherwise added into x directly: at stride 2 (7x7 to 28x28 outputs) and at stride 1 with 28x28
// outputs that measured faster than through the planes (float32, AVX-512).
inline Index floor_div(Index a, Index b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }  // b > 0

template <class T>
void col2im(T* x, const T* col, const ConvGeom& g, Index ld, T* planes) {
  const Index Ho = g.Ho(), Wo = g.Wo(), k = g.k, s = g.stride, p = g.pad;
  if (k == 1 && s == 1 && p == 0) {
    for (Index c = 0; c < g.C; ++c) add_run(x + c * Ho * Wo, col + c * ld, Ho * Wo);
    return;
  }
  if (s == 1 && Wo < 16) {
    const PhaseGeom q(g);
    std::fill(planes, planes + q.size(), T(0));
    for (Index c = 0; c < g.C; ++c)
      for (Index i = 0; i < k; ++i)
        for (Index j = 0; j < k; ++j) {
          const T* row = col + ((c * k + i) * k + j) * ld;
          T* dst = planes + q.row_origin(c, i, j);
          for (Index oh = 0; oh < Ho; ++oh) add_run(dst + oh * q.Wq, row + oh * Wo, Wo);
        }
    from_phase_planes(x, planes, g);
    return;
  }
  for (Index c = 0; c < g.C; ++c)
    for (Index i = 0; i < k; ++i)
      for (Index j = 0; j < k; ++j) {
        const T* row = col + ((c * k + i) * k + j) * ld;
        const Index ow0 = std::min(Wo, std::max<Index>(0, -floor_div(j - p, s)));  // ⌈(p − j)/s⌉
        const Index ow1 = std::max(ow0, std::min(Wo, floor_div(g.W - 1 + p - j, s) + 1));
        for (Index oh = 0; oh < Ho; ++oh) {
          const Index ih = oh * s - p + i;
          if (ih < 0 || ih >= g.H) continue;
          const T* r = row + oh * Wo;
          T* xr = x + (c * g.H + ih) * g.W - p + j;
          if (s == 1)
            for (Index ow = ow0; ow < ow1; ++ow) xr[ow] += r[ow];
          else
            for (Index ow = ow0; ow < ow1; ++ow) xr[ow * s] += r[ow];
        }
      }
}

// ---- Conv2d --------------------------------------------------------------------------------

// flip_kernel: wf (C, O, k, k) = W̃[c, o, i, j] = W[o, c, k−1−i, k−1−j] of weight W (O, C, k, k): the
// kernel of a stride-1 convolution's input gradient (the convolution of dout with padding k−1−p).
template <class T>
void flip_kernel(std::vector<T>& wf, const T* weight, Index O, Index C, Index k) {
  const Index kk = k * k;
  wf.resize(size_t(C * O * kk));
#pragma omp parallel for schedule(static) if (C * O * kk > 65536)
  for (Index c = 0; c < C; ++c)
    for (Index o = 0; o < O; ++o)
      for (Index i = 0; i < kk; ++i) wf[size_t((c * O + o) * kk + i)] = weight[(o * C + c) * kk + (kk - 1 - i)];
}

// conv2d_forward: out (B, O, Ho, Wo) = conv(inp (B, C, H, W), weight (O, C, k, k)) + bias (O) or no
// bias (nullptr), geometry g (torch.nn.Conv2d). Per group of n examples (ld = nb·P columns):
//   col (K, n·P) = [col(x_b) …];  Y (O, n·P) = W (O, K) · col;  out_b (O, P) = Y[:, b-th block] + bias.
template <class T>
void im2col_conv2d_forward(T* out, const T* inp, const T* weight, const T* bias, Index B, const ConvGeom& g, Index O,
                           ConvWork<T>& w) {
  const Index K = g.patch(), P = g.positions(), I = g.in_size();
  const Chunks ch(B, P);
  const Index ld = ch.nb * P;
  w.ensure_cols(K * ld, O * ld, phase_planes_size(g));
#pragma omp parallel for schedule(static) if (conv_parallel(2.0 * B * O * K * P, ch.groups))
  for (Index gi = 0; gi < ch.groups; ++gi) {
    const Index b0 = ch.group_begin(gi), n = ch.group_len(gi);
    T* col = w.col();  // (K, ld)
    T* y = w.buf();    // (O, ld)
    for (Index e = 0; e < n; ++e) im2col(col + e * P, inp + (b0 + e) * I, g, ld, w.planes());
    gemm_rows<T>(false, O, n * P, K, weight, K, col, ld, T(0), y, ld);  // W (O, K) · col (K, n·P)
    for (Index e = 0; e < n; ++e)
      for (Index o = 0; o < O; ++o) {
        const T* src = y + o * ld + e * P;
        T* dst = out + ((b0 + e) * O + o) * P;
        const T bo = bias ? bias[o] : T(0);
        for (Index q = 0; q < P; ++q) dst[q] = src[q] + bo;
      }
  }
}

// conv2d_backward, given dout (B, O, Ho, Wo) = ∂J/∂out, per group (dY (O, n·P) its gathered dout):
//   dweight (O, K) += Σ_groups dY · colᵀ (n·P, K)
//   dbias (O)      += Σ_b Σ_q dout_b[:, q]
//   dinp_b (C, H, W) += col2im(b-th block of Wᵀ (K, O) · dY)                       (stride 2, or k = 1)
//   dinp_b (C, H, W) += W̃ (C, O·k·k) · col_d(dout_b), stride 1, k > 1: the stride-1 convolution of
//     dout_b, padding k − 1 − p, with the flipped kernel W̃[c, o, i, j] = W[o, c, k−1−i, k−1−j]: a
//     product of depth O·k·k and an im2col, where the col2im path has depth O and a scatter-add.
template <class T>
void im2col_conv2d_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight, Index B,
                            const ConvGeom& g, Index O, ConvWork<T>& w) {
  const Index K = g.patch(), P = g.positions(), I = g.in_size(), k = g.k, C = g.C;
  const Index NP = O * K + O;  // one chunk's partial: dweight (O, K), dbias (O)
  const Chunks ch(B, P);
  const Index ld = ch.nb * P;
  const bool flip = dinp && g.stride == 1 && k > 1;
  const ConvGeom gd{O, g.Ho(), g.Wo(), k, 1, k - 1 - g.pad};  // dout_b (O, Ho, Wo) → dinp_b (C, H, W)
  const Index Kd = flip ? gd.patch() : 0, Pd = gd.positions(), ldd = ch.nb * Pd;  // Pd = H·W
  w.ensure_cols(std::max(K * ld, Kd * ldd), std::max(O * ld, flip ? C * ldd : 0),
                std::max(phase_planes_size(g), flip ? phase_planes_size(gd) : 0));
  T* part = w.ensure_partials(ch.count, NP);
  if (flip) flip_kernel(w.flipped, weight, O, C, k);  // W̃ (C, O, k, k)
  const T* wf = w.flipped.data();
#pragma omp parallel for schedule(dynamic, 1) if (conv_parallel(4.0 * B * O * K * P, ch.count))
  for (Index c = 0; c < ch.count; ++c) {
    T* col = w.col();  // (K, ld)
    T* dy = w.buf();   // (O, ld)
    T* dw = clear_partial(part, c, NP);  // (O, K)
    T* db = dw + O * K;                   // (O)
    for (Index gi = ch.chunk_groups_begin(c); gi < ch.chunk_groups_end(c); ++gi) {
      const Index b0 = ch.group_begin(gi), n = ch.group_len(gi);
      for (Index e = 0; e < n; ++e) {
        im2col(col + e * P, inp + (b0 + e) * I, g, ld, w.planes());
        for (Index o = 0; o < O; ++o) {
          const T* src = dout + ((b0 + e) * O + o) * P;
          std::copy(src, src + P, dy + o * ld + e * P);
        }
      }
      gemm_dots<T>(O, K, n * P, dy, ld, col, ld, dw, K);  // += dY (O, n·P) · colᵀ (n·P, K)
      for (Index o = 0; o < O; ++o) {
        T s = 0;
        for (Index q = 0; q < n * P; ++q) s += dy[o * ld + q];
        db[o] += s;
      }
      if (flip) {  // col (Kd, n·Pd) = [col_d(dout_b) …], then dX (C, n·Pd) = W̃ · col, into dinp
        for (Index e = 0; e < n; ++e) im2col(col + e * Pd, dout + (b0 + e) * O * P, gd, ldd, w.planes());
        if (n == 1) {
          gemm_rows<T>(false, C, Pd, Kd, wf, Kd, col, ldd, T(1), dinp + b0 * I, Pd);
        } else {
          gemm_rows<T>(false, C, n * Pd, Kd, wf, Kd, col, ldd, T(0), dy, ldd);
          for (Index e = 0; e < n; ++e)
            for (Index ci = 0; ci < C; ++ci) add_run(dinp + (b0 + e) * I + ci * Pd, dy + ci * ldd + e * Pd, Pd);
        }
      } else if (dinp) {
        gemm_rows<T>(true, K, n * P, O, weight, K, dy, ld, T(0), col, ld);  // dcol (K, n·P) = Wᵀ · dY
        for (Index e = 0; e < n; ++e) col2im(dinp + (b0 + e) * I, col + e * P, g, ld, w.planes());
      }
    }
  }
  if (dweight) add_partials(dweight, part, ch.count, O * K, NP);
  if (dbias) add_partials(dbias, part + O * K, ch.count, O, NP);
}

// ---- ConvTranspose2d -----------------------------------------------------------------------

// The transposed convolution from (C_in, H, W) to (C_out, Ho, Wo), Ho = (H − 1)·s − 2p + k
// (output_padding 0) is the adjoint of the Conv2d with geometry out_geom: from (C_out, Ho, Wo),
// kernel k, stride s, padding p, back to (H, W).
inline ConvGeom conv_transpose_geom(Index C_out, Index H, Index W, Index k, Index stride, Index pad) {
  ConvGeom g;
  g.C = C_out;
  g.H = (H - 1) * stride - 2 * pad + k;
  g.W = (W - 1) * stride - 2 * pad + k;
  g.k = k;
  g.stride = stride;
  g.pad = pad;
  return g;
}

// conv_transpose2d_forward: out (B, C_out, Ho, Wo) = conv_transpose(inp (B, C_in, H, W),
// weight (C_in, C_out, k, k)) + bias (C_out) or nullptr (torch.nn.ConvTranspose2d), where
// og = conv_transpose_geom(C_out, H, W, k, s, p) (so og.Ho() = H, og.Wo() = W). Per group of n
// examples, X (C_in, n·P) their gathered inputs, K' = C_out·k·k, P = H·W:
//   col (K', n·P) = Wᵀ (K', C_in) · X;  out_b = col2im(b-th block of col) + bias.
template <class T>
void im2col_conv_transpose2d_forward(T* out, const T* inp, const T* weight, const T* bias, Index B, Index C_in,
                              const ConvGeom& og, ConvWork<T>& w) {
  const Index K = og.patch(), P = og.positions(), N = og.in_size(), HW = og.H * og.W;
  const Chunks ch(B, P);
  const Index ld = ch.nb * P;
  w.ensure_cols(K * ld, C_in * ld, phase_planes_size(og));
#pragma omp parallel for schedule(static) if (conv_parallel(2.0 * B * C_in * K * P, ch.groups))
  for (Index gi = 0; gi < ch.groups; ++gi) {
    const Index b0 = ch.group_begin(gi), n = ch.group_len(gi);
    T* col = w.col();  // (K', ld)
    T* x = w.buf();    // (C_in, ld)
    for (Index e = 0; e < n; ++e)
      for (Index c = 0; c < C_in; ++c) {
        const T* src = inp + ((b0 + e) * C_in + c) * P;
        std::copy(src, src + P, x + c * ld + e * P);
      }
    gemm_rows<T>(true, K, n * P, C_in, weight, K, x, ld, T(0), col, ld);
    for (Index e = 0; e < n; ++e) {
      T* y = out + (b0 + e) * N;  // (C_out, Ho, Wo)
      for (Index c = 0; c < og.C; ++c) std::fill(y + c * HW, y + (c + 1) * HW, bias ? bias[c] : T(0));
      col2im(y, col + e * P, og, ld, w.planes());
    }
  }
}

// conv_transpose2d_backward, given dout (B, C_out, Ho, Wo) = ∂J/∂out; per group, dcol (K', n·P)
// = [col(dout_b) …] and X (C_in, n·P) the gathered inputs:
//   dinp_b (C_in, P)    += b-th block of W (C_in, K') · dcol
//   dweight (C_in, K')  += Σ_groups X · dcolᵀ (n·P, K')
//   dbias (C_out)       += Σ_b Σ_positions dout_b[c]
template <class T>
void im2col_conv_transpose2d_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight,
                               Index B, Index C_in, const ConvGeom& og, ConvWork<T>& w) {
  const Index K = og.patch(), P = og.positions(), N = og.in_size(), HW = og.H * og.W, Co = og.C;
  const Index NP = C_in * K + Co;
  const Chunks ch(B, P);
  const Index ld = ch.nb * P;
  w.ensure_cols(K * ld, C_in * ld, phase_planes_size(og));
  T* part = w.ensure_partials(ch.count, NP);
#pragma omp parallel for schedule(dynamic, 1) if (conv_parallel(4.0 * B * C_in * K * P, ch.count))
  for (Index c = 0; c < ch.count; ++c) {
    T* col = w.col();  // (K', ld)
    T* x = w.buf();    // (C_in, ld)
    T* dw = clear_partial(part, c, NP);  // (C_in, K')
    T* db = dw + C_in * K;                // (C_out)
    for (Index gi = ch.chunk_groups_begin(c); gi < ch.chunk_groups_end(c); ++gi) {
      const Index b0 = ch.group_begin(gi), n = ch.group_len(gi);
      for (Index e = 0; e < n; ++e) {
        const T* dy = dout + (b0 + e) * N;
        im2col(col + e * P, dy, og, ld, w.planes());
        for (Index ci = 0; ci < C_in; ++ci) {
          const T* src = inp + ((b0 + e) * C_in + ci) * P;
          std::copy(src, src + P, x + ci * ld + e * P);
        }
        for (Index o = 0; o < Co; ++o) {
          T s = 0;
          for (Index q = 0; q < HW; ++q) s += dy[o * HW + q];
          db[o] += s;
        }
      }
      gemm_dots<T>(C_in, K, n * P, x, ld, col, ld, dw, K);  // += X (C_in, n·P) · dcolᵀ
      if (dinp) {
        gemm_rows<T>(false, C_in, n * P, K, weight, K, col, ld, T(0), x, ld);  // dX (C_in, n·P) = W · dcol
        for (Index e = 0; e < n; ++e)
          for (Index ci = 0; ci < C_in; ++ci) {
            const T* src = x + ci * ld + e * P;
            T* dst = dinp + ((b0 + e) * C_in + ci) * P;
            for (Index q = 0; q < P; ++q) dst[q] += src[q];
          }
      }
    }
  }
  if (dweight) add_partials(dweight, part, ch.count, C_in * K, NP);
  if (dbias) add_partials(dbias, part + C_in * K, ch.count, Co, NP);
}

// ---- Nearest upsampling ×2 -----------------------------------------------------------------

// upsample2_forward: out (B, C, 2H, 2W)[c, 2i + a, 2j + e] = inp (B, C, H, W)[c, i, j]
// (torch.nn.Upsample(scale_factor=2, mode="nearest")).
template <class T>
void upsample2_forward(T* out, const T* inp, Index B, Index C, Index H, Index W) {
  const Index W2 = 2 * W;
#pragma omp parallel for schedule(static) if (conv_parallel(8.0 * B * C * H * W, B))
  for (Index b = 0; b < B; ++b)
    for (Index c = 0; c < C; ++c)
      for (Index i = 0; i < H; ++i) {
        const T* x = inp + ((b * C + c) * H + i) * W;
        T* y = out + ((b * C + c) * 2 * H + 2 * i) * W2;
        for (Index j = 0; j < W; ++j) y[2 * j] = y[2 * j + 1] = x[j];
        std::copy(y, y + W2, y + W2);
      }
}

// upsample2_backward: dinp (B, C, H, W)[c, i, j] += Σ_{a, e ∈ {0, 1}} dout (B, C, 2H, 2W)[c, 2i + a, 2j + e].
template <class T>
void upsample2_backward(T* dinp, const T* dout, Index B, Index C, Index H, Index W) {
  const Index W2 = 2 * W;
#pragma omp parallel for schedule(static) if (conv_parallel(8.0 * B * C * H * W, B))
  for (Index b = 0; b < B; ++b)
    for (Index c = 0; c < C; ++c)
      for (Index i = 0; i < H; ++i) {
        T* dx = dinp + ((b * C + c) * H + i) * W;
        const T* d0 = dout + ((b * C + c) * 2 * H + 2 * i) * W2;
        const T* d1 = d0 + W2;
        for (Index j = 0; j < W; ++j) dx[j] += (d0[2 * j] + d0[2 * j + 1]) + (d1[2 * j] + d1[2 * j + 1]);
      }
}

// ---- GroupNorm -----------------------------------------------------------------------------

constexpr double kGroupNormEps = 1e-5;  // torch.nn.GroupNorm's default

inline void check_groups(Index C, Index G, const std::string& what) {
  if (G <= 0 || C % G != 0)
    fail(what + ": num_groups must be a positive divisor of the channels " + std::to_string(C) + ", got " +
         std::to_string(G));
}

// Σ_{i < n} f(i) in double, in 8 interleaved partial sums added in a fixed order at the end: the
// sums vectorize (a single running sum is one dependent add per entry) and their order depends on
// n alone.
template <class F>
inline double sum8(Index n, F f) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  Index i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) acc[l] += f(i + l);
  for (int l = 0; i < n; ++i, ++l) acc[l] += f(i);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// group_norm_forward (torch.nn.GroupNorm(G, C, eps, affine=True)): per example b and group g of
// the C/G channels c ∈ g, over the N = (C/G)·H·W entries of the group,
//   mean_bg = Σ x / N,  var_bg = Σ (x − mean)² / N (biased),  rstd_bg = 1/√(var_bg + eps),
//   out (B, C, H, W) = (x − mean_bg)·rstd_bg·weight[c] + bias[c].
// Saves mean, rstd (B, G) for the backward; the sums run in double.
template <class T>
void group_norm_forward(T* out, T* mean, T* rstd, const T* inp, const T* weight, const T* bias, Index B, Index C,
                        Index HW, Index G, double eps = kGroupNormEps) {
  const Index Cg = C / G, N = Cg * HW;
#pragma omp parallel for schedule(static) if (conv_parallel(8.0 * B * C * HW, B))
  for (Index b = 0; b < B; ++b)
    for (Index g = 0; g < G; ++g) {
      const T* x = inp + (b * C + g * Cg) * HW;  // (Cg, HW)
      T* y = out + (b * C + g * Cg) * HW;
      const double m = sum8(N, [x](Index i) { return double(x[i]); }) / double(N);
      const double v = sum8(N, [x, m](Index i) {
        const double d = double(x[i]) - m;
        return d * d;
      });
      const double r = 1.0 / std::sqrt(v / double(N) + eps);
      mean[b * G + g] = T(m);
      rstd[b * G + g] = T(r);
      for (Index c = 0; c < Cg; ++c) {
        const Index ch = g * Cg + c;
        const T a = T(r * double(weight[ch])), sh = T(double(bias[ch]) - m * r * double(weight[ch]));
        for (Index q = 0; q < HW; ++q) y[c * HW + q] = x[c * HW + q] * a + sh;
      }
    }
}

// group_norm_backward, given dout (B, C, H, W) and the saved mean, rstd (B, G), with
// x̂ = (x − mean)·rstd and dx̂ = dout·weight[c]:
//   dinp   += rstd · (dx̂ − mean_group(dx̂) − x̂ · mean_group(dx̂ · x̂))
//   dweight (C) += Σ_b Σ_positions dout · x̂,   dbias (C) += Σ_b Σ_positions dout
// The parameter gradients go through per-example partials (B, 2C) added in example order.
template <class T>
void group_norm_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* mean, const T* rstd,
                         const T* weight, Index B, Index C, Index HW, Index G, ConvWork<T>& w) {
  const Index Cg = C / G, N = Cg * HW;
  T* part = w.ensure_partials(B, 2 * C);  // (B, 2C): Σ dout·x̂ then Σ dout, per channel
#pragma omp parallel for schedule(static) if (conv_parallel(12.0 * B * C * HW, B))
  for (Index b = 0; b < B; ++b)
    for (Index g = 0; g < G; ++g) {
      const Index off = (b * C + g * Cg) * HW;
      const T* x = inp + off;
      const T* dy = dout + off;
      const double m = double(mean[b * G + g]), r = double(rstd[b * G + g]);
      double s1 = 0, s2 = 0;  // Σ dx̂, Σ dx̂·x̂ over the group
      for (Index c = 0; c < Cg; ++c) {
        const Index ch = g * Cg + c;
        const T* dyc = dy + c * HW;
        const T* xc = x + c * HW;
        const double sy = sum8(HW, [dyc](Index q) { return double(dyc[q]); });
        // Σ dy·x̂ = r·(Σ dy·x − m·Σ dy), in double
        const double syx = r * (sum8(HW, [dyc, xc](Index q) { return double(dyc[q]) * double(xc[q]); }) - m * sy);
        part[b * 2 * C + ch] = T(syx);
        part[b * 2 * C + C + ch] = T(sy);
        s1 += sy * double(weight[ch]);
        s2 += syx * double(weight[ch]);
      }
      if (!dinp) continue;
      // dx += r·(dy·w_c − m1 − x̂·m2) = a·dy + e·x + f, the coefficients per channel in double
      const double m1 = s1 / double(N), m2 = s2 / double(N);
      const T e = T(-r * r * m2), f = T(r * (r * m * m2 - m1));
      T* dx = dinp + off;
      for (Index c = 0; c < Cg; ++c) {
        const T a = T(r * double(weight[g * Cg + c]));
        const T* dyc = dy + c * HW;
        const T* xc = x + c * HW;
        T* dxc = dx + c * HW;
        for (Index q = 0; q < HW; ++q) dxc[q] += a * dyc[q] + e * xc[q] + f;
      }
    }
  if (dweight) add_partials(dweight, part, B, C, 2 * C);
  if (dbias) add_partials(dbias, part + C, B, C, 2 * C);
}

}  // namespace elbokit

#include "elbokit/winograd.hpp"
#include "elbokit/winograd_s2.hpp"

namespace elbokit {

// ---- The dispatch: Winograd where it applies, im2col + GEMM otherwise (same results up to rounding)
//   winograd_applies:  a 3×3 kernel at stride 1 on even sides, F(2×2, 3×3) (winograd.hpp);
//   winograd_s2_auto:  float32 on AVX-512, a 4×4 kernel at stride 2 on an even padded image of at most
//                      32 columns and ≥ 8 channels (for ConvTranspose2d: its output's), F(2×2, 2×2) on
//                      phases (winograd_s2.hpp).

template <class T>
void conv2d_forward(T* out, const T* inp, const T* weight, const T* bias, Index B, const ConvGeom& g, Index O,
                    ConvWork<T>& w) {
  if (winograd_applies(g)) return winograd_conv2d_forward(out, inp, weight, bias, B, g, O, w);
  if (winograd_s2_auto<T>(g)) return winograd_s2_conv2d_forward(out, inp, weight, bias, B, g, O, w);
  im2col_conv2d_forward(out, inp, weight, bias, B, g, O, w);
}
template <class T>
void conv2d_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight, Index B,
                     const ConvGeom& g, Index O, ConvWork<T>& w) {
  if (winograd_applies(g)) return winograd_conv2d_backward(dinp, dweight, dbias, dout, inp, weight, B, g, O, w);
  if (winograd_s2_auto<T>(g)) return winograd_s2_conv2d_backward(dinp, dweight, dbias, dout, inp, weight, B, g, O, w);
  im2col_conv2d_backward(dinp, dweight, dbias, dout, inp, weight, B, g, O, w);
}
template <class T>
void conv_transpose2d_forward(T* out, const T* inp, const T* weight, const T* bias, Index B, Index C_in,
                              const ConvGeom& og, ConvWork<T>& w) {
  if (winograd_s2_auto<T>(og)) return winograd_s2_conv_transpose2d_forward(out, inp, weight, bias, B, C_in, og, w);
  im2col_conv_transpose2d_forward(out, inp, weight, bias, B, C_in, og, w);
}
template <class T>
void conv_transpose2d_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight,
                               Index B, Index C_in, const ConvGeom& og, ConvWork<T>& w) {
  if (winograd_s2_auto<T>(og))
    return winograd_s2_conv_transpose2d_backward(dinp, dweight, dbias, dout, inp, weight, B, C_in, og, w);
  im2col_conv_transpose2d_backward(dinp, dweight, dbias, dout, inp, weight, B, C_in, og, w);
}

}  // namespace elbokit
