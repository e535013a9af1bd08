// bind_flows.cpp: elbokit._core.Flow_f32 / Flow_f64 (MATH.md §8). Arrays are row-major, batch along rows.
#include <pybind11/eigen.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "bind_train.hpp"
#include "bind_params.hpp"
#include "bindings.hpp"
#include "elbokit/flows.hpp"

namespace py = pybind11;
using namespace elbokit;

namespace elbokit_py {

template <class T>
void bind_flow_t(py::module_& m, const char* name) {
  using M = Flow<T>;
  using CRef = Eigen::Ref<const Mat<T>>;
  py::class_<M> cls(m, name);
  bind_param_methods<T, M>(cls);
  bind_fit<T, M>(cls);
  cls
      .def(py::init([](Index dim, std::vector<std::string> layers, std::vector<Index> hidden, std::string activation,
                       uint64_t seed) {
             FlowConfig c;
             c.dim = dim;
             c.layers = std::move(layers);
             c.hidden = std::move(hidden);
             c.activation = std::move(activation);
             return new M(c, seed);
           }),
           py::arg("dim"), py::arg("layers"), py::arg("hidden"), py::arg("activation"), py::arg("seed"))
      .def("forward", [](M& v, CRef x) {
        Mat<T> z;
        FlowTerms t;
        {
          py::gil_scoped_release nogil;
          v.forward(x, z, t);
        }
        return py::make_tuple(z, t.prior, t.logdet);
      }, py::arg("x"), "x (B, D) -> (z = f(x) (B, D), log N(z; 0, I) (B), log|det df/dx| (B)).")
      .def("inverse", [](M& v, CRef z) {
        py::gil_scoped_release nogil;
        return v.inverse(z);
      }, py::arg("z"), "z (B, D) -> x = f^-1(z) (B, D).")
      .def("vjp", [](M& v, CRef x, CRef dz, const Vec<double>& dlogdet) {
        if (dlogdet.size() != x.rows())
          fail("dlogdet must have " + std::to_string(x.rows()) + " entries (one per row of x), got " +
               std::to_string(dlogdet.size()));
        Vec<T> grad = Vec<T>::Zero(v.num_params());
        Mat<T> dx(x.rows(), x.cols());
        {
          py::gil_scoped_release nogil;
          v.vjp(x, dz, dlogdet.data(), grad.data(), dx.data());
        }
        return py::make_tuple(grad, dx);
      }, py::arg("x"), py::arg("dz"), py::arg("dlogdet"),
           "For J = sum(dz * z) + sum(dlogdet * logdet): (dJ/dtheta (P), dJ/dx (B, D)).")
      .def("objective_grad", [](M& v, CRef x, double scale) {
        Vec<T> grad = Vec<T>::Zero(v.num_params());
        FlowTerms t;
        double J;
        {
          py::gil_scoped_release nogil;
          J = v.objective_grad(x, scale, grad.data(), &t);
        }
        return py::make_tuple(J, t.prior, t.logdet, grad);
      }, py::arg("x"), py::arg("scale"), "-> (mean log p(x), prior (B), logdet (B), scale * dJ/dtheta (P)).");
}

void bind_flows(py::module_& m) {
  bind_flow_t<float>(m, "Flow_f32");
  bind_flow_t<double>(m, "Flow_f64");
}

}  // namespace elbokit_py
