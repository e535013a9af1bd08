// elbokit/unet.hpp: the U-Net ε/x0/v-network of image diffusion models (Ho et al. 2020's network,
// reduced: residual blocks with GroupNorm, the time embedding injected per channel into every
// block, skip concatenations; no attention, no dropout), a Module (module.hpp) built by nets.hpp
// for NetSpec kind "unet".
//
// Shapes: B batch; image (C, H, W), rows of (B, C·H·W) read as NCHW; n = len(channels) levels,
// level i at sides H_i = H / 2^i with c_i channels; E the conditioning (time-embedding) width;
// Td = 4·c_0 the time MLP's width; G groups of every GroupNorm.
//
//   temb = time.1(act(time.0(emb)))                                       (B, Td); st = act(temb)
//   h = conv_in(x)                                                         (B, c_0, H, W)
//   down i = 0 … n−1: h = down.i.res(h, st); skip_i = h;
//                     h = down.i.down(h) (3×3, stride 2, padding 1) unless i = n − 1
//   h = mid(h, st)
//   up i = n−1 … 0:   h = up.i.res(cat(h, skip_i), st)   (channels: h's first, then skip_i's)
//                     h = up.i.up(nearest×2(h)) (3×3 conv to c_{i−1}) unless i = 0
//   out = out(act(norm_out(h)))                                            (B, O, H, W)
//   res(x, st) = conv2(act(norm2(conv1(act(norm1(x))) + temb(st)[:, :, None, None]))) + skip(x),
//                skip a 1×1 conv when the channels change, else the identity.
// Parameter names (the state_dict of tests/torch_unet.py under the model's prefix):
//   time.{0,1}.*, conv_in.*, down.{i}.res.{norm1,conv1,temb,norm2,conv2,skip}.*, down.{i}.down.*,
//   mid.*, up.{i}.res.*, up.{i}.up.*, norm_out.*, out.*. Initialization as torch's defaults:
//   Conv2d and Linear U(±1/√fan_in) for weights and biases, GroupNorm weight 1 and bias 0.
#pragma once

#include <string>
#include <vector>

#include "elbokit/conv.hpp"
#include "elbokit/layers.hpp"
#include "elbokit/module.hpp"

namespace elbokit {

template <class T>
class UNet final : public Module<T> {
 public:
  UNet(ParamLayout& layout, const std::string& prefix, Index C, Index H, Index W, const std::vector<Index>& channels,
       Index groups, Activation act, Index cond, Index out_channels)
      : C_(C), H_(H), W_(W), ch_(channels), G_(groups), act_(act) {
    const Index n = Index(channels.size());
    auto s = [](Index v) { return std::to_string(v); };
    if (n < 1) fail("channels must hold at least one width for net='unet', got an empty list");
    for (Index i = 0; i < n; ++i)
      if (channels[size_t(i)] <= 0)
        fail("channels must hold positive widths, got " + s(channels[size_t(i)]) + " at position " + s(i));
    if (cond <= 0) fail("net='unet' needs a conditioning input (the time embedding), got emb_dim " + s(cond));
    const Index f = Index(1) << (n - 1);
    if (H % f || W % f)
      fail("image_shape (" + s(C) + ", " + s(H) + ", " + s(W) + ") with " + s(n) + " U-Net levels: the sides must be " +
           "divisible by 2^(levels − 1) = " + s(f));
    this->in_ = C * H * W;
    this->cond_ = cond;
    this->out_ = out_channels * H * W;
    const Index Td = 4 * channels[0];
    auto p = [&](const std::string& name) { return prefix + "." + name; };
    time0_ = layout.add_dense(p("time.0"), cond, Td);
    time1_ = layout.add_dense(p("time.1"), Td, Td);
    conv_in_ = add_conv(layout, p("conv_in"), C, H, W, channels[0], 3, 1, 1);
    Index prev = channels[0];
    for (Index i = 0; i < n; ++i) {
      const Index c = channels[size_t(i)], h = H >> i, w = W >> i;
      Level lv;
      lv.res = add_res(layout, p("down." + s(i) + ".res"), prev, c, h, w, Td);
      if (i < n - 1) lv.conv = add_conv(layout, p("down." + s(i) + ".down"), c, h, w, c, 3, 2, 1);
      down_.push_back(lv);
      prev = c;
    }
    mid_ = add_res(layout, p("mid"), prev, prev, H >> (n - 1), W >> (n - 1), Td);
    up_.resize(size_t(n));
    for (Index i = n - 1; i >= 0; --i) {
      const Index c = channels[size_t(i)], h = H >> i, w = W >> i;
      Level& lv = up_[size_t(i)];
      lv.res = add_res(layout, p("up." + s(i) + ".res"), prev + c, c, h, w, Td);
      prev = c;
      if (i > 0) {  // nearest ×2 to level i − 1's sides, then a 3×3 conv to its channels
        lv.conv = add_conv(layout, p("up." + s(i) + ".up"), c, 2 * h, 2 * w, channels[size_t(i - 1)], 3, 1, 1);
        prev = channels[size_t(i - 1)];
      }
    }
    norm_out_ = add_norm(layout, p("norm_out"), prev, H * W);
    out_conv_ = add_conv(layout, p("out"), prev, H, W, out_channels, 3, 1, 1);
  }

  bool split_rows() const override { return true; }  // module.hpp
  std::string describe() const override {
    std::string s = "unet(" + std::to_string(C_) + "x" + std::to_string(H_) + "x" + std::to_string(W_) + ":";
    for (Index c : ch_) s += " " + std::to_string(c);
    return s + ")";
  }

  void init(T* p, uint64_t seed) const override {
    init_dense(p, time0_, seed);
    init_dense(p, time1_, seed);
    for (const ConvP& c : convs_) {
      const double bound = 1.0 / std::sqrt(double(c.g.patch()));
      init_uniform(p, c.w, c.O * c.g.patch(), bound, seed);
      init_uniform(p, c.b, c.O, bound, seed);
    }
    for (const Dense& d : tembs_) init_dense(p, d, seed);
    for (const NormP& nm : norms_) {
      std::fill(p + nm.w, p + nm.w + nm.C, T(1));
      std::fill(p + nm.b, p + nm.b + nm.C, T(0));
    }
  }

  const T* forward(const T* p, const T* in, const T* cond, Index B, Cache& c) const override;
  void backward(const T* p, T* g, const T* in, const T* cond, Index B, Cache& c, const T* dout,
                T* din) const override;

 private:
  struct ConvP {  // a Conv2d: geometry, output channels, weight (O, C, k, k) and bias (O) offsets
    ConvGeom g;
    Index O = 0, w = -1, b = -1;
    Index out_size() const { return O * g.positions(); }
  };
  struct NormP {  // a GroupNorm over C channels of HW positions: weight, bias (C) offsets
    Index C = 0, HW = 0, w = -1, b = -1;
  };
  struct ResP {
    NormP n1, n2;
    ConvP c1, c2, sk;  // sk.w < 0: identity skip
    Dense temb;
    Index cin = 0, cout = 0, HW = 0;
  };
  struct Level {
    ResP res;
    ConvP conv;  // down: the stride-2 conv; up: the conv after upsampling; conv.w < 0: none
  };
  // Saved activations of one residual block, and its gradient scratch.
  struct ResState {
    Mat<T> a1, s1, h1, a2, s2, out;  // (B, cin·HW) for a1, s1; (B, cout·HW) for the others
    Mat<T> mean1, rstd1, mean2, rstd2;  // (B, G)
    Mat<T> tp;                          // (B, cout): temb(st)
    Mat<T> ds2, da2, dh1, ds1, da1, dtp;
  };
  struct LevelState {
    ResState res;
    Mat<T> cat, up, conv;     // up path: cat(h, skip) (B, ·); nearest ×2 (B, c·4HW); its conv (B, ·)
    Mat<T> dres, dcat, dup, dconv;
  };
  struct State : CacheState {
    ConvWork<T> work;
    Mat<T> t0, ts0, temb, st;  // (B, Td)
    Mat<T> h0;                 // conv_in (B, c_0·HW)
    std::vector<LevelState> down, up;
    ResState mid;
    Mat<T> a_out, s_out, mean_out, rstd_out, out;
    Mat<T> dst, dtemb, dts0, dt0, ds_out, da_out, dh, dh0;
    Mat<T> dnext[2];  // ∂J/∂(a down level's output), ping-pong between levels
  };

  ConvP add_conv(ParamLayout& layout, const std::string& name, Index C, Index H, Index W, Index O, Index k, Index s,
                 Index pad) {
    ConvP c;
    c.g.C = C;
    c.g.H = H;
    c.g.W = W;
    c.g.k = k;
    c.g.stride = s;
    c.g.pad = pad;
    check_conv_geom(c.g, name, false);  // a stride-2 conv halves even sides (⌊(H − 1)/2⌋ + 1 = H/2)
    c.O = O;
    c.w = layout.add(name + ".weight", {O, C, k, k});
    c.b = layout.add(name + ".bias", {O});
    convs_.push_back(c);
    return c;
  }
  NormP add_norm(ParamLayout& layout, const std::string& name, Index C, Index HW) {
    check_groups(C, G_, "groups (" + name + ")");
    NormP nm;
    nm.C = C;
    nm.HW = HW;
    nm.w = layout.add(name + ".weight", {C});
    nm.b = layout.add(name + ".bias", {C});
    norms_.push_back(nm);
    return nm;
  }
  ResP add_res(ParamLayout& layout, const std::string& name, Index cin, Index cout, Index h, Index w, Index Td) {
    ResP r;
    r.cin = cin;
    r.cout = cout;
    r.HW = h * w;
    r.n1 = add_norm(layout, name + ".norm1", cin, h * w);
    r.c1 = add_conv(layout, name + ".conv1", cin, h, w, cout, 3, 1, 1);
    r.temb = layout.add_dense(name + ".temb", Td, cout);
    tembs_.push_back(r.temb);
    r.n2 = add_norm(layout, name + ".norm2", cout, h * w);
    r.c2 = add_conv(layout, name + ".conv2", cout, h, w, cout, 3, 1, 1);
    if (cin != cout) r.sk = add_conv(layout, name + ".skip", cin, h, w, cout, 1, 1, 0);
    return r;
  }

  void res_forward(const T* p, const ResP& r, const T* x, const T* st, Index B, ResState& s, ConvWork<T>& work) const;
  void res_backward(const T* p, T* g, const ResP& r, const T* x, const T* st, Index B, ResState& s, const T* dout,
                    T* dx, T* dst, ConvWork<T>& work) const;
  void conv_fwd(const T* p, const ConvP& c, const T* x, Index B, Mat<T>& out, ConvWork<T>& work) const {
    out.resize(B, c.out_size());
    conv2d_forward(out.data(), x, p + c.w, p + c.b, B, c.g, c.O, work);
  }
  void conv_bwd(const T* p, T* g, const ConvP& c, const T* x, Index B, const T* dout, T* dx, ConvWork<T>& work) const {
    conv2d_backward(dx, g + c.w, g + c.b, dout, x, p + c.w, B, c.g, c.O, work);
  }

  Index C_, H_, W_;
  std::vector<Index> ch_;
  Index G_;
  Activation act_;
  Dense time0_, time1_;
  ConvP conv_in_, out_conv_;
  std::vector<Level> down_, up_;
  ResP mid_;
  NormP norm_out_;
  std::vector<ConvP> convs_;   // every conv, for init
  std::vector<NormP> norms_;   // every GroupNorm, for init
  std::vector<Dense> tembs_;   // every block's time projection, for init
};

// ---- the residual block -------------------------------------------------------------------------

template <class T>
void UNet<T>::res_forward(const T* p, const ResP& r, const T* x, const T* st, Index B, ResState& s,
                          ConvWork<T>& work) const {
  const Index nin = r.cin * r.HW, nout = r.cout * r.HW;
  // a1 = norm1(x), s1 = act(a1), h1 = conv1(s1) + temb(st) per channel
  s.a1.resize(B, nin);
  s.s1.resize(B, nin);
  s.mean1.resize(B, G_);
  s.rstd1.resize(B, G_);
  group_norm_forward(s.a1.data(), s.mean1.data(), s.rstd1.data(), x, p + r.n1.w, p + r.n1.b, B, r.cin, r.HW, G_);
  activation_forward(s.s1.data(), s.a1.data(), B * nin, act_);
  conv_fwd(p, r.c1, s.s1.data(), B, s.h1, work);
  s.tp.resize(B, r.cout);
  linear_forward(s.tp.data(), st, p + r.temb.w, p + r.temb.b, B, r.temb.in, r.temb.out);
#pragma omp parallel for schedule(static) if (B * nout > 4 * kElemBlock)
  for (Index b = 0; b < B; ++b)
    for (Index c = 0; c < r.cout; ++c) {
      T* h = s.h1.data() + b * nout + c * r.HW;
      const T v = s.tp(b, c);
      for (Index q = 0; q < r.HW; ++q) h[q] += v;
    }
  // a2 = norm2(h1), s2 = act(a2), out = conv2(s2) + skip(x)
  s.a2.resize(B, nout);
  s.s2.resize(B, nout);
  s.mean2.resize(B, G_);
  s.rstd2.resize(B, G_);
  group_norm_forward(s.a2.data(), s.mean2.data(), s.rstd2.data(), s.h1.data(), p + r.n2.w, p + r.n2.b, B, r.cout,
                     r.HW, G_);
  activation_forward(s.s2.data(), s.a2.data(), B * nout, act_);
  conv_fwd(p, r.c2, s.s2.data(), B, s.out, work);
  if (r.sk.w >= 0) {
    Mat<T>& skip = s.ds2;  // scratch: the forward's skip conv (its backward overwrites it)
    conv_fwd(p, r.sk, x, B, skip, work);
    add_into(s.out.data(), skip.data(), B * nout);
  } else {
    add_into(s.out.data(), x, B * nin);
  }
}

// res_backward: given dout (B, cout·HW), accumulates parameter gradients into g, ∂J/∂x into dx
// (B, cin·HW) and ∂J/∂st into dst (B, Td).
template <class T>
void UNet<T>::res_backward(const T* p, T* g, const ResP& r, const T* x, const T* st, Index B, ResState& s,
                           const T* dout, T* dx, T* dst, ConvWork<T>& work) const {
  const Index nin = r.cin * r.HW, nout = r.cout * r.HW;
  // skip(x)
  if (r.sk.w >= 0)
    conv_bwd(p, g, r.sk, x, B, dout, dx, work);
  else
    add_into(dx, dout, B * nin);
  // conv2, act, norm2
  set_zero(s.ds2, B, nout);
  conv_bwd(p, g, r.c2, s.s2.data(), B, dout, s.ds2.data(), work);
  s.da2.resize(B, nout);
  activation_backward(s.da2.data(), s.ds2.data(), s.a2.data(), s.s2.data(), B * nout, act_);
  set_zero(s.dh1, B, nout);
  group_norm_backward(s.dh1.data(), g + r.n2.w, g + r.n2.b, s.da2.data(), s.h1.data(), s.mean2.data(), s.rstd2.data(),
                      p + r.n2.w, B, r.cout, r.HW, G_, work);
  // the time projection: dtp (B, cout) = Σ over positions of dh1
  s.dtp.resize(B, r.cout);
#pragma omp parallel for schedule(static) if (B * nout > 4 * kElemBlock)
  for (Index b = 0; b < B; ++b)
    for (Index c = 0; c < r.cout; ++c) {
      const T* d = s.dh1.data() + b * nout + c * r.HW;
      T acc = 0;
      for (Index q = 0; q < r.HW; ++q) acc += d[q];
      s.dtp(b, c) = acc;
    }
  linear_backward(dst, g + r.temb.w, g + r.temb.b, s.dtp.data(), st, p + r.temb.w, B, r.temb.in, r.temb.out);
  // conv1, act, norm1
  set_zero(s.ds1, B, nin);
  conv_bwd(p, g, r.c1, s.s1.data(), B, s.dh1.data(), s.ds1.data(), work);
  s.da1.resize(B, nin);
  activation_backward(s.da1.data(), s.ds1.data(), s.a1.data(), s.s1.data(), B * nin, act_);
  group_norm_backward(dx, g + r.n1.w, g + r.n1.b, s.da1.data(), x, s.mean1.data(), s.rstd1.data(), p + r.n1.w, B,
                      r.cin, r.HW, G_, work);
}

// ---- the network --------------------------------------------------------------------------------

// cat (B, (ca + cb)·HW): per example, a's ca channels then b's cb channels.
template <class T>
void concat_channels(T* cat, const T* a, Index na, const T* b, Index nb, Index B) {
#pragma omp parallel for schedule(static) if (B * (na + nb) > 4 * kElemBlock)
  for (Index r = 0; r < B; ++r) {
    std::copy(a + r * na, a + (r + 1) * na, cat + r * (na + nb));
    std::copy(b + r * nb, b + (r + 1) * nb, cat + r * (na + nb) + na);
  }
}

template <class T>
const T* UNet<T>::forward(const T* p, const T* in, const T* cond, Index B, Cache& c) const {
  State& s = c.get<State>();
  const Index n = Index(ch_.size()), Td = time0_.out;
  // 1. the time MLP: st = act(time.1(act(time.0(emb))))
  s.t0.resize(B, Td);
  s.ts0.resize(B, Td);
  s.temb.resize(B, Td);
  s.st.resize(B, Td);
  linear_forward(s.t0.data(), cond, p + time0_.w, p + time0_.b, B, time0_.in, time0_.out);
  activation_forward(s.ts0.data(), s.t0.data(), B * Td, act_);
  linear_forward(s.temb.data(), s.ts0.data(), p + time1_.w, p + time1_.b, B, time1_.in, time1_.out);
  activation_forward(s.st.data(), s.temb.data(), B * Td, act_);
  // 2. down
  conv_fwd(p, conv_in_, in, B, s.h0, s.work);
  s.down.resize(size_t(n));
  s.up.resize(size_t(n));
  const T* h = s.h0.data();
  for (Index i = 0; i < n; ++i) {
    LevelState& ls = s.down[size_t(i)];
    const Level& lv = down_[size_t(i)];
    res_forward(p, lv.res, h, s.st.data(), B, ls.res, s.work);
    h = ls.res.out.data();  // skip_i
    if (lv.conv.w >= 0) {
      conv_fwd(p, lv.conv, h, B, ls.conv, s.work);
      h = ls.conv.data();
    }
  }
  // 3. mid
  res_forward(p, mid_, h, s.st.data(), B, s.mid, s.work);
  h = s.mid.out.data();
  Index hc = mid_.cout;
  // 4. up
  for (Index i = n - 1; i >= 0; --i) {
    LevelState& ls = s.up[size_t(i)];
    const Level& lv = up_[size_t(i)];
    const Index HW = lv.res.HW, ci = ch_[size_t(i)];
    ls.cat.resize(B, (hc + ci) * HW);
    concat_channels(ls.cat.data(), h, hc * HW, s.down[size_t(i)].res.out.data(), ci * HW, B);
    res_forward(p, lv.res, ls.cat.data(), s.st.data(), B, ls.res, s.work);
    h = ls.res.out.data();
    hc = ci;
    if (lv.conv.w >= 0) {
      const Index hi = H_ >> i, wi = W_ >> i;
      ls.up.resize(B, ci * 4 * HW);
      upsample2_forward(ls.up.data(), h, B, ci, hi, wi);
      conv_fwd(p, lv.conv, ls.up.data(), B, ls.conv, s.work);
      h = ls.conv.data();
      hc = lv.conv.O;
    }
  }
  // 5. out = out(act(norm_out(h)))
  const Index HW = H_ * W_;
  s.a_out.resize(B, hc * HW);
  s.s_out.resize(B, hc * HW);
  s.mean_out.resize(B, G_);
  s.rstd_out.resize(B, G_);
  group_norm_forward(s.a_out.data(), s.mean_out.data(), s.rstd_out.data(), h, p + norm_out_.w, p + norm_out_.b, B, hc,
                     HW, G_);
  activation_forward(s.s_out.data(), s.a_out.data(), B * hc * HW, act_);
  conv_fwd(p, out_conv_, s.s_out.data(), B, s.out, s.work);
  return s.out.data();
}

template <class T>
void UNet<T>::backward(const T* p, T* g, const T* in, const T* cond, Index B, Cache& c, const T* dout,
                       T* din) const {
  State& s = c.get<State>();
  const Index n = Index(ch_.size()), Td = time0_.out, HW = H_ * W_, c0 = norm_out_.C;
  s.dst.setZero(B, Td);
  // 5. out, act, norm_out: dh (B, c_0·HW), the up path's last output
  set_zero(s.ds_out, B, c0 * HW);
  conv_bwd(p, g, out_conv_, s.s_out.data(), B, dout, s.ds_out.data(), s.work);
  s.da_out.resize(B, c0 * HW);
  activation_backward(s.da_out.data(), s.ds_out.data(), s.a_out.data(), s.s_out.data(), B * c0 * HW, act_);
  const T* h_last = up_[0].conv.w >= 0 ? s.up[0].conv.data() : s.up[0].res.out.data();
  set_zero(s.dh, B, c0 * HW);
  group_norm_backward(s.dh.data(), g + norm_out_.w, g + norm_out_.b, s.da_out.data(), h_last, s.mean_out.data(),
                      s.rstd_out.data(), p + norm_out_.w, B, c0, HW, G_, s.work);
  // 4. up, from level 0 to level n − 1; the skip halves of dcat are kept for the down path
  const T* d = s.dh.data();  // ∂J/∂(output of up level i)
  for (Index i = 0; i < n; ++i) {
    LevelState& ls = s.up[size_t(i)];
    const Level& lv = up_[size_t(i)];
    const Index HWi = lv.res.HW, ci = ch_[size_t(i)];
    if (lv.conv.w >= 0) {
      set_zero(ls.dup, B, ci * 4 * HWi);
      conv_bwd(p, g, lv.conv, ls.up.data(), B, d, ls.dup.data(), s.work);
      set_zero(ls.dres, B, ci * HWi);
      upsample2_backward(ls.dres.data(), ls.dup.data(), B, ci, H_ >> i, W_ >> i);
      d = ls.dres.data();
    }
    set_zero(ls.dcat, B, lv.res.cin * HWi);
    res_backward(p, g, lv.res, ls.cat.data(), s.st.data(), B, ls.res, d, ls.dcat.data(), s.dst.data(), s.work);
    d = nullptr;  // the first (cin − ci) channels of dcat: ∂J/∂(the input from below), read next
    if (i + 1 < n) {
      // the h half of level i's cat is the output of up level i + 1
      const Index nh = (lv.res.cin - ci) * HWi;
      LevelState& nx = s.up[size_t(i + 1)];
      nx.dconv.resize(B, nh);
#pragma omp parallel for schedule(static) if (B * nh > 4 * kElemBlock)
      for (Index b = 0; b < B; ++b)
        std::copy(ls.dcat.data() + b * lv.res.cin * HWi, ls.dcat.data() + b * lv.res.cin * HWi + nh,
                  nx.dconv.data() + b * nh);
      d = nx.dconv.data();
    }
  }
  // 3. mid: its output's gradient is the h half of up level n − 1's dcat
  {
    const LevelState& top = s.up[size_t(n - 1)];
    const Index HWt = up_[size_t(n - 1)].res.HW, nh = mid_.cout * HWt, w = up_[size_t(n - 1)].res.cin * HWt;
    s.dh0.resize(B, nh);  // scratch: ∂J/∂mid.out
#pragma omp parallel for schedule(static) if (B * nh > 4 * kElemBlock)
    for (Index b = 0; b < B; ++b) std::copy(top.dcat.data() + b * w, top.dcat.data() + b * w + nh, s.dh0.data() + b * nh);
  }
  int cur = 0;  // s.dnext[cur]: ∂J/∂(output of down level i, after its down conv)
  set_zero(s.dnext[cur], B, mid_.cin * mid_.HW);
  const T* mid_in = down_[size_t(n - 1)].conv.w >= 0 ? s.down[size_t(n - 1)].conv.data()
                                                     : s.down[size_t(n - 1)].res.out.data();
  res_backward(p, g, mid_, mid_in, s.st.data(), B, s.mid, s.dh0.data(), s.dnext[cur].data(), s.dst.data(), s.work);
  // 2. down, from level n − 1 to 0: ∂J/∂skip_i = the skip half of up level i's dcat + the path above
  for (Index i = n - 1; i >= 0; --i) {
    const Mat<T>& dnext = s.dnext[cur];
    LevelState& ls = s.down[size_t(i)];
    const Level& lv = down_[size_t(i)];
    const Index HWi = lv.res.HW, ci = ch_[size_t(i)];
    set_zero(ls.dres, B, ci * HWi);  // ∂J/∂skip_i
    if (lv.conv.w >= 0) conv_bwd(p, g, lv.conv, ls.res.out.data(), B, dnext.data(), ls.dres.data(), s.work);
    else add_into(ls.dres.data(), dnext.data(), B * ci * HWi);
    const LevelState& u = s.up[size_t(i)];
    const Index w = up_[size_t(i)].res.cin * HWi, off = w - ci * HWi;
#pragma omp parallel for schedule(static) if (B * ci * HWi > 4 * kElemBlock)
    for (Index b = 0; b < B; ++b)
      for (Index j = 0; j < ci * HWi; ++j) ls.dres(b, j) += u.dcat(b, off + j);
    const T* x = i == 0 ? s.h0.data() : (down_[size_t(i - 1)].conv.w >= 0 ? s.down[size_t(i - 1)].conv.data()
                                                                            : s.down[size_t(i - 1)].res.out.data());
    Mat<T>& dx = s.dnext[1 - cur];
    set_zero(dx, B, lv.res.cin * HWi);
    res_backward(p, g, lv.res, x, s.st.data(), B, ls.res, ls.dres.data(), dx.data(), s.dst.data(), s.work);
    cur = 1 - cur;
  }
  // conv_in
  conv_bwd(p, g, conv_in_, in, B, s.dnext[cur].data(), din, s.work);
  // 1. the time MLP (the embedding itself gets no gradient)
  s.dtemb.resize(B, Td);
  activation_backward(s.dtemb.data(), s.dst.data(), s.temb.data(), s.st.data(), B * Td, act_);
  set_zero(s.dts0, B, Td);
  linear_backward(s.dts0.data(), g + time1_.w, g + time1_.b, s.dtemb.data(), s.ts0.data(), p + time1_.w, B, time1_.in,
                  time1_.out);
  s.dt0.resize(B, Td);
  activation_backward(s.dt0.data(), s.dts0.data(), s.t0.data(), s.ts0.data(), B * Td, act_);
  linear_backward<T>(nullptr, g + time0_.w, g + time0_.b, s.dt0.data(), cond, p + time0_.w, B, time0_.in, time0_.out);
}

}  // namespace elbokit
