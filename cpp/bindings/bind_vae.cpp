// bind_vae.cpp: elbokit._core.VAE_f32 / VAE_f64. Arrays are row-major, batch along rows.
#include <pybind11/eigen.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "bind_train.hpp"
#include "bind_params.hpp"
#include "bindings.hpp"
#include "elbokit/vae.hpp"

namespace py = pybind11;
using namespace elbokit;

namespace elbokit_py {

template <class T>
void bind_vae_t(py::module_& m, const char* name) {
  using M = VAE<T>;
  using CRef = Eigen::Ref<const Mat<T>>;
  py::class_<M> cls(m, name);
  bind_param_methods<T, M>(cls);
  bind_fit<T, M>(cls);
  cls
      .def(py::init([](Index x_dim, Index z_dim, NetSpec encoder, NetSpec decoder, std::string likelihood,
                       bool learned_var, double fixed_var, uint64_t seed) {
             VAEConfig c;
             c.x_dim = x_dim;
             c.z_dim = z_dim;
             c.encoder = std::move(encoder);
             c.decoder = std::move(decoder);
             c.likelihood = std::move(likelihood);
             c.learned_var = learned_var;
             c.fixed_var = fixed_var;
             return new M(c, seed);
           }),
           py::arg("x_dim"), py::arg("z_dim"), py::arg("encoder"), py::arg("decoder"), py::arg("likelihood"),
           py::arg("learned_var"), py::arg("fixed_var"), py::arg("seed"))
      .def("encode", [](M& v, CRef x) {
        Mat<T> mu, lv;
        {
          py::gil_scoped_release nogil;
          v.encode(x, mu, lv);
        }
        return py::make_tuple(mu, lv);
      }, py::arg("x"), "x (B, D) -> (mu (B, Z), logvar (B, Z)).")
      .def("decode", [](M& v, CRef z, bool mean) {
        py::gil_scoped_release nogil;
        return v.decode(z, mean);
      }, py::arg("z"), py::arg("mean"), "z (B, Z) -> logits or means (B, D); probabilities if mean.")
      .def("decoder_logvar", &M::decoder_logvar)
      .def("active_units", [](M& v, CRef x) {
        check_cols("x", x.rows(), x.cols(), v.data_dim());
        py::gil_scoped_release nogil;
        return v.active_units(x.data(), x.rows())[0];
      }, py::arg("x"), "Latent dimensions with Var_x E_q[z_j] > 0.01 over x (B, D).")
      .def("elbo", [](M& v, CRef x, CRef eps, Index S, const std::string& kl) {
        const KLMode mode = kl_from_string(kl);
        ElboTerms t;
        {
          py::gil_scoped_release nogil;
          t = v.elbo(x, eps, S, mode);
        }
        return py::make_tuple(t.reconstruction, t.kl, t.kl_per_dim);
      }, py::arg("x"), py::arg("eps"), py::arg("n_samples"), py::arg("kl"),
           "x (B, D), eps (S*B, Z) -> (reconstruction (B), kl (B), kl_per_dim (B, Z)).")
      .def("objective_grad", [](M& v, CRef x, CRef eps, Index S, const std::string& kl, double beta,
                                double free_bits, double scale) {
        const KLMode mode = kl_from_string(kl);
        Vec<T> grad = Vec<T>::Zero(v.num_params());
        ElboTerms t;
        double J;
        {
          py::gil_scoped_release nogil;
          J = v.objective_grad(x, eps, S, mode, beta, free_bits, scale, grad.data(), &t);
        }
        return py::make_tuple(J, t.reconstruction, t.kl, t.kl_per_dim, grad);
      }, py::arg("x"), py::arg("eps"), py::arg("n_samples"), py::arg("kl"), py::arg("beta"), py::arg("free_bits"),
           py::arg("scale"), "-> (objective, reconstruction (B), kl (B), kl_per_dim (B, Z), scale * dJ/dtheta (P)).")
      .def("encoder_backward", [](M& v, CRef x, CRef dmu, CRef dlogvar) {
        Vec<T> grad = Vec<T>::Zero(v.num_params());
        {
          py::gil_scoped_release nogil;
          v.encoder_backward(x, dmu, dlogvar, grad.data());
        }
        return grad;
      }, py::arg("x"), py::arg("dmu"), py::arg("dlogvar"),
           "x (B, D), dmu and dlogvar (B, Z) = dJ/d(mu, logvar) -> dJ/dtheta (P) (encoder entries only).")
      .def("log_likelihood", [](M& v, CRef x, Index K, uint64_t seed, Index row0) {
        if (row0 < 0) fail("row0 must be >= 0, got " + std::to_string(row0));
        py::gil_scoped_release nogil;
        return v.log_likelihood(x, K, seed, row0);
      }, py::arg("x"), py::arg("k"), py::arg("seed"), py::arg("row0") = 0,
         "x (B, D) -> L_K (B); row0: x's first row's index in the set whose noise is reproduced.");
}

void bind_vae(py::module_& m) {
  bind_vae_t<float>(m, "VAE_f32");
  bind_vae_t<double>(m, "VAE_f64");
  m.attr("DECODER_LOGVAR_MIN") = kDecoderLogvarMin;
  m.attr("DECODER_LOGVAR_MAX") = kDecoderLogvarMax;
}

}  // namespace elbokit_py
