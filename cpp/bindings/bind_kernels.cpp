// bind_kernels.cpp: the element-wise kernels (activations, Bernoulli log-likelihood) as they are,
// for the tests that compare them with NumPy/PyTorch on every length and at extreme values.
#include <pybind11/eigen.h>
#include <pybind11/numpy.h>

#include "bindings.hpp"
#include "elbokit/distributions.hpp"
#include "elbokit/gemm.hpp"
#include "elbokit/layers.hpp"

namespace py = pybind11;
using namespace elbokit;

namespace elbokit_py {

template <class T>
void bind_kernels_for(py::module_& k) {
  using CRef = Eigen::Ref<const Mat<T>>;
  k.def("activation_forward", [](const std::string& act, CRef a) {
    const Activation f = activation_from_string(act);
    Mat<T> y(a.rows(), a.cols());
    activation_forward(y.data(), a.data(), a.size(), f);
    return y;
  }, py::arg("activation"), py::arg("a"), "y = f(a) elementwise, (n, m) -> (n, m).");
  k.def("activation_backward", [](const std::string& act, CRef a, CRef dout) {
    const Activation f = activation_from_string(act);
    check_shape("dout", dout.rows(), dout.cols(), a.rows(), a.cols());
    Mat<T> y(a.rows(), a.cols()), d(a.rows(), a.cols());
    activation_forward(y.data(), a.data(), a.size(), f);
    activation_backward(d.data(), dout.data(), a.data(), y.data(), a.size(), f);
    return d;
  }, py::arg("activation"), py::arg("a"), py::arg("dout"), "dinp = dout * f'(a), (n, m).");
  k.def("gemm", [](bool ta, bool tb, CRef a, CRef b, Mat<T> c, double beta, const std::string& backend) {
    if (backend != "default" && backend != "eigen" && backend != "openblas" && backend != "rows" && backend != "dots")
      fail("backend must be 'default', 'eigen', 'openblas', 'rows' or 'dots', got '" + backend + "'");
    const Index m = ta ? a.cols() : a.rows(), k = ta ? a.rows() : a.cols();
    const Index kb = tb ? b.cols() : b.rows(), n = tb ? b.rows() : b.cols();
    if (kb != k) fail("b must have " + std::to_string(k) + " rows in op(b), got " + std::to_string(kb));
    check_shape("c", c.rows(), c.cols(), m, n);
    if (backend == "dots") {  // gemm_dots: c += a bᵀ (the Winograd weight gradients)
      if (ta || !tb || beta != 1.0)
        fail("backend 'dots' computes c + a bᵀ: ta = False, tb = True and beta = 1, got ta = " + std::to_string(ta) +
             ", tb = " + std::to_string(tb) + ", beta = " + std::to_string(beta));
      gemm_dots<T>(m, n, k, a.data(), std::max<Index>(1, a.cols()), b.data(), std::max<Index>(1, b.cols()), c.data(),
                   std::max<Index>(1, n));
      return c;
    }
    if (backend == "rows") {  // gemm_rows: B not transposed, beta 0 or 1 (the Winograd products)
      if (tb) fail("backend 'rows' takes b untransposed (tb = False), got tb = True");
      gemm_rows<T>(ta, m, n, k, a.data(), std::max<Index>(1, a.cols()), b.data(), std::max<Index>(1, b.cols()),
                   T(beta), c.data(), std::max<Index>(1, n));
      return c;
    }
    auto f = backend == "eigen" ? &gemm_eigen<T> : &gemm<T>;
#ifdef ELBOKIT_USE_BLAS
    if (backend == "openblas") f = &gemm_openblas<T>;
#else
    if (backend == "openblas") fail("backend 'openblas': this build has no OpenBLAS (ELBOKIT_BLAS=OFF)");
#endif
    f(ta, tb, m, n, k, a.data(), std::max<Index>(1, a.cols()), b.data(), std::max<Index>(1, b.cols()), T(beta),
      c.data(), std::max<Index>(1, n));
    return c;
  }, py::arg("ta"), py::arg("tb"), py::arg("a"), py::arg("b"), py::arg("c"), py::arg("beta"),
     py::arg("backend") = "default",
     "beta * c + op(a) op(b) through the engine's product (gemm.hpp): 'default' (the backend gemm_init chose), "
     "'eigen', 'openblas', 'rows' (gemm_rows, the Winograd transforms' product: tb False, beta 0 or 1) or 'dots' "
     "(gemm_dots, the Winograd weight gradients: ta False, tb True, beta 1).");
  k.def("linear_forward", [](CRef x, CRef w, CRef b) {
    check_cols("w", w.rows(), w.cols(), x.cols());
    check_shape("b", b.rows(), b.cols(), 1, w.rows());
    Mat<T> y(x.rows(), w.rows());
    linear_forward(y.data(), x.data(), w.data(), b.data(), x.rows(), x.cols(), w.rows());
    return y;
  }, py::arg("x"), py::arg("w"), py::arg("b"), "x (B,I) w (O,I)ᵀ + b (1,O), in the engine's tiles.");
  k.def("linear_backward", [](CRef dout, CRef x, CRef w, Mat<T> dx, Mat<T> dw, Mat<T> db) {
    const Index B = x.rows(), I = x.cols(), O = w.rows();
    check_shape("dout", dout.rows(), dout.cols(), B, O);
    check_shape("dx", dx.rows(), dx.cols(), B, I);
    check_shape("dw", dw.rows(), dw.cols(), O, I);
    check_shape("db", db.rows(), db.cols(), 1, O);
    linear_backward(dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(), B, I, O);
    return py::make_tuple(dx, dw, db);
  }, py::arg("dout"), py::arg("x"), py::arg("w"), py::arg("dx"), py::arg("dw"), py::arg("db"),
     "(dx + dout w, dw + doutᵀ x, db + Σ dout): accumulates, as the engine's backward does.");
  k.def("bernoulli_logpdf", [](CRef x, CRef logits) {
    check_cols("logits", logits.rows(), logits.cols(), x.cols());
    if (logits.rows() % x.rows() != 0)
      fail("logits must have a multiple of x's rows, got " + std::to_string(logits.rows()) + " and " +
           std::to_string(x.rows()));
    Vec<double> logp(logits.rows());
    Mat<T> sig(logits.rows(), logits.cols());
    bernoulli_logpdf_forward(logp.data(), x.data(), logits.data(), logits.rows(), x.rows(), x.cols(), sig.data());
    return py::make_tuple(logp, sig);
  }, py::arg("x"), py::arg("logits"),
        "x (B, D), logits (S*B, D) -> (log p (S*B) = sum_j x*l - softplus(l), sigmoid(logits) (S*B, D)).");
}

// value_range(a) -> (min, max) of a C-contiguous float32 or float64 array, NaN when any entry is
// NaN: the input checks of large arrays (_validation.as_array) in one parallel pass.
template <class T>
void bind_value_range(py::module_& m) {
  m.def("value_range", [](py::array_t<T, py::array::c_style> a) {
    if (a.size() == 0) fail("a must not be empty, got an array of size 0");
    T lo, hi;
    {
      py::gil_scoped_release nogil;
      simd::value_range(a.data(), Index(a.size()), lo, hi);
    }
    return py::make_tuple(double(lo), double(hi));
  }, py::arg("a"), "(min, max) of a float32/float64 array in one pass, both NaN when any entry is NaN.");
}

void bind_kernels(py::module_& m) {
  bind_value_range<float>(m);
  bind_value_range<double>(m);
  auto k = m.def_submodule("kernels", "element-wise kernels, exposed for tests");
  auto k32 = k.def_submodule("float32");
  auto k64 = k.def_submodule("float64");
  bind_kernels_for<float>(k32);
  bind_kernels_for<double>(k64);
}

}  // namespace elbokit_py
