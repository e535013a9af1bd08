// bind_kernels.cpp: the element-wise kernels (activations, Bernoulli log-likelihood) as they are,
// for the tests that compare them with NumPy/PyTorch on every length and at extreme values.
#include <pybind11/eigen.h>
#include <pybind11/numpy.h>

#include "bindings.hpp"
#include "elbokit/distributions.hpp"

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

void bind_kernels(py::module_& m) {
  auto k = m.def_submodule("kernels", "element-wise kernels, exposed for tests");
  auto k32 = k.def_submodule("float32");
  auto k64 = k.def_submodule("float64");
  bind_kernels_for<float>(k32);
  bind_kernels_for<double>(k64);
}

}  // namespace elbokit_py
