// elbokit/winograd.hpp: Conv2d with a 3×3 kernel at stride 1 by Winograd's minimal filtering
// F(2×2, 3×3) (Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks"): each 2×2
// block of outputs of a channel pair costs 16 products instead of 36, so the products of the
// convolution, its input gradient and its weight gradient shrink 2.25×. Included by conv.hpp, whose
// conv2d_forward and conv2d_backward take this path when winograd_applies(g) holds.
//
// Per image, output tile (ty, tx) of 2×2 reads the 4×4 input tile d at rows 2ty − p … 2ty − p + 3
// and columns 2tx − p … 2tx − p + 3 of the zero-padded image. With
//   Bᵀ = [1 0 −1 0; 0 1 1 0; 0 −1 1 0; 0 1 0 −1],  G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1],
//   Aᵀ = [1 1 1 0; 0 1 −1 −1],
// the tile of output channel o is  y = Aᵀ [Σ_c (G w_oc Gᵀ) ⊙ (Bᵀ d_c B)] A  (the cross-correlation
// torch.nn.Conv2d computes). With ξ = 4i + j the 16 entries of the transformed 4×4 tiles,
//   V_ξ (C, n·T) = (Bᵀ d B)_ξ of every tile of the group's n images (T = (Ho/2)(Wo/2) tiles each),
//   U_ξ (O, C)   = (G w Gᵀ)_ξ,   M_ξ (O, n·T) = U_ξ · V_ξ  (16 products),   y = Aᵀ M A.
// The 4×4 tiles at stride 2 are read from the image's stride-2 phase planes (conv.hpp) or, for
// float32 rows of at most 32 padded entries, split into even and odd columns in registers. V is
// (C, 16, ld): V_ξ is the (C, n·T) matrix of rows c·16 + ξ (row stride 16·ld), so the products read
// it in place; M is (O, 16, ld) alike. ld = nb·T + kSlack.
//
// Backward, given dy = ∂J/∂y: per tile dM = A dy Aᵀ (the adjoint of y = Aᵀ M A), then
//   dU_ξ (O, C) += dM_ξ · V_ξᵀ,   dw (O, C, 3, 3) += Gᵀ dU G  (the adjoint of U = G w Gᵀ);
//   dx = the stride-1 convolution of dy with the flipped kernel w̃[c, o, i, j] = w[o, c, 2−i, 2−j]
//   and padding 2 − p: again a 3×3 convolution, run by the same forward.
//
// Applies when H and W are even: then Ho = H + 2p − 2 and Wo are even (whole 2×2 tiles) and so is
// dy's padded side, Ho + 2(2 − p) = H + 2. The algebra is exact; in floating point the transforms'
// additions round differently from im2col's sums (measured against torch.nn.Conv2d, relative to
// the largest entry: float64 ≤ 5e-15, float32 ≤ 1.4e-6; tests/test_conv_layers.py). Parallel and deterministic as conv.hpp's layers: images in groups, the
// weight gradient in fixed chunks whose partials are added in chunk order.
#pragma once

#include <algorithm>
#include <type_traits>
#include <vector>

namespace elbokit {

// Whether conv2d_forward/backward take the Winograd path for geometry g.
inline bool winograd_applies(const ConvGeom& g) {
  return g.k == 3 && g.stride == 1 && g.H % 2 == 0 && g.W % 2 == 0 && g.H + 2 * g.pad >= 4 && g.W + 2 * g.pad >= 4;
}

namespace wino {

// Columns past a group's tiles in the rows of V and M: room for the fast paths' whole-packet stores
// and loads (winograd_conv2d_forward/backward add them to ld).
constexpr Index kSlack = 16;

// The 4×4 stride-2 tiles of the zero-padded input: im2col geometry of a 4×4 kernel at stride 2.
inline ConvGeom tile_geom(const ConvGeom& g) { return ConvGeom{g.C, g.H, g.W, 4, 2, g.pad}; }
// The 2×2 blocks of an output (O, Ho, Wo): its phase planes at stride 2, one per (a, b), each (Ho/2, Wo/2).
inline ConvGeom block_geom(Index O, Index Ho, Index Wo) { return ConvGeom{O, Ho, Wo, 2, 2, 0}; }

// U (16, O, C) = G w Gᵀ for every (o, c), w (O, C, 3, 3).
template <class T>
void weight_transform(T* U, const T* w, Index O, Index C) {
#pragma omp parallel for schedule(static) if (O * C >= 2048)
  for (Index o = 0; o < O; ++o)
    for (Index c = 0; c < C; ++c) {
      const T* g = w + (o * C + c) * 9;
      T t[4][3];  // G g (4, 3)
      for (int j = 0; j < 3; ++j) {
        t[0][j] = g[j];
        t[1][j] = T(0.5) * (g[j] + g[3 + j] + g[6 + j]);
        t[2][j] = T(0.5) * (g[j] - g[3 + j] + g[6 + j]);
        t[3][j] = g[6 + j];
      }
      for (int i = 0; i < 4; ++i) {
        const T u[4] = {t[i][0], T(0.5) * (t[i][0] + t[i][1] + t[i][2]), T(0.5) * (t[i][0] - t[i][1] + t[i][2]),
                        t[i][2]};
        for (int j = 0; j < 4; ++j) U[((4 * i + j) * O + o) * C + c] = u[j];
      }
    }
}

// dw (O, C, 3, 3) += Gᵀ dU G for every (o, c), dU (16, O, C): the adjoint of weight_transform.
template <class T>
void weight_transform_adjoint(T* dw, const T* dU, Index O, Index C) {
#pragma omp parallel for schedule(static) if (O * C >= 2048)
  for (Index o = 0; o < O; ++o)
    for (Index c = 0; c < C; ++c) {
      T m[4][4];
      for (int xi = 0; xi < 16; ++xi) m[xi / 4][xi % 4] = dU[(Index(xi) * O + o) * C + c];
      T t[4][3];  // m G (4, 3)
      for (int i = 0; i < 4; ++i) {
        t[i][0] = m[i][0] + T(0.5) * (m[i][1] + m[i][2]);
        t[i][1] = T(0.5) * (m[i][1] - m[i][2]);
        t[i][2] = T(0.5) * (m[i][1] + m[i][2]) + m[i][3];
      }
      T* g = dw + (o * C + c) * 9;
      for (int j = 0; j < 3; ++j) {
        g[j] += t[0][j] + T(0.5) * (t[1][j] + t[2][j]);
        g[3 + j] += T(0.5) * (t[1][j] - t[2][j]);
        g[6 + j] += T(0.5) * (t[1][j] + t[2][j]) + t[3][j];
      }
    }
}

// v = Bᵀ d B on one tile (or a packet of tiles: V a scalar or a GCC vector such as __m512),
// d[4i + j], v[4i + j].
template <class V>
inline void bt_d_b(const V* d, V* v) {
  V t[16];
  for (int j = 0; j < 4; ++j) {  // rows: t = Bᵀ d
    t[j] = d[j] - d[8 + j];
    t[4 + j] = d[4 + j] + d[8 + j];
    t[8 + j] = d[8 + j] - d[4 + j];
    t[12 + j] = d[4 + j] - d[12 + j];
  }
  for (int i = 0; i < 4; ++i) {  // columns: v = t B
    v[4 * i] = t[4 * i] - t[4 * i + 2];
    v[4 * i + 1] = t[4 * i + 1] + t[4 * i + 2];
    v[4 * i + 2] = t[4 * i + 2] - t[4 * i + 1];
    v[4 * i + 3] = t[4 * i + 1] - t[4 * i + 3];
  }
}

// The transformed tiles of one channel of one image, read from its phase planes: planes (2, 2, Hq, Wq)
// as to_phase_planes(tile_geom) writes them (plane = Hq·Wq), so that tile (ty, tx)'s entry (i, j)
// is planes[i % 2, j % 2, ty + ⌊i/2⌋, tx + ⌊j/2⌋]; v[ξ·ld + ty·Tw + tx] = (Bᵀ d B)_ξ, for the
// Th × Tw tiles. One tile row at a time, the tiles of a row side by side in a packet (AVX-512).
template <class T>
void input_transform(T* v, Index ld, const T* planes, Index plane, Index Th, Index Tw, Index Wq) {
  for (Index ty = 0; ty < Th; ++ty) {
    const T* src[16];
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j) src[4 * i + j] = planes + ((i % 2) * 2 + j % 2) * plane + (ty + i / 2) * Wq + j / 2;
    T* dst = v + ty * Tw;
#ifdef __AVX512F__
    if constexpr (std::is_same_v<T, float>) {
      for (Index tx = 0; tx < Tw; tx += 16) {
        const Index r = std::min<Index>(16, Tw - tx);
        const __mmask16 m = r == 16 ? __mmask16(0xffff) : __mmask16((1u << r) - 1);
        __m512 d[16], o[16];
        for (int x = 0; x < 16; ++x) d[x] = _mm512_maskz_loadu_ps(m, src[x] + tx);
        bt_d_b(d, o);
        for (int x = 0; x < 16; ++x) _mm512_mask_storeu_ps(dst + x * ld + tx, m, o[x]);
      }
      continue;
    }
#endif
    for (Index tx = 0; tx < Tw; ++tx) {
      T d[16], o[16];
      for (int x = 0; x < 16; ++x) d[x] = src[x][tx];
      bt_d_b(d, o);
      for (int x = 0; x < 16; ++x) dst[x * ld + tx] = o[x];
    }
  }
}

#ifdef __AVX512F__
// Fast paths (float, AVX-512) for images whose padded rows fit one 32-lane window (W + 2p ≤ 32, so
// at most 15 tiles a row): each image row is loaded once per use into two packets and split into
// its even and odd columns in registers, with no phase planes and no per-row scratch copies.
using elbokit::lanes16;  // gemm.hpp
inline bool fits_window(Index W, Index p) { return W + 2 * p <= 32; }

// The windows below stream image rows (activations written long before; in the backward pass, the
// forward's) at a few hundred bytes per step, which the hardware prefetchers did not hide: the
// loads of the rows took most of their time. Each step asks for the rows kPrefetchRows ahead (n
// floats from p, into L1; a prefetch past the array is harmless).
constexpr Index kPrefetchRows = 16;
inline void prefetch_ahead(const float* p, Index n) {
  for (Index i = 0; i < n; i += 16) _mm_prefetch(reinterpret_cast<const char*>(p + i), _MM_HINT_T0);
}

// The columns of one zero-padded row (W entries at row, p zeros before): even[t] = xp[2t],
// odd[t] = xp[2t + 1], even1[t] = xp[2t + 2], odd1[t] = xp[2t + 3] for t < 15; row = nullptr: zeros.
inline void row_phases(const float* row, Index W, Index p, __m512& even, __m512& odd, __m512& even1, __m512& odd1) {
  if (!row) {
    even = odd = even1 = odd1 = _mm512_setzero_ps();
    return;
  }
  const uint32_t m = uint32_t(((uint64_t(1) << (p + W)) - 1) & ~((uint64_t(1) << p) - 1));  // lanes p … p + W − 1
  const __m512 lo = _mm512_maskz_loadu_ps(__mmask16(m & 0xffff), row - p);
  const __m512 hi = _mm512_maskz_loadu_ps(__mmask16(m >> 16), row - p + 16);
  const __m512i i0 = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i i1 = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  const __m512i i2 = _mm512_setr_epi32(2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 0);
  const __m512i i3 = _mm512_setr_epi32(3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31, 1);
  even = _mm512_permutex2var_ps(lo, i0, hi);
  odd = _mm512_permutex2var_ps(lo, i1, hi);
  even1 = _mm512_permutex2var_ps(lo, i2, hi);
  odd1 = _mm512_permutex2var_ps(lo, i3, hi);
}

// tiles() for one image x (C, H, W), fits_window(W, p). The stores are whole packets: the lanes
// past a tile row's Tw tiles fall on the next tile row (written after) or, for the group's last
// image, in the kSlack columns past the group's tiles (ld ≥ n·T + kWinoSlack). Each input row's
// phases serve two tile rows.
inline void tiles_window(float* v, Index ld, const float* x, const ConvGeom& g) {
  const Index Th = (g.H + 2 * g.pad - 2) / 2, p = g.pad, Tw = (g.W + 2 * p - 2) / 2;
  for (Index c = 0; c < g.C; ++c) {
    const float* xc = x + c * g.H * g.W;
    float* vc = v + c * 16 * ld;
    auto row = [&](Index ih) { return ih >= 0 && ih < g.H ? xc + ih * g.W : nullptr; };
    __m512 d[16], o[16];
    for (int i = 0; i < 2; ++i) row_phases(row(i - p), g.W, p, d[4 * i], d[4 * i + 1], d[4 * i + 2], d[4 * i + 3]);
    for (Index ty = 0; ty < Th; ++ty) {
      prefetch_ahead(xc + (2 * ty + kPrefetchRows) * g.W, 2 * g.W);  // past the channel: the next one's rows
      for (int i = 2; i < 4; ++i)
        row_phases(row(2 * ty - p + i), g.W, p, d[4 * i], d[4 * i + 1], d[4 * i + 2], d[4 * i + 3]);
      bt_d_b(d, o);
      for (int xi = 0; xi < 16; ++xi) _mm512_storeu_ps(vc + xi * ld + ty * Tw, o[xi]);
      for (int x_ = 0; x_ < 8; ++x_) d[x_] = d[8 + x_];  // rows 2, 3 are the next tile row's 0, 1
    }
  }
}

// Output transform into the image: out (Ho, Wo) of one channel = (add: +=) Aᵀ M A + bias, m its
// 16 rows (row stride ld), Wo ≤ 30.
template <bool add>
inline void output_window(float* out, const float* m, Index ld, Index Ho, Index Wo, float bias) {
  const Index Tw = Wo / 2;
  const __mmask16 m0 = lanes16(Wo), m1 = lanes16(Wo - 16);
  const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  const __m512 b = _mm512_set1_ps(bias);
  for (Index ty = 0; ty < Ho / 2; ++ty) {
    if constexpr (add) prefetch_ahead(out + (2 * ty + kPrefetchRows) * Wo, 2 * Wo);
    __m512 v[16];
    for (int xi = 0; xi < 16; ++xi) v[xi] = _mm512_loadu_ps(m + xi * ld + ty * Tw);  // lanes ≥ Tw unused
    __m512 s0[4], s1[4];
    for (int j = 0; j < 4; ++j) {
      s0[j] = v[j] + v[4 + j] + v[8 + j];
      s1[j] = v[4 + j] - v[8 + j] - v[12 + j];
    }
    const __m512 y[4] = {s0[0] + s0[1] + s0[2] + b, s0[1] - s0[2] - s0[3] + b, s1[0] + s1[1] + s1[2] + b,
                         s1[1] - s1[2] - s1[3] + b};
    for (int a = 0; a < 2; ++a) {
      float* row = out + (2 * ty + a) * Wo;
      __m512 r0 = _mm512_permutex2var_ps(y[2 * a], lo, y[2 * a + 1]);
      __m512 r1 = _mm512_permutex2var_ps(y[2 * a], hi, y[2 * a + 1]);
      if constexpr (add) {
        r0 = r0 + _mm512_maskz_loadu_ps(m0, row);
        r1 = r1 + _mm512_maskz_loadu_ps(m1, row + 16);
      }
      _mm512_mask_storeu_ps(row, m0, r0);
      _mm512_mask_storeu_ps(row + 16, m1, r1);
    }
  }
}

// dM = A dy Aᵀ for the tiles of one channel's output gradient dy (Ho, Wo), Wo ≤ 30: dm's 16 rows
// (row stride ld).
inline void output_adjoint_window(float* dm, Index ld, const float* dy, Index Ho, Index Wo) {
  const Index Tw = Wo / 2;
  for (Index ty = 0; ty < Ho / 2; ++ty) {
    prefetch_ahead(dy + (2 * ty + kPrefetchRows) * Wo, 2 * Wo);
    __m512 y0[4], y1[4];  // row 2ty and 2ty + 1: even, odd columns (the rest unused)
    row_phases(dy + 2 * ty * Wo, Wo, 0, y0[0], y0[1], y0[2], y0[3]);
    row_phases(dy + (2 * ty + 1) * Wo, Wo, 0, y1[0], y1[1], y1[2], y1[3]);
    const __m512 r[4][2] = {{y0[0], y0[1]}, {y0[0] + y1[0], y0[1] + y1[1]}, {y0[0] - y1[0], y0[1] - y1[1]},
                            {-y1[0], -y1[1]}};
    float* d = dm + ty * Tw;  // whole packets, as tiles_window
    for (int i = 0; i < 4; ++i) {
      _mm512_storeu_ps(d + (4 * i) * ld, r[i][0]);
      _mm512_storeu_ps(d + (4 * i + 1) * ld, r[i][0] + r[i][1]);
      _mm512_storeu_ps(d + (4 * i + 2) * ld, r[i][0] - r[i][1]);
      _mm512_storeu_ps(d + (4 * i + 3) * ld, -r[i][1]);
    }
  }
}
#endif

// The transformed tiles of n images (C, H, W) side by side: v (C, 16, ld), image e's tiles at
// columns e·T …; planes: phase_planes_size(tile_geom(g)) entries of scratch.
template <class T>
void tiles(T* v, Index ld, const T* inp, Index n, const ConvGeom& g, T* planes) {
  const ConvGeom tg = tile_geom(g);
  const PhaseGeom q(tg);
  const Index Th = tg.Ho(), Tw = tg.Wo(), Tn = Th * Tw;
#ifdef __AVX512F__
  if constexpr (std::is_same_v<T, float>)
    if (fits_window(g.W, g.pad)) {
      for (Index e = 0; e < n; ++e) tiles_window(v + e * Tn, ld, inp + e * g.in_size(), g);
      return;
    }
#endif
  for (Index e = 0; e < n; ++e) {
    to_phase_planes(planes, inp + e * g.in_size(), tg);
    for (Index c = 0; c < g.C; ++c)
      input_transform(v + c * 16 * ld + e * Tn, ld, planes + c * 4 * q.plane(), q.plane(), Th, Tw, q.Wq);
  }
}

// From the 16 rows m[ξ] (row stride ld) of one output channel's tiles, the four 2×2 phases
// y (4, n) = Aᵀ m A, y[2a + b] the output at (2ty + a, 2tx + b), plus bias.
template <class T>
void output_transform(T* y, const T* m, Index ld, Index n, T bias) {
#pragma omp simd
  for (Index q = 0; q < n; ++q) {
    T v[16];
    for (int x = 0; x < 16; ++x) v[x] = m[x * ld + q];
    T s0[4], s1[4];  // Aᵀ m (2, 4)
    for (int j = 0; j < 4; ++j) {
      s0[j] = v[j] + v[4 + j] + v[8 + j];
      s1[j] = v[4 + j] - v[8 + j] - v[12 + j];
    }
    y[q] = s0[0] + s0[1] + s0[2] + bias;
    y[n + q] = s0[1] - s0[2] - s0[3] + bias;
    y[2 * n + q] = s1[0] + s1[1] + s1[2] + bias;
    y[3 * n + q] = s1[1] - s1[2] - s1[3] + bias;
  }
}

// The adjoint of output_transform: from the four phases dy (4, n) of one channel's output
// gradient, the 16 rows dm[ξ] (row stride ld) = A dy Aᵀ.
template <class T>
void output_transform_adjoint(T* dm, const T* dy, Index ld, Index n) {
#pragma omp simd
  for (Index q = 0; q < n; ++q) {
    const T y00 = dy[q], y01 = dy[n + q], y10 = dy[2 * n + q], y11 = dy[3 * n + q];
    const T r[4][2] = {{y00, y01}, {y00 + y10, y01 + y11}, {y00 - y10, y01 - y11}, {-y10, -y11}};  // A dy
    for (int i = 0; i < 4; ++i) {  // (A dy) Aᵀ
      dm[(4 * i) * ld + q] = r[i][0];
      dm[(4 * i + 1) * ld + q] = r[i][0] + r[i][1];
      dm[(4 * i + 2) * ld + q] = r[i][0] - r[i][1];
      dm[(4 * i + 3) * ld + q] = -r[i][1];
    }
  }
}

// interleave2: row[2v] = even[v], row[2v + 1] = odd[v] for v < n, stored (add = false) or added.
template <bool add, class T>
inline void interleave2(T* row, const T* even, const T* odd, Index n) {
#ifdef __AVX512F__
  if constexpr (std::is_same_v<T, float>) {
    const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    for (Index v = 0; v < n; v += 16) {
      const Index r = std::min<Index>(16, n - v), r0 = std::min<Index>(16, 2 * r), r1 = 2 * r - r0;
      const __mmask16 m = lanes16(r), m0 = lanes16(r0), m1 = lanes16(r1);
      const __m512 e = _mm512_maskz_loadu_ps(m, even + v), o = _mm512_maskz_loadu_ps(m, odd + v);
      __m512 a = _mm512_permutex2var_ps(e, lo, o), b = _mm512_permutex2var_ps(e, hi, o);
      float* d = row + 2 * v;
      if constexpr (add) {
        a = _mm512_add_ps(a, _mm512_maskz_loadu_ps(m0, d));
        b = _mm512_add_ps(b, _mm512_maskz_loadu_ps(m1, d + 16));
      }
      _mm512_mask_storeu_ps(d, m0, a);
      if (r1 > 0) _mm512_mask_storeu_ps(d + 16, m1, b);
    }
    return;
  }
#endif
  for (Index v = 0; v < n; ++v) {
    if constexpr (add) {
      row[2 * v] += even[v];
      row[2 * v + 1] += odd[v];
    } else {
      row[2 * v] = even[v];
      row[2 * v + 1] = odd[v];
    }
  }
}

// Writes (add = false) or adds the phases y (4, T) of one channel into its image rows out (Ho, Wo).
template <bool add, class T>
void phases_to_image(T* out, const T* y, Index Ho, Index Wo) {
  const Index Tw = Wo / 2, T_ = (Ho / 2) * Tw;
  for (Index ty = 0; ty < Ho / 2; ++ty)
    for (Index a = 0; a < 2; ++a)
      interleave2<add>(out + (2 * ty + a) * Wo, y + (2 * a) * T_ + ty * Tw, y + (2 * a + 1) * T_ + ty * Tw, Tw);
}

// Scratch entries per thread for forward_group: the transformed tiles (16·C, ld), the products
// (16·O, ld), then im2col's planes and one channel's four phases.
inline Index scratch_third(const ConvGeom& g) {
  const ConvGeom tg = tile_geom(g);
  return phase_planes_size(tg) + 4 * tg.positions();
}

// One group of n images: out_b (O, Ho, Wo) = conv(inp_b) + bias (add = false), or out_b += conv(inp_b)
// (add = true, bias unused), U (16, O, C) the transformed weights; col (16·C, ld), m (16·O, ld) and
// scratch (scratch_third(g)) the thread's buffers, ld ≥ n·T. Image b's input at inp + b·C·H·W and
// its output at out + b·O·Ho·Wo.
template <bool add, class T>
void forward_group(T* out, const T* inp, const T* U, const T* bias, Index n, const ConvGeom& g, Index O, T* col,
                   T* m, Index ld, T* scratch) {
  const ConvGeom tg = tile_geom(g);
  const Index C = g.C, Tn = tg.positions(), I = g.in_size(), Ho = g.Ho(), Wo = g.Wo(), P = Ho * Wo;
  T* planes = scratch;
  T* y = scratch + phase_planes_size(tg);  // (4, T)
  tiles(col, ld, inp, n, g, planes);  // V (C, 16, n·T)
  for (Index xi = 0; xi < 16; ++xi)  // M_ξ (O, n·T) = U_ξ (O, C) · V_ξ (C, n·T)
    gemm_rows<T>(false, O, n * Tn, C, U + xi * O * C, C, col + xi * ld, 16 * ld, T(0), m + xi * ld, 16 * ld);
  for (Index e = 0; e < n; ++e)
    for (Index o = 0; o < O; ++o) {
      const T bo = add || !bias ? T(0) : bias[o];
#ifdef __AVX512F__
      if constexpr (std::is_same_v<T, float>)
        if (fits_window(Wo, 1)) {
          output_window<add>(out + (e * O + o) * P, m + o * 16 * ld + e * Tn, ld, Ho, Wo, bo);
          continue;
        }
#endif
      output_transform(y, m + o * 16 * ld + e * Tn, ld, Tn, bo);
      phases_to_image<add>(out + (e * O + o) * P, y, Ho, Wo);
    }
}

}  // namespace wino

// conv2d_forward by Winograd (winograd_applies(g)): as conv2d_forward.
template <class T>
void winograd_conv2d_forward(T* out, const T* inp, const T* weight, const T* bias, Index B, const ConvGeom& g, Index O,
                             ConvWork<T>& w) {
  const ConvGeom tg = wino::tile_geom(g);
  const Index C = g.C, Tn = tg.positions();
  const Chunks ch(B, Tn);
  const Index ld = ch.nb * Tn + wino::kSlack;
  w.ensure_cols(16 * C * ld, 16 * O * ld, wino::scratch_third(g));
  w.wino.resize(size_t(16 * O * C));
  wino::weight_transform(w.wino.data(), weight, O, C);
  const T* U = w.wino.data();
#pragma omp parallel for schedule(static) if (conv_parallel(2.0 * B * O * C * 16 * Tn, ch.groups))
  for (Index gi = 0; gi < ch.groups; ++gi) {
    const Index b0 = ch.group_begin(gi);
    wino::forward_group<false>(out + b0 * O * g.positions(), inp + b0 * g.in_size(), U, bias, ch.group_len(gi), g, O,
                               w.col(), w.buf(), ld, w.planes());
  }
}

// conv2d_backward by Winograd (winograd_applies(g)): as conv2d_backward.
template <class T>
void winograd_conv2d_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight, Index B,
                              const ConvGeom& g, Index O, ConvWork<T>& w) {
  const ConvGeom tg = wino::tile_geom(g);
  const Index C = g.C, Tn = tg.positions(), I = g.in_size(), Ho = g.Ho(), Wo = g.Wo(), P = Ho * Wo;
  const ConvGeom gd{O, Ho, Wo, 3, 1, 2 - g.pad};  // dout_b (O, Ho, Wo) → dinp_b (C, H, W), flipped kernel
  const ConvGeom bg = wino::block_geom(O, Ho, Wo);
  const Index NU = 16 * O * C, NP = NU + O;  // one chunk's partial: dU (16, O, C), dbias (O)
  const Chunks ch(B, Tn);  // groups of images as the forward's; gd's images have (H/2)(W/2) tiles
  const Index ld = ch.nb * std::max(Tn, wino::tile_geom(gd).positions()) + wino::kSlack;
  const Index rows = 16 * std::max(C, O);
  w.ensure_cols(rows * ld, rows * ld,
                std::max({wino::scratch_third(g), wino::scratch_third(gd), phase_planes_size(bg)}));
  T* part = w.ensure_partials(ch.count, NP);
  // U (16, O, C) of w, then Ũ (16, C, O) of the flipped kernel w̃ (C, O, 3, 3)
  w.wino.resize(size_t(2 * NU));
  T* U = w.wino.data();
  T* Uf = U + NU;
  wino::weight_transform(U, weight, O, C);
  if (dinp) {
    flip_kernel(w.flipped, weight, O, C, Index(3));
    wino::weight_transform(Uf, w.flipped.data(), C, O);
  }
#pragma omp parallel for schedule(dynamic, 1) if (conv_parallel(6.0 * B * O * C * 16 * Tn, ch.count))
  for (Index c = 0; c < ch.count; ++c) {
    T* col = w.col();  // (16·C, ld): V; then the flipped conv's tiles
    T* m = w.buf();    // (16·O, ld): dM; then the flipped conv's products
    T* scratch = w.planes();
    T* dU = clear_partial(part, c, NP);  // (16, O, C)
    T* db = dU + NU;                      // (O)
    for (Index gi = ch.chunk_groups_begin(c); gi < ch.chunk_groups_end(c); ++gi) {
      const Index b0 = ch.group_begin(gi), n = ch.group_len(gi);
      for (Index e = 0; e < n; ++e) {
        const T* dy = dout + (b0 + e) * O * P;
        bool done = false;
#ifdef __AVX512F__
        if constexpr (std::is_same_v<T, float>)
          if (wino::fits_window(Wo, 1)) {
            for (Index o = 0; o < O; ++o) wino::output_adjoint_window(m + o * 16 * ld + e * Tn, ld, dy + o * P, Ho, Wo);
            done = true;
          }
#endif
        if (!done) {
          to_phase_planes(scratch, dy, bg);  // (O, 4, T): the four phases of each channel
          for (Index o = 0; o < O; ++o)
            wino::output_transform_adjoint(m + o * 16 * ld + e * Tn, scratch + o * 4 * Tn, ld, Tn);
        }
        for (Index o = 0; o < O; ++o) db[o] += T(sum8(P, [dy, o, P](Index q) { return double(dy[o * P + q]); }));
      }
      wino::tiles(col, ld, inp + b0 * I, n, g, scratch);  // V (C, 16, n·T)
      for (Index xi = 0; xi < 16; ++xi)  // dU_ξ (O, C) += dM_ξ (O, n·T) · V_ξᵀ
        gemm_dots<T>(O, C, n * Tn, m + xi * ld, 16 * ld, col + xi * ld, 16 * ld, dU + xi * O * C, C);
      if (dinp)
        wino::forward_group<true>(dinp + b0 * I, dout + b0 * O * P, Uf, static_cast<const T*>(nullptr), n, gd, C,
                                  col, m, ld, scratch);
    }
  }
  if (dweight) {
    std::vector<T>& sum = w.flipped;  // dU summed over the chunks in chunk order
    sum.assign(size_t(NU), T(0));
    add_partials(sum.data(), part, ch.count, NU, NP);
    wino::weight_transform_adjoint(dweight, sum.data(), O, C);
  }
  if (dbias) add_partials(dbias, part + NU, ch.count, O, NP);
}

}  // namespace elbokit
