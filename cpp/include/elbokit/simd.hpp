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

// log1p(e) for e in [0, 1] given u = 1 + e and r = 1/u: log(u) − ((u − 1) − e)/u corrects the
// rounding of u to first order (exact to a few ulps; e when u rounds to 1).
template <class P>
inline P log1p_given(const P& e, const P& u, const P& r) {
  return ei::psub(ei::plog(u), ei::pmul(ei::psub(ei::psub(u, one<P>()), e), r));
}

}  // namespace simd
}  // namespace elbokit
