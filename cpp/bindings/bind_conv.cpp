// bind_conv.cpp: the image layers of conv.hpp as they are (elbokit._core.conv.float32 / .float64),
// for the tests that compare them with torch.nn on the same weights and with finite differences.
// Arrays are NCHW NumPy arrays; every shape is checked (ValueError naming the argument).
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <optional>

#include "bindings.hpp"
#include "elbokit/conv.hpp"

namespace py = pybind11;
using namespace elbokit;

namespace elbokit_py {

namespace {

std::string dims_str(const std::vector<Index>& d) {
  std::string s = "(";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + (d.size() == 1 ? ",)" : ")");
}

template <class T>
using Arr = py::array_t<T, py::array::c_style | py::array::forcecast>;

template <class T>
std::vector<Index> dims(const Arr<T>& a) {
  return std::vector<Index>(a.shape(), a.shape() + a.ndim());
}

// a must have shape `want` (-1: any size); `what` spells the expected shape for the message.
template <class T>
void check_dims(const char* name, const Arr<T>& a, const std::vector<Index>& want, const std::string& what) {
  const auto d = dims(a);
  bool ok = d.size() == want.size();
  for (size_t i = 0; ok && i < d.size(); ++i) ok = want[i] < 0 ? d[i] > 0 : d[i] == want[i];
  if (!ok) fail(std::string(name) + " must have shape " + what + ", got " + dims_str(d));
}

template <class T>
Arr<T> zeros(const std::vector<Index>& shape) {
  Arr<T> a(std::vector<py::ssize_t>(shape.begin(), shape.end()));
  std::fill(a.mutable_data(), a.mutable_data() + a.size(), T(0));
  return a;
}

template <class T>
void check_finite_arr(const char* name, const Arr<T>& a) {
  check_finite(name, a.data(), Index(a.size()));
}

std::string s(Index v) { return std::to_string(v); }

// The implementation an `algorithm` argument names ("auto": as the models run, conv.hpp's dispatch;
// "im2col"; "winograd", which must apply to the geometry): 0 im2col + GEMM, 1 Winograd F(2x2, 3x3)
// (3x3, stride 1, even sides), 2 Winograd F(2x2, 2x2) on phases (4x4, stride 2, even padded sides).
// conv: a Conv2d; otherwise a ConvTranspose2d, g its adjoint Conv2d's geometry.
template <class T>
int conv_algorithm(const std::string& algorithm, const ConvGeom& g, bool conv) {
  if (algorithm == "auto") return conv && winograd_applies(g) ? 1 : winograd_s2_auto<T>(g) ? 2 : 0;
  if (algorithm == "im2col") return 0;
  if (algorithm == "winograd") {
    if (conv && winograd_applies(g)) return 1;
    if (winograd_s2_applies(g)) return 2;
    fail(std::string("algorithm 'winograd' needs ") +
         (conv ? "a 3x3 kernel at stride 1 on even sides or " : "") +
         "a 4x4 kernel at stride 2 on even padded sides, got kernel " + s(g.k) + ", stride " + s(g.stride) +
         ", padding " + s(g.pad) + ", " + (conv ? "input " : "output ") + s(g.H) + "x" + s(g.W));
  }
  fail("algorithm must be 'auto', 'im2col' or 'winograd', got '" + algorithm + "'");
}

}  // namespace

template <class T>
void bind_conv_for(py::module_& k) {
  // ---- Conv2d
  auto conv_geom = [](const Arr<T>& x, const Arr<T>& weight, Index stride, Index padding) {
    check_dims("x", x, {-1, -1, -1, -1}, "(B, C, H, W)");
    const auto d = dims(x);
    check_dims("weight", weight, {-1, d[1], -1, -1}, "(O, C=" + s(d[1]) + ", k, k)");
    if (weight.shape(2) != weight.shape(3))
      fail("weight must have a square kernel (O, C, k, k), got " + dims_str(dims(weight)));
    ConvGeom g{d[1], d[2], d[3], Index(weight.shape(2)), stride, padding};
    check_conv_geom(g, "conv2d", false);
    return g;
  };
  k.def("auto_algorithm", [](Index C, Index H, Index W, Index kernel, Index stride, Index padding, bool transpose) {
    const ConvGeom g{C, H, W, kernel, stride, padding};
    check_conv_geom(g, "auto_algorithm", false);
    const int a = conv_algorithm<T>("auto", g, !transpose);
    return std::string(a == 1 ? "winograd" : a == 2 ? "winograd_s2" : "im2col");
  }, py::arg("C"), py::arg("H"), py::arg("W"), py::arg("kernel"), py::arg("stride"), py::arg("padding"),
     py::arg("transpose") = false,
     "The algorithm algorithm='auto' (the models' layers) takes for a Conv2d from (C, H, W), or (transpose) a "
     "ConvTranspose2d to (C, H, W): 'im2col', 'winograd' (F(2x2, 3x3)) or 'winograd_s2' (F(2x2, 2x2) on phases).");
  k.def("conv2d_forward", [conv_geom](const Arr<T>& x, const Arr<T>& weight, std::optional<Arr<T>> bias,
                                      Index stride, Index padding, const std::string& algorithm) {
    const ConvGeom g = conv_geom(x, weight, stride, padding);
    const int algo = conv_algorithm<T>(algorithm, g, true);
    const Index B = x.shape(0), O = weight.shape(0);
    if (bias) check_dims("bias", *bias, {O}, "(" + s(O) + ",)");
    check_finite_arr("x", x);
    Arr<T> y = zeros<T>({B, O, g.Ho(), g.Wo()});
    ConvWork<T> w;
    (algo == 1 ? winograd_conv2d_forward<T> : algo == 2 ? winograd_s2_conv2d_forward<T> : im2col_conv2d_forward<T>)(
        y.mutable_data(), x.data(), weight.data(), bias ? bias->data() : nullptr, B, g, O, w);
    return y;
  }, py::arg("x"), py::arg("weight"), py::arg("bias") = py::none(), py::arg("stride") = 1, py::arg("padding") = 0,
     py::arg("algorithm") = "auto",
     "x (B, C, H, W), weight (O, C, k, k), bias (O) -> (B, O, Ho, Wo), as torch.nn.Conv2d; algorithm 'auto', "
     "'im2col' or 'winograd' (F(2x2, 3x3): 3x3 kernels at stride 1 on even sides; F(2x2, 2x2) on the phase "
     "planes: 4x4 kernels at stride 2 on even padded sides).");
  k.def("conv2d_backward", [conv_geom](const Arr<T>& dout, const Arr<T>& x, const Arr<T>& weight, Index stride,
                                       Index padding, const std::string& algorithm) {
    const ConvGeom g = conv_geom(x, weight, stride, padding);
    const int algo = conv_algorithm<T>(algorithm, g, true);
    const Index B = x.shape(0), O = weight.shape(0);
    check_dims("dout", dout, {B, O, g.Ho(), g.Wo()}, dims_str({B, O, g.Ho(), g.Wo()}));
    Arr<T> dx = zeros<T>(dims(x)), dw = zeros<T>(dims(weight)), db = zeros<T>({O});
    ConvWork<T> w;
    (algo == 1   ? winograd_conv2d_backward<T>
     : algo == 2 ? winograd_s2_conv2d_backward<T>
                 : im2col_conv2d_backward<T>)(dx.mutable_data(), dw.mutable_data(), db.mutable_data(), dout.data(),
                                              x.data(), weight.data(), B, g, O, w);
    return py::make_tuple(dx, dw, db);
  }, py::arg("dout"), py::arg("x"), py::arg("weight"), py::arg("stride") = 1, py::arg("padding") = 0,
     py::arg("algorithm") = "auto",
     "(dx (B, C, H, W), dweight (O, C, k, k), dbias (O)) for dout (B, O, Ho, Wo) = dJ/dy.");

  // ---- ConvTranspose2d
  auto convt_geom = [](const Arr<T>& x, const Arr<T>& weight, Index stride, Index padding) {
    check_dims("x", x, {-1, -1, -1, -1}, "(B, C_in, H, W)");
    const auto d = dims(x);
    check_dims("weight", weight, {d[1], -1, -1, -1}, "(C_in=" + s(d[1]) + ", C_out, k, k)");
    if (weight.shape(2) != weight.shape(3))
      fail("weight must have a square kernel (C_in, C_out, k, k), got " + dims_str(dims(weight)));
    const Index k = weight.shape(2);
    if (stride != 1 && stride != 2) fail("conv_transpose2d: stride must be 1 or 2, got " + s(stride));
    if (padding < 0 || padding >= k) fail("conv_transpose2d: padding must be in [0, kernel_size), got " + s(padding));
    const ConvGeom og = conv_transpose_geom(Index(weight.shape(1)), d[2], d[3], k, stride, padding);
    if (og.H <= 0 || og.W <= 0)
      fail("conv_transpose2d: the output (" + s(og.H) + ", " + s(og.W) + ") of the input " + s(d[2]) + "x" +
           s(d[3]) + " must have positive sides");
    return og;
  };
  k.def("conv_transpose2d_forward", [convt_geom](const Arr<T>& x, const Arr<T>& weight,
                                                 std::optional<Arr<T>> bias, Index stride, Index padding,
                                                 const std::string& algorithm) {
    const ConvGeom og = convt_geom(x, weight, stride, padding);
    const int algo = conv_algorithm<T>(algorithm, og, false);
    const Index B = x.shape(0), Ci = x.shape(1);
    if (bias) check_dims("bias", *bias, {og.C}, "(" + s(og.C) + ",)");
    check_finite_arr("x", x);
    Arr<T> y = zeros<T>({B, og.C, og.H, og.W});
    ConvWork<T> w;
    (algo ? winograd_s2_conv_transpose2d_forward<T> : im2col_conv_transpose2d_forward<T>)(
        y.mutable_data(), x.data(), weight.data(), bias ? bias->data() : nullptr, B, Ci, og, w);
    return y;
  }, py::arg("x"), py::arg("weight"), py::arg("bias") = py::none(), py::arg("stride") = 2, py::arg("padding") = 0,
     py::arg("algorithm") = "auto",
     "x (B, C_in, H, W), weight (C_in, C_out, k, k), bias (C_out) -> (B, C_out, Ho, Wo), as "
     "torch.nn.ConvTranspose2d (output_padding 0); algorithm 'auto', 'im2col' or 'winograd' (F(2x2, 2x2) on "
     "the phase planes: 4x4 kernels at stride 2 with even padded output sides).");
  k.def("conv_transpose2d_backward", [convt_geom](const Arr<T>& dout, const Arr<T>& x, const Arr<T>& weight,
                                                  Index stride, Index padding, const std::string& algorithm) {
    const ConvGeom og = convt_geom(x, weight, stride, padding);
    const int algo = conv_algorithm<T>(algorithm, og, false);
    const Index B = x.shape(0), Ci = x.shape(1);
    check_dims("dout", dout, {B, og.C, og.H, og.W}, dims_str({B, og.C, og.H, og.W}));
    Arr<T> dx = zeros<T>(dims(x)), dw = zeros<T>(dims(weight)), db = zeros<T>({og.C});
    ConvWork<T> w;
    (algo ? winograd_s2_conv_transpose2d_backward<T> : im2col_conv_transpose2d_backward<T>)(
        dx.mutable_data(), dw.mutable_data(), db.mutable_data(), dout.data(), x.data(), weight.data(), B, Ci, og, w);
    return py::make_tuple(dx, dw, db);
  }, py::arg("dout"), py::arg("x"), py::arg("weight"), py::arg("stride") = 2, py::arg("padding") = 0,
     py::arg("algorithm") = "auto",
     "(dx (B, C_in, H, W), dweight (C_in, C_out, k, k), dbias (C_out)) for dout (B, C_out, Ho, Wo).");

  // ---- Upsample ×2 (nearest)
  k.def("upsample2_forward", [](const Arr<T>& x) {
    check_dims("x", x, {-1, -1, -1, -1}, "(B, C, H, W)");
    const auto d = dims(x);
    Arr<T> y = zeros<T>({d[0], d[1], 2 * d[2], 2 * d[3]});
    upsample2_forward(y.mutable_data(), x.data(), d[0], d[1], d[2], d[3]);
    return y;
  }, py::arg("x"), "x (B, C, H, W) -> (B, C, 2H, 2W), nearest neighbour.");
  k.def("upsample2_backward", [](const Arr<T>& dout) {
    check_dims("dout", dout, {-1, -1, -1, -1}, "(B, C, 2H, 2W)");
    const auto d = dims(dout);
    if (d[2] % 2 || d[3] % 2) fail("dout must have even sides (B, C, 2H, 2W), got " + dims_str(d));
    Arr<T> dx = zeros<T>({d[0], d[1], d[2] / 2, d[3] / 2});
    upsample2_backward(dx.mutable_data(), dout.data(), d[0], d[1], d[2] / 2, d[3] / 2);
    return dx;
  }, py::arg("dout"), "dx (B, C, H, W) for dout (B, C, 2H, 2W).");

  // ---- GroupNorm
  auto gn_check = [](const Arr<T>& x, Index G, const Arr<T>& weight, const Arr<T>& bias) {
    check_dims("x", x, {-1, -1, -1, -1}, "(B, C, H, W)");
    const Index C = x.shape(1);
    check_groups(C, G, "group_norm");
    check_dims("weight", weight, {C}, "(" + s(C) + ",)");
    check_dims("bias", bias, {C}, "(" + s(C) + ",)");
  };
  k.def("group_norm_forward", [gn_check](const Arr<T>& x, Index num_groups, const Arr<T>& weight,
                                         const Arr<T>& bias, double eps) {
    gn_check(x, num_groups, weight, bias);
    check_finite_arr("x", x);
    const auto d = dims(x);
    Arr<T> y = zeros<T>(d), mean = zeros<T>({d[0], num_groups}), rstd = zeros<T>({d[0], num_groups});
    group_norm_forward(y.mutable_data(), mean.mutable_data(), rstd.mutable_data(), x.data(), weight.data(),
                       bias.data(), d[0], d[1], d[2] * d[3], num_groups, eps);
    return py::make_tuple(y, mean, rstd);
  }, py::arg("x"), py::arg("num_groups"), py::arg("weight"), py::arg("bias"), py::arg("eps") = kGroupNormEps,
     "(y (B, C, H, W), mean (B, G), rstd (B, G)), as torch.nn.GroupNorm(G, C, eps).");
  k.def("group_norm_backward", [gn_check](const Arr<T>& dout, const Arr<T>& x, Index num_groups,
                                          const Arr<T>& weight, const Arr<T>& bias, double eps) {
    gn_check(x, num_groups, weight, bias);
    const auto d = dims(x);
    check_dims("dout", dout, d, dims_str(d));
    const Index B = d[0], C = d[1], HW = d[2] * d[3];
    Arr<T> y = zeros<T>(d), mean = zeros<T>({B, num_groups}), rstd = zeros<T>({B, num_groups});
    group_norm_forward(y.mutable_data(), mean.mutable_data(), rstd.mutable_data(), x.data(), weight.data(),
                       bias.data(), B, C, HW, num_groups, eps);
    Arr<T> dx = zeros<T>(d), dw = zeros<T>({C}), db = zeros<T>({C});
    ConvWork<T> w;
    group_norm_backward(dx.mutable_data(), dw.mutable_data(), db.mutable_data(), dout.data(), x.data(), mean.data(),
                        rstd.data(), weight.data(), B, C, HW, num_groups, w);
    return py::make_tuple(dx, dw, db);
  }, py::arg("dout"), py::arg("x"), py::arg("num_groups"), py::arg("weight"), py::arg("bias"),
     py::arg("eps") = kGroupNormEps, "(dx (B, C, H, W), dweight (C), dbias (C)) for dout (B, C, H, W).");
}

void bind_conv(py::module_& m) {
  auto k = m.def_submodule("conv", "the image layers (conv.hpp), exposed for tests");
  auto k32 = k.def_submodule("float32");
  auto k64 = k.def_submodule("float64");
  bind_conv_for<float>(k32);
  bind_conv_for<double>(k64);
}

}  // namespace elbokit_py
