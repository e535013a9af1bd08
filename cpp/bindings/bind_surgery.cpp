// bind_surgery.cpp: the aggregate posterior's log-density, the O(M·N·Z) kernel of the ELBO
// surgery (MATH.md §4).
#include <pybind11/eigen.h>
#include <pybind11/numpy.h>

#include "bindings.hpp"
#include "elbokit/distributions.hpp"

namespace py = pybind11;
using namespace elbokit;

namespace elbokit_py {

void bind_surgery(py::module_& m) {
  using CRef = Eigen::Ref<const Mat<double>>;
  m.def("log_aggregate_posterior", [](CRef z, CRef mu, CRef logvar) {
    check_cols("mu", mu.rows(), mu.cols(), mu.cols() > 0 ? mu.cols() : 1);
    check_shape("logvar", logvar.rows(), logvar.cols(), mu.rows(), mu.cols());
    check_cols("z", z.rows(), z.cols(), mu.cols());
    Vec<double> out(z.rows());
    {
      py::gil_scoped_release nogil;
      log_aggregate_forward(out.data(), z.data(), z.rows(), mu.data(), logvar.data(), mu.rows(), mu.cols());
    }
    return out;
  }, py::arg("z"), py::arg("mu"), py::arg("logvar"),
        "z (M, Z), mu and logvar (N, Z) -> log (1/N) sum_i N(z_m; mu_i, diag exp(logvar_i)) (M), float64.");
}

}  // namespace elbokit_py
