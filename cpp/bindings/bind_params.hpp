// bind_params.hpp: the flat-parameter methods every model class exposes (param_layout, get_flat,
// set_flat), bound once here for any model with layout(), params() and num_params().
#pragma once
#include <pybind11/eigen.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "elbokit/module.hpp"

namespace elbokit_py {

template <class T, class M, class Cls>
Cls& bind_param_methods(Cls& cls) {
  namespace py = pybind11;
  using namespace elbokit;
  cls.def("param_layout", [](const M& v) {
       py::list out;
       for (const ParamEntry& e : v.layout().entries) out.append(py::make_tuple(e.name, e.shape, e.offset, e.size));
       return out;
     }, "[(name, shape, offset, size)] of the flat parameter buffer (P).")
      .def("get_flat", [](M& v) { return Vec<T>(v.params()); }, "A copy of the flat parameters (P).")
      .def("set_flat", [](M& v, const Vec<T>& p) {
        if (p.size() != v.num_params())
          fail("params must have " + std::to_string(v.num_params()) + " entries, got " + std::to_string(p.size()));
        check_finite("params", p.data(), p.size());
        v.params() = p;
      }, py::arg("flat"));
  return cls;
}

}  // namespace elbokit_py
