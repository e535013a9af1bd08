// elbokit/winograd_s2.hpp: Conv2d and ConvTranspose2d with a 4×4 kernel at stride 2 (the conv VAE's
// and conv HVAE's layers) by Winograd's F(2×2, 2×2) on the input's phase planes. Included by
// conv.hpp, whose conv2d_* and conv_transpose2d_* take this path when winograd_s2_auto(g) holds.
//
// Phases. Cut the zero-padded input xp (C, H + 2p, W + 2p) into its stride-2 phase planes
// P_c' (Hq, Wq), c' = (c·2 + a)·2 + b, P_c'[r, q] = xp[c, 2r + a, 2q + b], and the kernel w (O, C, 4, 4)
// into 2×2 sub-kernels w'_{o,c'}[i, j] = w[o, c, 2i + a, 2j + b]. Then the stride-2 convolution is a
// stride-1 2×2 convolution over C' = 4C channels:
//   y[o, oh, ow] = Σ_{c', i, j} w'_{o,c'}[i, j] · P_c'[oh + i, ow + j],   Ho = Hq − 1, Wo = Wq − 1.
// F(2×2, 2×2) computes each 2×2 block of it from the 3×3 tile d of P at (2ty, 2tx) with 9 products
// instead of 16 (Lavin & Gray 2016), with
//   Bᵀ = [1 −1 0; 0 1 0; 0 −1 1],  G = [1 0; 1 1; 0 1],  Aᵀ = [1 1 0; 0 1 1]:
//   V_ξ (C', n·T) = (Bᵀ d B)_ξ,  U_ξ (O, C') = (G w' Gᵀ)_ξ,  M_ξ = U_ξ · V_ξ,  y = Aᵀ M A,
// ξ = 3i + j, T = Th·Tw tiles an image, Th = ⌈Ho/2⌉ (an odd Ho reads one zero row past the planes
// and drops the tiles' last output row). Every coefficient is 0 or ±1: the transforms only add,
// and the products shrink 16/9 ≈ 1.8× (1.36× on a 7×7 output, whose 4×4 tiles cover 8×8).
//
// Three operations, each the adjoint or the derivative of another:
//   forward   y = conv(x):          V of x, M = U·V, y = Aᵀ M A;
//   adjoint   dx += convᵀ(dy):       dM = A dy Aᵀ, dV = Uᵀ dM, dx += the tiles B dV Bᵀ summed into P;
//   weights   dU += dM · Vᵀ, dw += Gᵀ dU G per phase (the adjoint of U = G w' Gᵀ).
// Conv2d's backward is (weights, adjoint); ConvTranspose2d's forward is the adjoint (its weight
// (C_in, C_out, 4, 4) is the Conv2d's (O, C, 4, 4) from its output to its input), its backward is
// (weights with the roles of x and dy exchanged, forward). Layout as winograd.hpp: V (C', 9, ld),
// V_ξ the rows c'·9 + ξ; M (O, 9, ld). The planes are stored split once more into their even and
// odd columns, E_r[t] = P[r, 2t], O_r[t] = P[r, 2t + 1], so that tile tx reads E[tx], O[tx],
// E[tx + 1] and every transform loop runs over contiguous entries. Deterministic as conv.hpp's layers.
//
// Two implementations of the transforms: float32 AVX-512 paths for padded rows of at most 32
// entries (the ones conv.hpp's dispatch takes, winograd_s2_auto), and portable ones for any type and
// width, which measured no faster than im2col and run only when asked for by name
// (algorithm="winograd" in the bindings): they are the float64 form of the same algorithm, against
// which the tests check it (finite differences, im2col, torch).
#pragma once

#include <algorithm>
#include <type_traits>
#include <vector>

namespace elbokit {

// Where F(2×2, 2×2) can run: a 4×4 kernel at stride 2 on an even padded image (then Ho = Hq − 1).
inline bool winograd_s2_applies(const ConvGeom& g) {
  return g.k == 4 && g.stride == 2 && (g.H + 2 * g.pad) % 2 == 0 && (g.W + 2 * g.pad) % 2 == 0 &&
         g.H + 2 * g.pad >= 4 && g.W + 2 * g.pad >= 4;
}
// Where conv.hpp's dispatch takes it: where the float32 AVX-512 fast paths run (padded rows of at
// most 32 entries), with at least 8 input channels (products of depth 4C ≥ 32; a 1-channel image's
// first layer runs faster as im2col's one product of depth 16). Elsewhere (float64, wider images)
// the portable transforms made it no faster than im2col (one thread, batch 128, 32 -> 64 channels at
// 14×14, float64: forward 7.6 against 7.5 ms, backward 22.1 against 15.3 ms).
template <class T>
bool winograd_s2_auto(const ConvGeom& g) {
#ifdef __AVX512F__
  return std::is_same_v<T, float> && winograd_s2_applies(g) && g.C >= 8 && g.W + 2 * g.pad <= 32;
#else
  (void)g;
  return false;
#endif
}

namespace wino2 {

// The sizes of the tiling of geometry g (winograd_s2_applies(g)).
struct Geom {
  Index C4 = 0, Hq = 0, Wq = 0, Ho = 0, Wo = 0, Th = 0, Tw = 0, T = 0, L = 0, R = 0;
  explicit Geom(const ConvGeom& g) {
    C4 = 4 * g.C;
    Hq = (g.H + 2 * g.pad) / 2;
    Wq = (g.W + 2 * g.pad) / 2;
    Ho = Hq - 1;
    Wo = Wq - 1;
    Th = (Ho + 1) / 2;
    Tw = (Wo + 1) / 2;
    T = Th * Tw;
    L = Tw + 16;  // an E or O row: Tw + 1 entries read, the rest a packet of slack
    R = 2 * Th + 1;  // plane rows the tiles read
  }
  Index planes() const { return C4 * R * 2 * L; }  // (C', R, 2, L)
  Index row(Index c4, Index r, Index odd) const { return ((c4 * R + r) * 2 + odd) * L; }
};

// Scratch entries per thread: the split planes, one padded image row, its two column phases, and
// four rows of per-tile values.
inline Index scratch_size(const ConvGeom& g) {
  const Geom s(g);
  return s.planes() + 4 * s.L + 64 + 2 * (2 * s.L + 64) + 4 * s.L;
}

// U (9, O, C') = G w' Gᵀ for every (o, c'), w (O, C, 4, 4).
template <class T>
void weight_transform(T* U, const T* w, Index O, Index C) {
  const Index C4 = 4 * C;
#pragma omp parallel for schedule(static) if (O * C >= 1024)
  for (Index o = 0; o < O; ++o)
    for (Index c = 0; c < C; ++c)
      for (Index a = 0; a < 2; ++a)
        for (Index b = 0; b < 2; ++b) {
          const T* k = w + (o * C + c) * 16;
          const T w00 = k[a * 4 + b], w01 = k[a * 4 + 2 + b], w10 = k[(2 + a) * 4 + b], w11 = k[(2 + a) * 4 + 2 + b];
          const T t[3][2] = {{w00, w01}, {w00 + w10, w01 + w11}, {w10, w11}};  // G w'
          const Index c4 = (c * 2 + a) * 2 + b;
          for (int i = 0; i < 3; ++i) {
            const T u[3] = {t[i][0], t[i][0] + t[i][1], t[i][1]};  // (G w') Gᵀ
            for (int j = 0; j < 3; ++j) U[((3 * i + j) * O + o) * C4 + c4] = u[j];
          }
        }
}

// dw (O, C, 4, 4) += Gᵀ dU G per phase, dU (9, O, C'): the adjoint of weight_transform.
template <class T>
void weight_transform_adjoint(T* dw, const T* dU, Index O, Index C) {
  const Index C4 = 4 * C;
#pragma omp parallel for schedule(static) if (O * C >= 1024)
  for (Index o = 0; o < O; ++o)
    for (Index c = 0; c < C; ++c)
      for (Index a = 0; a < 2; ++a)
        for (Index b = 0; b < 2; ++b) {
          const Index c4 = (c * 2 + a) * 2 + b;
          T m[3][3];
          for (int x = 0; x < 9; ++x) m[x / 3][x % 3] = dU[(Index(x) * O + o) * C4 + c4];
          T t[3][2];  // dU G
          for (int i = 0; i < 3; ++i) {
            t[i][0] = m[i][0] + m[i][1];
            t[i][1] = m[i][1] + m[i][2];
          }
          T* k = dw + (o * C + c) * 16;
          k[a * 4 + b] += t[0][0] + t[1][0];
          k[a * 4 + 2 + b] += t[0][1] + t[1][1];
          k[(2 + a) * 4 + b] += t[1][0] + t[2][0];
          k[(2 + a) * 4 + 2 + b] += t[1][1] + t[2][1];
        }
}

// The split planes (C', R, 2, L) of one image x (C, H, W): E/O rows of P_c' (zero past xp's edge).
template <class T>
void to_planes(T* sp, const T* x, const ConvGeom& g, const Geom& s, T* scratch) {
  const Index p = g.pad, L = s.L;
  T* pr = scratch;               // (4L + 64): one zero-padded image row
  T* ev = pr + 4 * L + 64;       // (2L + 64): its even columns
  T* od = ev + 2 * L + 64;       // (2L + 64): its odd columns
  std::fill(pr, pr + 4 * L + 64, T(0));
  std::fill(ev, ev + 2 * (2 * L + 64), T(0));
  for (Index c = 0; c < g.C; ++c)
    for (Index rr = 0; rr < 2 * s.R; ++rr) {  // padded row rr = 2r + a
      const Index r = rr / 2, a = rr % 2, ih = rr - p;
      T* e0 = sp + s.row((c * 2 + a) * 2, r, 0);  // phase (a, 0): E, O; phase (a, 1) follows at +2RL
      T* e1 = sp + s.row((c * 2 + a) * 2 + 1, r, 0);
      if (ih < 0 || ih >= g.H) {
        std::fill(e0, e0 + 2 * L, T(0));
        std::fill(e1, e1 + 2 * L, T(0));
        continue;
      }
      copy_run(pr + p, x + (c * g.H + ih) * g.W, g.W);  // the padding around it stays 0
      deinterleave2(ev, od, pr, 2 * L);                 // xp[2u], xp[2u + 1]
      deinterleave2(e0, e0 + L, ev, L);                 // P_(a,0)[r, 2t] = xp[4t], P_(a,0)[r, 2t + 1] = xp[4t + 2]
      deinterleave2(e1, e1 + L, od, L);                 // phase (a, 1): xp[4t + 1], xp[4t + 3]
    }
}

// x (C, H, W) += the entries of the split planes that lie inside the image: the adjoint of to_planes.
template <class T>
void from_planes(T* x, const T* sp, const ConvGeom& g, const Geom& s, T* scratch) {
  const Index p = g.pad, L = s.L;
  T* pr = scratch;
  T* ev = pr + 4 * L + 64;
  T* od = ev + 2 * L + 64;
  for (Index c = 0; c < g.C; ++c)
    for (Index ih = 0; ih < g.H; ++ih) {
      const Index rr = ih + p, r = rr / 2, a = rr % 2;
      const T* e0 = sp + s.row((c * 2 + a) * 2, r, 0);
      const T* e1 = sp + s.row((c * 2 + a) * 2 + 1, r, 0);
      wino::interleave2<false>(ev, e0, e0 + L, L);
      wino::interleave2<false>(od, e1, e1 + L, L);
      wino::interleave2<false>(pr, ev, od, 2 * L);
      add_run(x + (c * g.H + ih) * g.W, pr + p, g.W);
    }
}

// V (C', 9, ld), image e's tiles at columns col0 …: v = Bᵀ d B of every tile of the split planes.
template <class T>
void input_transform(T* V, Index ld, Index col0, const T* sp, const Geom& s) {
  const Index Tw = s.Tw, L = s.L;
  for (Index c4 = 0; c4 < s.C4; ++c4)
    for (Index ty = 0; ty < s.Th; ++ty) {
      const T* E[3];
      const T* O[3];
      for (int i = 0; i < 3; ++i) {
        E[i] = sp + s.row(c4, 2 * ty + i, 0);
        O[i] = E[i] + L;
      }
      T* v = V + c4 * 9 * ld + col0 + ty * Tw;
      for (Index t = 0; t < Tw; ++t) {
        T d[3][3];
        for (int i = 0; i < 3; ++i) {
          d[i][0] = E[i][t];
          d[i][1] = O[i][t];
          d[i][2] = E[i][t + 1];
        }
        for (int j = 0; j < 3; ++j) {  // rows: Bᵀ d
          d[0][j] -= d[1][j];
          d[2][j] -= d[1][j];
        }
        for (int i = 0; i < 3; ++i) {  // columns: (Bᵀ d) B
          v[(3 * i) * ld + t] = d[i][0] - d[i][1];
          v[(3 * i + 1) * ld + t] = d[i][1];
          v[(3 * i + 2) * ld + t] = d[i][2] - d[i][1];
        }
      }
    }
}

// The adjoint of input_transform: the split planes sp += the tiles B dv Bᵀ at their places (sp
// zeroed by the caller; tiles overlap by one row and one column).
template <class T>
void input_transform_adjoint(T* sp, const T* dV, Index ld, Index col0, const Geom& s) {
  const Index Tw = s.Tw, L = s.L;
  for (Index c4 = 0; c4 < s.C4; ++c4)
    for (Index ty = 0; ty < s.Th; ++ty) {
      const T* v = dV + c4 * 9 * ld + col0 + ty * Tw;
      for (int k = 0; k < 3; ++k) {
        T* E = sp + s.row(c4, 2 * ty + k, 0);
        T* O = E + L;
        // row k of B dv: u[k][j] = dv[0][j] (k = 0), −dv[0][j] + dv[1][j] − dv[2][j] (k = 1), dv[2][j] (k = 2);
        // then columns: dd[k][0] = u0, dd[k][1] = −u0 + u1 − u2, dd[k][2] = u2
        auto u = [&](Index t, int j) {
          const T v0 = v[j * ld + t], v1 = v[(3 + j) * ld + t], v2 = v[(6 + j) * ld + t];
          return k == 0 ? v0 : k == 2 ? v2 : v1 - v0 - v2;
        };
        for (Index t = 0; t < Tw; ++t) {
          const T u0 = u(t, 0), u1 = u(t, 1), u2 = u(t, 2);
          E[t] += u0;
          O[t] += u1 - u0 - u2;
        }
        for (Index t = 0; t < Tw; ++t) E[t + 1] += u(t, 2);
      }
    }
}

// Output transform of one channel: y (Ho, Wo) = (add: +=) Aᵀ M A + bias, m its 9 rows (stride ld).
// rows: scratch of 4·L entries.
template <bool add, class T>
void output_transform(T* y, const T* m, Index ld, const Geom& s, T bias, T* rows) {
  const Index Tw = s.Tw;
  T* r0 = rows;      // (2Tw): output row 2ty, tile-interleaved
  T* r1 = rows + s.L * 2;
  for (Index ty = 0; ty < s.Th; ++ty) {
    const T* mt = m + ty * Tw;
    for (Index t = 0; t < Tw; ++t) {
      T s0[3], s1[3];
      for (int j = 0; j < 3; ++j) {
        s0[j] = mt[j * ld + t] + mt[(3 + j) * ld + t];
        s1[j] = mt[(3 + j) * ld + t] + mt[(6 + j) * ld + t];
      }
      r0[2 * t] = s0[0] + s0[1] + bias;
      r0[2 * t + 1] = s0[1] + s0[2] + bias;
      r1[2 * t] = s1[0] + s1[1] + bias;
      r1[2 * t + 1] = s1[1] + s1[2] + bias;
    }
    for (Index a = 0; a < 2 && 2 * ty + a < s.Ho; ++a) {
      T* out = y + (2 * ty + a) * s.Wo;
      const T* src = a ? r1 : r0;
      if constexpr (add)
        add_run(out, src, s.Wo);
      else
        copy_run(out, src, s.Wo);
    }
  }
}

// dM = A dy Aᵀ of one channel's dy (Ho, Wo) (zero past its edge): dm's 9 rows (stride ld).
// rows: scratch of 4·L entries.
template <class T>
void output_transform_adjoint(T* dm, Index ld, const T* dy, const Geom& s, T* rows) {
  const Index Tw = s.Tw, L = s.L;
  T* e0 = rows;  // dy[2ty][2t], dy[2ty][2t + 1], dy[2ty + 1][2t], dy[2ty + 1][2t + 1]
  T* o0 = e0 + L;
  T* e1 = o0 + L;
  T* o1 = e1 + L;
  for (Index ty = 0; ty < s.Th; ++ty) {
    for (Index a = 0; a < 2; ++a) {
      T* e = a ? e1 : e0;
      T* o = a ? o1 : o0;
      const Index oh = 2 * ty + a;
      if (oh >= s.Ho) {
        std::fill(e, e + Tw, T(0));
        std::fill(o, o + Tw, T(0));
        continue;
      }
      const T* row = dy + oh * s.Wo;
      for (Index t = 0; t < Tw; ++t) {
        e[t] = row[2 * t];
        o[t] = 2 * t + 1 < s.Wo ? row[2 * t + 1] : T(0);
      }
    }
    T* d = dm + ty * Tw;
    for (Index t = 0; t < Tw; ++t) {
      const T r[3][2] = {{e0[t], o0[t]}, {e0[t] + e1[t], o0[t] + o1[t]}, {e1[t], o1[t]}};  // A dy
      for (int i = 0; i < 3; ++i) {  // (A dy) Aᵀ
        d[(3 * i) * ld + t] = r[i][0];
        d[(3 * i + 1) * ld + t] = r[i][0] + r[i][1];
        d[(3 * i + 2) * ld + t] = r[i][1];
      }
    }
  }
}

#ifdef __AVX512F__
// Fast paths (float, AVX-512) for images whose padded rows fit one 32-lane window (W + 2p ≤ 32: at
// most 8 tiles a row, the lanes of one packet): each image row is loaded once per use as two packets
// and cut into its four column phases Q_ζ[u] = xp[4u + ζ] in registers, with no planes. Stores are
// whole packets (tiles_window's rule, winograd.hpp): lanes past a tile row's Tw tiles fall on the
// next tile row or image (written after) or in the 16 columns of slack past the group (ld_of).
inline bool fits_window(const ConvGeom& g) { return g.W + 2 * g.pad <= 32; }

// The padded row xp[ρ] (lanes p … p + W − 1 of 32; row = nullptr: zeros) as its column phases
// q[ζ] = Q_ζ, ζ < 4, and q[4 + b] = Q_b shifted, Q_b[u + 1] (lane 7: column 32 + b, outside: 0).
inline void row_quarters(const float* row, Index W, Index p, __m512 q[6]) {
  if (!row) {
    for (int z = 0; z < 6; ++z) q[z] = _mm512_setzero_ps();
    return;
  }
  const uint32_t m = uint32_t(((uint64_t(1) << (p + W)) - 1) & ~((uint64_t(1) << p) - 1));
  const __m512 lo = _mm512_maskz_loadu_ps(__mmask16(m & 0xffff), row - p);
  const __m512 hi = _mm512_maskz_loadu_ps(__mmask16(m >> 16), row - p + 16);
  for (int z = 0; z < 4; ++z) {
    const __m512i idx = _mm512_add_epi32(_mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 0, 0, 0, 0, 0, 0, 0),
                                         _mm512_set1_epi32(z));
    q[z] = _mm512_maskz_permutex2var_ps(0x00ff, lo, idx, hi);
  }
  for (int b = 0; b < 2; ++b) {
    const __m512i idx = _mm512_add_epi32(_mm512_setr_epi32(4, 8, 12, 16, 20, 24, 28, 0, 0, 0, 0, 0, 0, 0, 0, 0),
                                         _mm512_set1_epi32(b));
    q[4 + b] = _mm512_maskz_permutex2var_ps(0x007f, lo, idx, hi);
  }
}

// V of one image x (C, H, W), fits_window(g), its tiles at columns col0 … of V (C', 9, ld).
inline void tiles_window(float* V, Index ld, Index col0, const float* x, const ConvGeom& g, const Geom& s) {
  const Index p = g.pad;
  for (Index c = 0; c < g.C; ++c) {
    const float* xc = x + c * g.H * g.W;
    auto row = [&](Index rho) { return rho - p >= 0 && rho - p < g.H ? xc + (rho - p) * g.W : nullptr; };
    for (Index a = 0; a < 2; ++a) {
      __m512 q[3][6];  // rows 4ty + 2i + a, i < 3; row 4ty + 4 + a is the next tile row's first
      row_quarters(row(a), g.W, p, q[0]);
      for (Index ty = 0; ty < s.Th; ++ty) {
        if (a == 0) wino::prefetch_ahead(xc + (4 * ty + wino::kPrefetchRows) * g.W, 4 * g.W);
        if (ty > 0)
          for (int z = 0; z < 6; ++z) q[0][z] = q[2][z];
        for (int i = 1; i < 3; ++i) row_quarters(row(4 * ty + 2 * i + a), g.W, p, q[i]);
        for (Index b = 0; b < 2; ++b) {
          __m512 d[3][3];
          for (int i = 0; i < 3; ++i) {
            d[i][0] = q[i][b];
            d[i][1] = q[i][2 + b];
            d[i][2] = q[i][4 + b];
          }
          for (int j = 0; j < 3; ++j) {  // Bᵀ d
            d[0][j] = d[0][j] - d[1][j];
            d[2][j] = d[2][j] - d[1][j];
          }
          float* v = V + ((c * 2 + a) * 2 + b) * 9 * ld + col0 + ty * s.Tw;
          for (int i = 0; i < 3; ++i) {  // (Bᵀ d) B
            _mm512_storeu_ps(v + (3 * i) * ld, d[i][0] - d[i][1]);
            _mm512_storeu_ps(v + (3 * i + 1) * ld, d[i][1]);
            _mm512_storeu_ps(v + (3 * i + 2) * ld, d[i][2] - d[i][1]);
          }
        }
      }
    }
  }
}

// x (C, H, W) += the tiles B dV Bᵀ of one image (columns col0 … of dV (C', 9, ld)), fits_window(g):
// the adjoint of tiles_window, summed per channel in a zero-padded 32-column image (scratch,
// (4Th + 2)·32 entries), then its inside added to x.
inline void untiles_window(float* x, const float* dV, Index ld, Index col0, const ConvGeom& g, const Geom& s,
                           float* pad) {
  const Index p = g.pad, rows = 4 * s.Th + 2;
  const __mmask16 mt = wino::lanes16(s.Tw);
  const __m512i up = _mm512_setr_epi32(0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14);
  const __m512i i01 = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i ilo = _mm512_setr_epi32(0, 1, 16, 17, 2, 3, 18, 19, 4, 5, 20, 21, 6, 7, 22, 23);
  const __m512i ihi = _mm512_setr_epi32(8, 9, 24, 25, 10, 11, 26, 27, 12, 13, 28, 29, 14, 15, 30, 31);
  for (Index c = 0; c < g.C; ++c) {
    wino::prefetch_ahead(x + (c + 1) * g.H * g.W, g.H * g.W);  // the next channel's rows, added to below
    std::fill(pad, pad + rows * 32, 0.0f);
    for (Index ty = 0; ty < s.Th; ++ty)
      for (Index a = 0; a < 2; ++a) {
        __m512 Q[3][4];  // per row 4ty + 2k + a: its column phases' sums
        for (Index b = 0; b < 2; ++b) {
          const float* v = dV + ((c * 2 + a) * 2 + b) * 9 * ld + col0 + ty * s.Tw;
          __m512 u[3][3];
          for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) u[i][j] = _mm512_maskz_loadu_ps(mt, v + (3 * i + j) * ld);
          for (int j = 0; j < 3; ++j) u[1][j] = u[1][j] - u[0][j] - u[2][j];  // B dv: rows
          for (int k = 0; k < 3; ++k) {                                       // (B dv) Bᵀ: columns
            const __m512 d0 = u[k][0], d1 = u[k][1] - u[k][0] - u[k][2], d2 = u[k][2];
            Q[k][b] = d0 + _mm512_maskz_permutexvar_ps(0xfffe, up, d2);  // column 4u + b: tiles u and u − 1
            Q[k][2 + b] = d1;                                             // column 4u + 2 + b
          }
        }
        for (int k = 0; k < 3; ++k) {
          const __m512 p01 = _mm512_permutex2var_ps(Q[k][0], i01, Q[k][1]);
          const __m512 p23 = _mm512_permutex2var_ps(Q[k][2], i01, Q[k][3]);
          float* r = pad + (4 * ty + 2 * k + a) * 32;
          _mm512_storeu_ps(r, _mm512_loadu_ps(r) + _mm512_permutex2var_ps(p01, ilo, p23));
          _mm512_storeu_ps(r + 16, _mm512_loadu_ps(r + 16) + _mm512_permutex2var_ps(p01, ihi, p23));
        }
      }
    for (Index ih = 0; ih < g.H; ++ih) add_run(x + (c * g.H + ih) * g.W, pad + (ih + p) * 32 + p, g.W);
  }
}

// One channel's y (Ho, Wo) = (add: +=) Aᵀ M A + bias from its 9 rows m (stride ld), Wo ≤ 16.
template <bool add>
inline void output_window(float* y, const float* m, Index ld, const Geom& s, float bias) {
  const __mmask16 mo = wino::lanes16(s.Wo);
  const __m512i i01 = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512 bv = _mm512_set1_ps(bias);
  for (Index ty = 0; ty < s.Th; ++ty) {
    if constexpr (add) wino::prefetch_ahead(y + (2 * ty + wino::kPrefetchRows) * s.Wo, 2 * s.Wo);
    __m512 v[9];
    for (int xi = 0; xi < 9; ++xi) v[xi] = _mm512_loadu_ps(m + xi * ld + ty * s.Tw);  // lanes ≥ Tw unused
    for (Index a = 0; a < 2 && 2 * ty + a < s.Ho; ++a) {
      __m512 t[3];
      for (int j = 0; j < 3; ++j) t[j] = v[3 * a + j] + v[3 * a + 3 + j];  // rows a, a + 1 of M
      const __m512 r = _mm512_permutex2var_ps(t[0] + t[1] + bv, i01, t[1] + t[2] + bv);
      float* out = y + (2 * ty + a) * s.Wo;
      _mm512_mask_storeu_ps(out, mo, add ? r + _mm512_maskz_loadu_ps(mo, out) : r);
    }
  }
}

// dM = A dy Aᵀ of one channel's dy (Ho, Wo), Wo ≤ 16: dm's 9 rows (stride ld), whole packets.
inline void output_adjoint_window(float* dm, Index ld, const float* dy, const Geom& s) {
  const __mmask16 mo = wino::lanes16(s.Wo);
  const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 0, 0, 0, 0, 0, 0, 0, 0);
  for (Index ty = 0; ty < s.Th; ++ty) {
    wino::prefetch_ahead(dy + (2 * ty + wino::kPrefetchRows) * s.Wo, 2 * s.Wo);
    __m512 e[2], o[2];
    for (Index a = 0; a < 2; ++a) {
      const __m512 r = 2 * ty + a < s.Ho ? _mm512_maskz_loadu_ps(mo, dy + (2 * ty + a) * s.Wo) : _mm512_setzero_ps();
      e[a] = _mm512_maskz_permutexvar_ps(0x00ff, ie, r);
      o[a] = _mm512_maskz_permutexvar_ps(0x00ff, io, r);
    }
    const __m512 r[3][2] = {{e[0], o[0]}, {e[0] + e[1], o[0] + o[1]}, {e[1], o[1]}};  // A dy
    float* d = dm + ty * s.Tw;
    for (int i = 0; i < 3; ++i) {  // (A dy) Aᵀ
      _mm512_storeu_ps(d + (3 * i) * ld, r[i][0]);
      _mm512_storeu_ps(d + (3 * i + 1) * ld, r[i][0] + r[i][1]);
      _mm512_storeu_ps(d + (3 * i + 2) * ld, r[i][1]);
    }
  }
}

// Packed paths for a 16 × 16 padded image (a 14 × 14 image with padding 1, the conv VAE's second
// layer; Ho = Wo = 7, Th = Tw = 4): an image's T = 16 tiles fill one packet, lane 4ty + tx, so that
// V's and M's rows are whole packets, stored once each (the window paths above use Tw = 4 of a
// packet's 16 lanes per tile row and store every packet four times over). The same arithmetic as
// the window paths in the same order: the results are bit for bit theirs.
inline bool packed16(const ConvGeom& g) { return g.W + 2 * g.pad == 16 && g.H + 2 * g.pad == 16; }
inline bool packed16(const Geom& s) { return s.Hq == 8 && s.Wq == 8; }
// The packed paths read (and add to) whole channels of activations written long before: each asks
// for the channel kPackedAhead ahead (the loads of x took half of tiles_packed's time without it).
constexpr Index kPackedAhead = 2;

namespace pk {
// rows r[k] (lane 4u + z) → g[z] (lane 4k + u) = r[k][4u + z]: the column phases of four rows.
inline void quarters(const __m512 r[4], __m512 g[4]) {
  const __m512i ia = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29);
  const __m512i ib = _mm512_add_epi32(ia, _mm512_set1_epi32(2));
  const __m512 a01 = _mm512_permutex2var_ps(r[0], ia, r[1]), b01 = _mm512_permutex2var_ps(r[0], ib, r[1]);
  const __m512 a23 = _mm512_permutex2var_ps(r[2], ia, r[3]), b23 = _mm512_permutex2var_ps(r[2], ib, r[3]);
  g[0] = _mm512_shuffle_f32x4(a01, a23, 0x44);
  g[1] = _mm512_shuffle_f32x4(a01, a23, 0xee);
  g[2] = _mm512_shuffle_f32x4(b01, b23, 0x44);
  g[3] = _mm512_shuffle_f32x4(b01, b23, 0xee);
}
// The inverse of quarters: g[z] (lane 4k + u) → r[k] (lane 4u + z).
inline void unquarters(const __m512 g[4], __m512 r[4]) {
  const __m512i i0 = _mm512_setr_epi32(0, 8, 16, 24, 1, 9, 17, 25, 2, 10, 18, 26, 3, 11, 19, 27);
  const __m512i i1 = _mm512_add_epi32(i0, _mm512_set1_epi32(4));
  const __m512 a01 = _mm512_shuffle_f32x4(g[0], g[1], 0x44), a23 = _mm512_shuffle_f32x4(g[0], g[1], 0xee);
  const __m512 b01 = _mm512_shuffle_f32x4(g[2], g[3], 0x44), b23 = _mm512_shuffle_f32x4(g[2], g[3], 0xee);
  r[0] = _mm512_permutex2var_ps(a01, i0, b01);
  r[1] = _mm512_permutex2var_ps(a01, i1, b01);
  r[2] = _mm512_permutex2var_ps(a23, i0, b23);
  r[3] = _mm512_permutex2var_ps(a23, i1, b23);
}
// Lanes p … p + W − 1 of a padded row (W + 2p = 16): the image row's entries.
inline __mmask16 row_lanes(const ConvGeom& g) { return __mmask16(((1u << g.W) - 1) << g.pad); }
// The 14 entries of output rows 2ty, 2ty + 1 of a 7 × 7 channel at 14ty (ty = 3: row 6 alone).
inline __mmask16 pair_lanes(int ty) { return ty < 3 ? __mmask16(0x3fff) : __mmask16(0x7f); }
// Lane 4k + u ← lane 4k + u + 1, zero at u = 3 (the next tile column; past the 16 columns: 0).
inline __m512 next_col(__m512 v) {
  const __m512i i = _mm512_setr_epi32(1, 2, 3, 0, 5, 6, 7, 0, 9, 10, 11, 0, 13, 14, 15, 0);
  return _mm512_maskz_permutexvar_ps(0x7777, i, v);
}
// The adjoint of next_col: lane 4k + u ← lane 4k + u − 1, zero at u = 0.
inline __m512 prev_col(__m512 v) {
  const __m512i i = _mm512_setr_epi32(0, 0, 1, 2, 0, 4, 5, 6, 0, 8, 9, 10, 0, 12, 13, 14);
  return _mm512_maskz_permutexvar_ps(0xeeee, i, v);
}
// Lane 4k + u ← lane 4(k + 1) + u, zero at k = 3 (the next tile row), and its adjoint.
inline __m512 next_row(__m512 v) {
  return _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_setzero_si512(), _mm512_castps_si512(v), 4));
}
inline __m512 prev_row(__m512 v) {
  return _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(v), _mm512_setzero_si512(), 12));
}
}  // namespace pk

// tiles_window for packed16(g): V of one image, its 16 tiles at columns col0 … col0 + 15.
inline void tiles_packed(float* V, Index ld, Index col0, const float* x, const ConvGeom& g) {
  const Index p = g.pad, W = g.W;
  const __mmask16 m = pk::row_lanes(g);
  for (Index c = 0; c < g.C; ++c) {
    const float* xc = x + c * g.H * W;
    wino::prefetch_ahead(xc + kPackedAhead * g.H * W, g.H * W);
    for (Index a = 0; a < 2; ++a) {
      __m512 G[3][4], S[3][2];  // set i: rows 4k + 2i + a; G column phases, S = next_col(G_b)
      for (int i = 0; i < 2; ++i) {
        __m512 r[4];
        for (int k = 0; k < 4; ++k) {
          const Index ih = 4 * k + 2 * i + a - p;
          r[k] = ih >= 0 && ih < g.H ? _mm512_maskz_loadu_ps(m, xc + ih * W - p) : _mm512_setzero_ps();
        }
        pk::quarters(r, G[i]);
        for (int b = 0; b < 2; ++b) S[i][b] = pk::next_col(G[i][b]);
      }
      for (int z = 0; z < 4; ++z) G[2][z] = pk::next_row(G[0][z]);  // rows 4k + 4 + a: set 0 of tile row k + 1
      for (int b = 0; b < 2; ++b) S[2][b] = pk::next_row(S[0][b]);
      for (Index b = 0; b < 2; ++b) {
        __m512 d[3][3];
        for (int i = 0; i < 3; ++i) {
          d[i][0] = G[i][b];
          d[i][1] = G[i][2 + b];
          d[i][2] = S[i][b];
        }
        for (int j = 0; j < 3; ++j) {  // Bᵀ d
          d[0][j] = d[0][j] - d[1][j];
          d[2][j] = d[2][j] - d[1][j];
        }
        float* v = V + ((c * 2 + a) * 2 + b) * 9 * ld + col0;
        for (int i = 0; i < 3; ++i) {  // (Bᵀ d) B
          _mm512_storeu_ps(v + (3 * i) * ld, d[i][0] - d[i][1]);
          _mm512_storeu_ps(v + (3 * i + 1) * ld, d[i][1]);
          _mm512_storeu_ps(v + (3 * i + 2) * ld, d[i][2] - d[i][1]);
        }
      }
    }
  }
}

// untiles_window for packed16(g): x (C, H, W) += the tiles B dV Bᵀ of one image (columns col0 … of dV).
inline void untiles_packed(float* x, const float* dV, Index ld, Index col0, const ConvGeom& g) {
  const Index p = g.pad, W = g.W;
  const __mmask16 m = pk::row_lanes(g);
  for (Index c = 0; c < g.C; ++c) {
    float* xc = x + c * g.H * W;
    wino::prefetch_ahead(xc + kPackedAhead * g.H * W, g.H * W);
    for (Index a = 0; a < 2; ++a) {
      __m512 Q[3][4];  // per set k (rows 4ty + 2k + a): its column phases' sums, lane 4ty + u
      for (Index b = 0; b < 2; ++b) {
        const float* v = dV + ((c * 2 + a) * 2 + b) * 9 * ld + col0;
        __m512 u[3][3];
        for (int i = 0; i < 3; ++i)
          for (int j = 0; j < 3; ++j) u[i][j] = _mm512_loadu_ps(v + (3 * i + j) * ld);
        for (int j = 0; j < 3; ++j) u[1][j] = u[1][j] - u[0][j] - u[2][j];  // B dv: rows
        for (int k = 0; k < 3; ++k) {                                       // (B dv) Bᵀ: columns
          const __m512 d0 = u[k][0], d1 = u[k][1] - u[k][0] - u[k][2], d2 = u[k][2];
          Q[k][b] = d0 + pk::prev_col(d2);  // column 4u + b: tiles u and u − 1
          Q[k][2 + b] = d1;                 // column 4u + 2 + b
        }
      }
      for (int z = 0; z < 4; ++z) Q[0][z] = Q[0][z] + pk::prev_row(Q[2][z]);  // row 4ty + 4 + a is 4(ty + 1) + a
      for (int k = 0; k < 2; ++k) {
        __m512 r[4];
        pk::unquarters(Q[k], r);
        for (int t = 0; t < 4; ++t) {
          const Index ih = 4 * t + 2 * k + a - p;
          if (ih < 0 || ih >= g.H) continue;
          float* row = xc + ih * W - p;
          _mm512_mask_storeu_ps(row, m, _mm512_maskz_loadu_ps(m, row) + r[t]);
        }
      }
    }
  }
}

// output_window for packed16(s): one channel's y (7, 7) = (add: +=) Aᵀ M A + bias, m its 9 rows.
template <bool add>
inline void output_packed(float* y, const float* m, Index ld, float bias) {
  const __m512 bv = _mm512_set1_ps(bias);
  __m512 v[9];
  for (int xi = 0; xi < 9; ++xi) v[xi] = _mm512_loadu_ps(m + xi * ld);
  __m512 e[2], o[2];  // output rows 2ty + a: columns 2t (e) and 2t + 1 (o), lane 4ty + t
  for (Index a = 0; a < 2; ++a) {
    __m512 t[3];
    for (int j = 0; j < 3; ++j) t[j] = v[3 * a + j] + v[3 * a + 3 + j];  // rows a, a + 1 of M
    e[a] = t[0] + t[1] + bv;
    o[a] = t[1] + t[2] + bv;
  }
  // rows 2ty, 2ty + 1 are the 14 entries at 14ty: lane 7a + 2t ← e[a] (ty, t), 7a + 2t + 1 ← o[a]
  const __m512 x01 = _mm512_shuffle_f32x4(e[0], o[0], 0x44), x23 = _mm512_shuffle_f32x4(e[0], o[0], 0xee);
  const __m512 y01 = _mm512_shuffle_f32x4(e[1], o[1], 0x44), y23 = _mm512_shuffle_f32x4(e[1], o[1], 0xee);
  const __m512i i0 = _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 16, 24, 17, 25, 18, 26, 19, 0, 0);
  const __m512i i1 = _mm512_add_epi32(i0, _mm512_set1_epi32(4));
  const __m512 rows[4] = {_mm512_permutex2var_ps(x01, i0, y01), _mm512_permutex2var_ps(x01, i1, y01),
                          _mm512_permutex2var_ps(x23, i0, y23), _mm512_permutex2var_ps(x23, i1, y23)};
  for (int ty = 0; ty < 4; ++ty) {
    const __mmask16 mk = pk::pair_lanes(ty);
    float* out = y + 14 * ty;
    _mm512_mask_storeu_ps(out, mk, add ? rows[ty] + _mm512_maskz_loadu_ps(mk, out) : rows[ty]);
  }
}

// output_adjoint_window for packed16(s): dM = A dy Aᵀ of one channel's dy (7, 7), 9 whole packets.
inline void output_adjoint_packed(float* dm, Index ld, const float* dy) {
  __m512 L[4];  // L[ty] lane 7a + col = dy[2ty + a][col]
  for (int ty = 0; ty < 4; ++ty) L[ty] = _mm512_maskz_loadu_ps(pk::pair_lanes(ty), dy + 14 * ty);
  // [e0 of ty, e0 of ty + 1, o0 of ty, o0 of ty + 1] and the same of row a = 1; column 7 is 0
  const __m512i ix = _mm512_setr_epi32(0, 2, 4, 6, 16, 18, 20, 22, 1, 3, 5, 0, 17, 19, 21, 0);
  const __m512i iy = _mm512_add_epi32(ix, _mm512_set1_epi32(7));
  const __mmask16 mc = 0x77ff;
  const __m512 x01 = _mm512_maskz_permutex2var_ps(mc, L[0], ix, L[1]), x23 = _mm512_maskz_permutex2var_ps(mc, L[2], ix, L[3]);
  const __m512 y01 = _mm512_maskz_permutex2var_ps(mc, L[0], iy, L[1]), y23 = _mm512_maskz_permutex2var_ps(mc, L[2], iy, L[3]);
  const __m512 e0 = _mm512_shuffle_f32x4(x01, x23, 0x44), o0 = _mm512_shuffle_f32x4(x01, x23, 0xee);
  const __m512 e1 = _mm512_shuffle_f32x4(y01, y23, 0x44), o1 = _mm512_shuffle_f32x4(y01, y23, 0xee);
  const __m512 r[3][2] = {{e0, o0}, {e0 + e1, o0 + o1}, {e1, o1}};  // A dy
  for (int i = 0; i < 3; ++i) {  // (A dy) Aᵀ
    _mm512_storeu_ps(dm + (3 * i) * ld, r[i][0]);
    _mm512_storeu_ps(dm + (3 * i + 1) * ld, r[i][0] + r[i][1]);
    _mm512_storeu_ps(dm + (3 * i + 2) * ld, r[i][1]);
  }
}
#endif

// The per-thread buffers of one group: V (C', 9, ld), M (O, 9, ld) and the scratch.
template <class T>
struct Bufs {
  T* V;
  T* M;
  T* sp;       // the split planes
  T* scratch;  // to_planes / from_planes rows, then the transforms' rows
};
template <class T>
Bufs<T> bufs(ConvWork<T>& w, const Geom& s) {
  T* sc = w.planes();
  return Bufs<T>{w.col(), w.buf(), sc, sc + s.planes()};
}
// Sizes for ConvWork::ensure_cols: the group's columns ld, O output channels.
inline Index ld_of(const Chunks& ch, const Geom& s) { return ch.nb * s.T + 16; }

// The buffers of a call on B images of geometry g with O output channels (ensure_cols), and U (9, O,
// C') = the transformed weight (O, C, 4, 4) in w.wino; returns U.
template <class T>
const T* prepare(ConvWork<T>& w, const T* weight, const ConvGeom& g, const Geom& s, Index ld, Index O) {
  w.ensure_cols(9 * s.C4 * ld, 9 * O * ld, scratch_size(g));
  w.wino.resize(size_t(9 * O * s.C4));
  weight_transform(w.wino.data(), weight, O, g.C);
  return w.wino.data();
}

// V of n images x (n, C, H, W) into b.V.
template <class T>
void tiles(const Bufs<T>& b, Index ld, const T* x, Index n, const ConvGeom& g, const Geom& s) {
#ifdef __AVX512F__
  if constexpr (std::is_same_v<T, float>)
    if (fits_window(g)) {
      if (packed16(g))
        for (Index e = 0; e < n; ++e) tiles_packed(b.V, ld, e * s.T, x + e * g.in_size(), g);
      else
        for (Index e = 0; e < n; ++e) tiles_window(b.V, ld, e * s.T, x + e * g.in_size(), g, s);
      return;
    }
#endif
  for (Index e = 0; e < n; ++e) {
    to_planes(b.sp, x + e * g.in_size(), g, s, b.scratch);
    input_transform(b.V, ld, e * s.T, b.sp, s);
  }
}

// dM of n images' dy (n, O, Ho, Wo) into b.M.
template <class T>
void dtiles(const Bufs<T>& b, Index ld, const T* dy, Index n, Index O, const Geom& s) {
  const Index P = s.Ho * s.Wo;
#ifdef __AVX512F__
  if constexpr (std::is_same_v<T, float>)
    if (s.Wo <= 16) {
      for (Index e = 0; e < n; ++e)
        for (Index o = 0; o < O; ++o) {
          float* dm = b.M + o * 9 * ld + e * s.T;
          if (packed16(s)) {
            wino::prefetch_ahead(dy + (e * O + o + 4) * P, P);
            output_adjoint_packed(dm, ld, dy + (e * O + o) * P);
          } else
            output_adjoint_window(dm, ld, dy + (e * O + o) * P, s);
        }
      return;
    }
#endif
  for (Index e = 0; e < n; ++e)
    for (Index o = 0; o < O; ++o)
      output_transform_adjoint(b.M + o * 9 * ld + e * s.T, ld, dy + (e * O + o) * P, s, b.scratch);
}

// Forward of n images from V (in b.V): M = U·V, then y_e (O, Ho, Wo) = (add: +=) Aᵀ M A + bias.
template <bool add, class T>
void forward_products(T* y, const T* U, const T* bias, const Bufs<T>& b, Index ld, Index n, Index O, const Geom& s) {
  const Index C4 = s.C4, P = s.Ho * s.Wo;
  for (Index xi = 0; xi < 9; ++xi)  // M_ξ (O, n·T) = U_ξ (O, C') · V_ξ (C', n·T)
    gemm_rows<T>(false, O, n * s.T, C4, U + xi * O * C4, C4, b.V + xi * ld, 9 * ld, T(0), b.M + xi * ld, 9 * ld);
#ifdef __AVX512F__
  if constexpr (std::is_same_v<T, float>)
    if (s.Wo <= 16) {
      for (Index e = 0; e < n; ++e)
        for (Index o = 0; o < O; ++o) {
          float* ye = y + (e * O + o) * P;
          const float* m = b.M + o * 9 * ld + e * s.T;
          if (packed16(s)) {
            if constexpr (add) wino::prefetch_ahead(ye + 4 * P, P);
            output_packed<add>(ye, m, ld, bias ? bias[o] : T(0));
          } else
            output_window<add>(ye, m, ld, s, bias ? bias[o] : T(0));
        }
      return;
    }
#endif
  for (Index e = 0; e < n; ++e)
    for (Index o = 0; o < O; ++o)
      output_transform<add>(y + (e * O + o) * P, b.M + o * 9 * ld + e * s.T, ld, s, bias ? bias[o] : T(0),
                            b.scratch);
}

// Adjoint of n images from dM (in b.M): dV = Uᵀ dM (into b.V), then x_e (C, H, W) += its tiles.
template <class T>
void adjoint_products(T* x, const T* U, const Bufs<T>& b, Index ld, Index n, Index O, const ConvGeom& g,
                      const Geom& s) {
  const Index C4 = s.C4;
  for (Index xi = 0; xi < 9; ++xi)  // dV_ξ (C', n·T) = U_ξᵀ (C', O) · dM_ξ (O, n·T)
    gemm_rows<T>(true, C4, n * s.T, O, U + xi * O * C4, C4, b.M + xi * ld, 9 * ld, T(0), b.V + xi * ld, 9 * ld);
#ifdef __AVX512F__
  if constexpr (std::is_same_v<T, float>)
    if (fits_window(g)) {
      if (packed16(g))
        for (Index e = 0; e < n; ++e) untiles_packed(x + e * g.in_size(), b.V, ld, e * s.T, g);
      else
        for (Index e = 0; e < n; ++e) untiles_window(x + e * g.in_size(), b.V, ld, e * s.T, g, s, b.sp);
      return;
    }
#endif
  for (Index e = 0; e < n; ++e) {
    std::fill(b.sp, b.sp + s.planes(), T(0));
    input_transform_adjoint(b.sp, b.V, ld, e * s.T, s);
    from_planes(x + e * g.in_size(), b.sp, g, s, b.scratch);
  }
}

// dU (9, O, C') += dM · Vᵀ of the group (both in b).
template <class T>
void weight_products(T* dU, const Bufs<T>& b, Index ld, Index n, Index O, const Geom& s) {
  const Index C4 = s.C4;
  for (Index xi = 0; xi < 9; ++xi)  // dU_ξ (O, C') += dM_ξ (O, n·T) · V_ξᵀ (n·T, C')
    gemm_dots<T>(O, C4, n * s.T, b.M + xi * ld, 9 * ld, b.V + xi * ld, 9 * ld, dU + xi * O * C4, C4);
}

}  // namespace wino2

// ---- Conv2d (O, C, 4, 4), stride 2 ---------------------------------------------------------

// conv2d_forward by F(2×2, 2×2) (winograd_s2_applies(g)): as conv2d_forward.
template <class T>
void winograd_s2_conv2d_forward(T* out, const T* inp, const T* weight, const T* bias, Index B, const ConvGeom& g,
                                Index O, ConvWork<T>& w) {
  const wino2::Geom s(g);
  const Chunks ch(B, s.T);
  const Index ld = wino2::ld_of(ch, s);
  const T* U = wino2::prepare(w, weight, g, s, ld, O);
#pragma omp parallel for schedule(static) if (conv_parallel(2.0 * B * O * s.C4 * 9 * s.T, ch.groups))
  for (Index gi = 0; gi < ch.groups; ++gi) {
    const Index b0 = ch.group_begin(gi), n = ch.group_len(gi);
    const auto b = wino2::bufs(w, s);
    wino2::tiles(b, ld, inp + b0 * g.in_size(), n, g, s);
    wino2::forward_products<false>(out + b0 * O * g.positions(), U, bias, b, ld, n, O, s);
  }
}

// The shared backward of both layers: per chunk, dU += dM(dy) · V(x)ᵀ; then (adjoint) dx += convᵀ(dy)
// of Conv2d, or (!adjoint) dz += conv(x) of ConvTranspose2d (x its dout, dy its input); dU summed
// in chunk order into dweight. x (B, C, H, W), dy (B, O, Ho, Wo); dbias (bias_n) += the sums of
// dbias_rows (B, bias_n, bias_p) over their last axis.
template <class T>
void winograd_s2_backward(T* dthrough, bool adjoint, T* dweight, T* dbias, const T* dbias_rows, Index bias_n,
                          Index bias_p, const T* x, const T* dy, const T* weight, Index B, const ConvGeom& g, Index O,
                          ConvWork<T>& w) {
  const wino2::Geom s(g);
  const Chunks ch(B, s.T);
  const Index ld = wino2::ld_of(ch, s), NU = 9 * O * s.C4, NP = NU + bias_n, P = s.Ho * s.Wo;
  const T* U = wino2::prepare(w, weight, g, s, ld, O);
  T* part = w.ensure_partials(ch.count, NP);
#pragma omp parallel for schedule(dynamic, 1) if (conv_parallel(6.0 * B * O * s.C4 * 9 * s.T, ch.count))
  for (Index c = 0; c < ch.count; ++c) {
    const auto b = wino2::bufs(w, s);
    T* dU = clear_partial(part, c, NP);  // (9, O, C')
    T* db = dU + NU;                      // (bias_n)
    for (Index gi = ch.chunk_groups_begin(c); gi < ch.chunk_groups_end(c); ++gi) {
      const Index b0 = ch.group_begin(gi), n = ch.group_len(gi);
      for (Index e = 0; e < n; ++e)
        for (Index o = 0; o < bias_n; ++o) {
          const T* r = dbias_rows + ((b0 + e) * bias_n + o) * bias_p;
          db[o] += T(sum8(bias_p, [r](Index q) { return double(r[q]); }));
        }
      wino2::tiles(b, ld, x + b0 * g.in_size(), n, g, s);
      wino2::dtiles(b, ld, dy + b0 * O * P, n, O, s);
      wino2::weight_products(dU, b, ld, n, O, s);
      if (!dthrough) continue;
      if (adjoint)
        wino2::adjoint_products(dthrough + b0 * g.in_size(), U, b, ld, n, O, g, s);
      else
        wino2::forward_products<true>(dthrough + b0 * O * P, U, static_cast<const T*>(nullptr), b, ld, n, O, s);
    }
  }
  if (dweight) {
    std::vector<T>& sum = w.flipped;  // dU summed over the chunks in chunk order
    sum.assign(size_t(NU), T(0));
    add_partials(sum.data(), part, ch.count, NU, NP);
    wino2::weight_transform_adjoint(dweight, sum.data(), O, g.C);
  }
  if (dbias) add_partials(dbias, part + NU, ch.count, bias_n, NP);
}

// conv2d_backward by F(2×2, 2×2): as conv2d_backward.
template <class T>
void winograd_s2_conv2d_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight, Index B,
                                 const ConvGeom& g, Index O, ConvWork<T>& w) {
  winograd_s2_backward(dinp, true, dweight, dbias, dout, O, g.positions(), inp, dout, weight, B, g, O, w);
}

// ---- ConvTranspose2d (C_in, C_out, 4, 4), stride 2: the adjoint of the Conv2d with geometry og ----

// conv_transpose2d_forward by F(2×2, 2×2) (winograd_s2_applies(og)): as conv_transpose2d_forward.
template <class T>
void winograd_s2_conv_transpose2d_forward(T* out, const T* inp, const T* weight, const T* bias, Index B, Index C_in,
                                          const ConvGeom& og, ConvWork<T>& w) {
  const wino2::Geom s(og);
  const Chunks ch(B, s.T);
  const Index ld = wino2::ld_of(ch, s), N = og.in_size(), HW = og.H * og.W, P = s.Ho * s.Wo;
  const T* U = wino2::prepare(w, weight, og, s, ld, C_in);
#pragma omp parallel for schedule(static) if (conv_parallel(2.0 * B * C_in * s.C4 * 9 * s.T, ch.groups))
  for (Index gi = 0; gi < ch.groups; ++gi) {
    const Index b0 = ch.group_begin(gi), n = ch.group_len(gi);
    const auto b = wino2::bufs(w, s);
    for (Index e = 0; e < n; ++e)
      for (Index c = 0; c < og.C; ++c) {
        T* y = out + (b0 + e) * N + c * HW;
        std::fill(y, y + HW, bias ? bias[c] : T(0));
      }
    wino2::dtiles(b, ld, inp + b0 * C_in * P, n, C_in, s);
    wino2::adjoint_products(out + b0 * N, U, b, ld, n, C_in, og, s);
  }
}

// conv_transpose2d_backward by F(2×2, 2×2): as conv_transpose2d_backward.
template <class T>
void winograd_s2_conv_transpose2d_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp,
                                           const T* weight, Index B, Index C_in, const ConvGeom& og, ConvWork<T>& w) {
  winograd_s2_backward(dinp, false, dweight, dbias, dout, og.C, og.H * og.W, dout, inp, weight, B, og, C_in, w);
}

}  // namespace elbokit
