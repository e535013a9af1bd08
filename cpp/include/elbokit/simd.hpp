// elbokit/simd.hpp: element-wise kernels on SIMD packets.
//
// Eigen 3.4 vectorizes array expressions, but not `select` (its evaluator drops PacketAccessBit):
// an expression holding one runs coefficient by coefficient, with scalar exp and log. The kernels
// that carry most element-wise work (the Bernoulli likelihood, activations with a branch) are
// written here on Eigen's packet functions instead (pexp, plog, pselect: AVX-512, AVX2 or SSE as
// the build targets), with no branch per element.
//
// Every element goes through the same packet code, the last partial packet included (it is copied
// into a padded packet), so an element's result does not depend on where it lies in its array:
// tiles and threads can split arrays anywhere without changing a bit.
#pragma once

#include <limits>
#include <type_traits>

#include "elbokit/common.hpp"

namespace elbokit {
namespace simd {

namespace ei = Eigen::internal;
template <class T>
using Packet = typename ei::packet_traits<T>::type;
template <class T>
constexpr Index lanes() {
  return ei::unpacket_traits<Packet<T>>::size;
}

// map: out_k[i] = f(in_0[i], ..., in_{NI-1}[i])_k for i < n, on packets. f(const P* a, P* r) reads
// NI packets and writes NO. Padding lanes of the last packet hold `pad` (a value f accepts).
template <class T, int NI, int NO, class F>
inline void map(Index n, const T* const (&in)[NI], T* const (&out)[NO], F f, T pad = T(0)) {
  using P = Packet<T>;
  constexpr Index W = lanes<T>();
  P a[NI], r[NO];
  Index i = 0;
  for (; i + W <= n; i += W) {
    for (int k = 0; k < NI; ++k) a[k] = ei::ploadu<P>(in[k] + i);
    f(a, r);
    for (int k = 0; k < NO; ++k) ei::pstoreu(out[k] + i, r[k]);
  }
  if (i < n) {
    alignas(64) T buf[NI > NO ? NI : NO][W];
    const Index m = n - i;
    for (int k = 0; k < NI; ++k) {
      for (Index j = 0; j < W; ++j) buf[k][j] = j < m ? in[k][i + j] : pad;
      a[k] = ei::ploadu<P>(buf[k]);
    }
    f(a, r);
    for (int k = 0; k < NO; ++k) {
      ei::pstoreu(buf[k], r[k]);
      for (Index j = 0; j < m; ++j) out[k][i + j] = buf[k][j];
    }
  }
}

// Elementary functions on packets.
template <class P>
inline P zero() {
  return ei::pset1<P>(typename ei::unpacket_traits<P>::type(0));
}
template <class P>
inline P one() {
  return ei::pset1<P>(typename ei::unpacket_traits<P>::type(1));
}
// a > 0 as a lane mask; select(mask, a, b) = mask ? a : b per lane.
template <class P>
inline P positive(const P& a) {
  return ei::pcmp_lt(zero<P>(), a);
}
template <class P>
inline P select(const P& mask, const P& a, const P& b) {
  return ei::pselect(mask, a, b);
}

// log u for u in [1, 2] (float packets): Cephes' logf polynomial (the one inside Eigen's plog) on
// m − 1, m = u or u/2 in [√½, √2), with no exponent extraction and none of the general log's
// special cases (zero, negative, infinite, denormal inputs), which u in [1, 2] never has. Eigen's
// plog took about three quarters of the Bernoulli likelihood's time (AVX-512, 256 x 784 logits, one
// thread: 0.76 of 0.99 ns per entry). Double packets keep Eigen's plog.
template <class P>
inline P log_1to2(const P& u) {
  using T = typename ei::unpacket_traits<P>::type;
  if constexpr (!std::is_same_v<T, float>) {
    return ei::plog(u);
  } else {
    const P high = ei::pcmp_lt(ei::pset1<P>(1.41421356237f), u);  // m = u/2, and log 2 added
    const P f = ei::psub(select(high, ei::pmul(u, ei::pset1<P>(0.5f)), u), one<P>());
    const P z = ei::pmul(f, f);
    P y = ei::pset1<P>(7.0376836292e-2f);  // Horner: c8 f^8 + ... + c0, then y f z
    for (const float ck : {-1.1514610310e-1f, 1.1676998740e-1f, -1.2420140846e-1f, 1.4249322787e-1f,
                           -1.6668057665e-1f, 2.0000714765e-1f, -2.4999993993e-1f, 3.3333331174e-1f})
      y = ei::pmadd(y, f, ei::pset1<P>(ck));
    y = ei::pmul(ei::pmul(y, f), z);
    // log 2 = 0.693359375 − 2.12194440e-4, the first part exact in float
    const P k = ei::pand(high, one<P>());
    y = ei::pmadd(k, ei::pset1<P>(-2.12194440e-4f), y);
    y = ei::pmadd(z, ei::pset1<P>(-0.5f), y);
    return ei::pmadd(k, ei::pset1<P>(0.693359375f), ei::padd(f, y));
  }
}

// log1p(e) for e in [0, 1] given u = 1 + e and r = 1/u: log(u) − ((u − 1) − e)/u corrects the
// rounding of u to first order (exact to a few ulps; e when u rounds to 1).
template <class P>
inline P log1p_given(const P& e, const P& u, const P& r) {
  return ei::psub(log_1to2(u), ei::pmul(ei::psub(ei::psub(u, one<P>()), e), r));
}

// value_range: the smallest and largest entries of a[0:n] (n >= 1), both NaN when any entry is
// NaN (as NumPy's min and max), in one pass over blocks on the threads: the input checks of large
// arrays read them once instead of twice. min and max are exact, so no split changes the result.
template <class T>
void value_range(const T* a, Index n, T& lo, T& hi) {
  using P = Packet<T>;
  constexpr Index W = lanes<T>(), kBlock = Index(1) << 16;
  const Index nb = ceil_div(n, kBlock);
  std::vector<T> blo(static_cast<size_t>(nb)), bhi(static_cast<size_t>(nb));
  std::vector<char> bnan(static_cast<size_t>(nb));
#pragma omp parallel for schedule(static) if (nb > 1)
  for (Index k = 0; k < nb; ++k) {
    const Index o = k * kBlock, len = std::min(kBlock, n - o);
    T mn = a[o], mx = a[o];
    bool nan = a[o] != a[o];
    Index i = 0;
    if (len >= W) {
      P vmn = ei::ploadu<P>(a + o), vmx = vmn, ordered = ei::pcmp_eq(vmn, vmn);
      for (i = W; i + W <= len; i += W) {
        const P v = ei::ploadu<P>(a + o + i);
        vmn = ei::pmin(vmn, v);
        vmx = ei::pmax(vmx, v);
        ordered = ei::pand(ordered, ei::pcmp_eq(v, v));
      }
      mn = ei::predux_min(vmn);
      mx = ei::predux_max(vmx);
      alignas(64) T ok[W];
      ei::pstoreu(ok, ordered);
      for (Index j = 0; j < W; ++j) nan = nan || ok[j] == T(0);  // a lane's mask: all ones (ordered) or zero
    }
    for (; i < len; ++i) {
      const T v = a[o + i];
      nan = nan || v != v;
      mn = std::min(mn, v);
      mx = std::max(mx, v);
    }
    blo[size_t(k)] = mn;
    bhi[size_t(k)] = mx;
    bnan[size_t(k)] = nan;
  }
  lo = blo[0];
  hi = bhi[0];
  bool nan = false;
  for (Index k = 0; k < nb; ++k) {
    nan = nan || bnan[size_t(k)];
    lo = std::min(lo, blo[size_t(k)]);
    hi = std::max(hi, bhi[size_t(k)]);
  }
  if (nan) lo = hi = std::numeric_limits<T>::quiet_NaN();
}

}  // namespace simd
}  // namespace elbokit
