// bind_autoencoder.cpp: elbokit._core.Autoencoder_f32 / Autoencoder_f64 (MATH.md §9).
#include <pybind11/eigen.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "bind_train.hpp"
#include "bind_params.hpp"
#include "bindings.hpp"
#include "elbokit/autoencoder.hpp"

namespace py = pybind11;
using namespace elbokit;

namespace elbokit_py {

template <class T>
void bind_autoencoder_t(py::module_& m, const char* name) {
  using M = Autoencoder<T>;
  using CRef = Eigen::Ref<const Mat<T>>;
  py::class_<M> cls(m, name);
  bind_param_methods<T, M>(cls);
  bind_fit<T, M>(cls);
  cls
      .def(py::init([](Index x_dim, Index code_dim, std::vector<Index> hidden, std::string activation,
                       std::string code_activation, std::string kind, double noise_std, double contraction,
                       uint64_t seed) {
             AutoencoderConfig c;
             c.x_dim = x_dim;
             c.code_dim = code_dim;
             c.hidden = std::move(hidden);
             c.activation = std::move(activation);
             c.code_activation = std::move(code_activation);
             c.kind = std::move(kind);
             c.noise_std = noise_std;
             c.contraction = contraction;
             return new M(c, seed);
           }),
           py::arg("x_dim"), py::arg("code_dim"), py::arg("hidden"), py::arg("activation"),
           py::arg("code_activation"), py::arg("kind"), py::arg("noise_std"), py::arg("contraction"), py::arg("seed"))
      .def("encode", [](M& v, CRef x) {
        py::gil_scoped_release nogil;
        return v.encode(x);
      }, py::arg("x"), "x (B, D) -> code (B, C).")
      .def("decode", [](M& v, CRef y) {
        py::gil_scoped_release nogil;
        return v.decode(y);
      }, py::arg("code"), "code (B, C) -> reconstruction (B, D).")
      .def("loss_grad", [](M& v, CRef x, std::optional<CRef> noise, double scale, bool with_grad) {
        Vec<T> grad = Vec<T>::Zero(with_grad ? v.num_params() : 0);
        AELossTerms t;
        double J;
        {
          py::gil_scoped_release nogil;
          J = v.loss_grad(x, noise ? *noise : CRef(Mat<T>()), scale, with_grad ? grad.data() : nullptr, &t);
        }
        return py::make_tuple(J, t.reconstruction, t.penalty, grad);
      }, py::arg("x"), py::arg("noise"), py::arg("scale"), py::arg("with_grad"),
           "x (B, D), noise (B, D) or None -> (loss, squared error (B), penalty (B), scale * dJ/dtheta (P)).");
}

void bind_autoencoder(py::module_& m) {
  bind_autoencoder_t<float>(m, "Autoencoder_f32");
  bind_autoencoder_t<double>(m, "Autoencoder_f64");
}

}  // namespace elbokit_py
