// bind_hvae.cpp: elbokit._core.HVAE_f32 / HVAE_f64. Arrays are row-major, batch along rows; noise
// is one array per level, eps[l] (S*B, Z_l) with row s*B + b.
#include <pybind11/eigen.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "bind_train.hpp"
#include "bind_params.hpp"
#include "bindings.hpp"
#include "elbokit/hvae.hpp"

namespace py = pybind11;
using namespace elbokit;

namespace elbokit_py {

// The engine's level-blocked noise buffer (hvae.hpp) from one (rows, Z_l) array per level.
template <class T>
Vec<T> flat_eps(const HVAE<T>& m, const std::vector<Mat<T>>& eps, Index rows) {
  const std::vector<Index>& zd = m.config().z_dims;
  if (eps.size() != zd.size())
    fail("eps must hold one array per level (" + std::to_string(zd.size()) + "), got " + std::to_string(eps.size()));
  Vec<T> out(rows * m.z_total());
  Index off = 0;
  for (size_t l = 0; l < eps.size(); ++l) {
    const std::string name = "eps[" + std::to_string(l) + "]";
    check_shape(name.c_str(), eps[l].rows(), eps[l].cols(), rows, zd[l]);
    check_finite(name.c_str(), eps[l].data(), eps[l].size());
    std::copy(eps[l].data(), eps[l].data() + eps[l].size(), out.data() + off);
    off += eps[l].size();
  }
  return out;
}

template <class T>
void bind_hvae_t(py::module_& m, const char* name) {
  using M = HVAE<T>;
  using CRef = Eigen::Ref<const Mat<T>>;
  py::class_<M> cls(m, name);
  bind_param_methods<T, M>(cls);
  bind_fit<T, M>(cls);
  cls
      .def(py::init([](Index x_dim, std::vector<Index> z_dims, std::vector<Index> hidden, std::string structure,
                       std::string activation, std::string likelihood, bool learned_var, double fixed_var,
                       uint64_t seed, std::optional<NetSpec> level0) {
             HVAEConfig c;
             c.x_dim = x_dim;
             c.z_dims = std::move(z_dims);
             c.encoder = mlp_spec(hidden, activation);
             c.decoder = mirrored(c.encoder);
             c.encoder0 = c.decoder0 = level0;  // a conv net: its decoder runs the channels reversed
             c.structure = std::move(structure);
             c.likelihood = std::move(likelihood);
             c.learned_var = learned_var;
             c.fixed_var = fixed_var;
             return new M(c, seed);
           }),
           py::arg("x_dim"), py::arg("z_dims"), py::arg("hidden"), py::arg("structure"), py::arg("activation"),
           py::arg("likelihood"), py::arg("learned_var"), py::arg("fixed_var"), py::arg("seed"),
           py::arg("level0") = py::none())
      .def("encode", [](M& v, CRef x, std::optional<std::vector<Mat<T>>> eps) {
        std::vector<Mat<T>> mu, lv;
        Vec<T> e;
        if (eps) e = flat_eps(v, *eps, x.rows());
        {
          py::gil_scoped_release nogil;
          v.encode(x, eps ? e.data() : nullptr, mu, lv);
        }
        py::list out;
        for (size_t l = 0; l < mu.size(); ++l) out.append(py::make_tuple(mu[l], lv[l]));
        return out;
      }, py::arg("x"), py::arg("eps"),
           "x (B, D), eps None (the mean path) or [eps_l (B, Z_l)] -> [(mu_l (B, Z_l), logvar_l (B, Z_l))].")
      .def("decode", [](M& v, CRef z, Index level, bool mean) {
        py::gil_scoped_release nogil;
        return v.decode(z, level, mean);
      }, py::arg("z"), py::arg("level"), py::arg("mean"),
           "z (B, Z_level) -> logits or means (B, D) through the prior's conditional means.")
      .def("prior", [](M& v, CRef z, Index level) {
        Mat<T> mu, lv;
        {
          py::gil_scoped_release nogil;
          v.prior(z, level, mu, lv);
        }
        return py::make_tuple(mu, lv);
      }, py::arg("z"), py::arg("level"), "z (B, Z_level) -> (mu, logvar) (B, Z_{level-1}) of p(z_{level-1}|z_level).")
      .def("generate", [](M& v, std::vector<Mat<T>> eps, Index n) {
        const Vec<T> e = flat_eps(v, eps, n);
        std::vector<Mat<T>> z;
        Mat<T> x;
        {
          py::gil_scoped_release nogil;
          x = v.generate(n, e.data(), z);
        }
        return py::make_tuple(x, z);
      }, py::arg("eps"), py::arg("n"), "[eps_l (n, Z_l)] -> (mean of p(x|z_1) (n, D), [z_l (n, Z_l)]).")
      .def("decoder_logvar", &M::decoder_logvar)
      .def("elbo", [](M& v, CRef x, std::vector<Mat<T>> eps, Index S, const std::string& kl) {
        const KLMode mode = kl_from_string(kl);
        if (S <= 0) fail("n_samples must be a positive integer, got " + std::to_string(S));
        const Vec<T> e = flat_eps(v, eps, S * x.rows());
        HElboTerms t;
        {
          py::gil_scoped_release nogil;
          t = v.elbo(x, e.data(), S, mode);
        }
        return py::make_tuple(t.reconstruction, t.kl_levels);
      }, py::arg("x"), py::arg("eps"), py::arg("n_samples"), py::arg("kl"),
           "x (B, D), [eps_l (S*B, Z_l)] -> (reconstruction (B), kl_levels (B, L)).")
      .def("objective_grad", [](M& v, CRef x, std::vector<Mat<T>> eps, Index S, const std::string& kl, double beta,
                                double free_bits, double scale) {
        const KLMode mode = kl_from_string(kl);
        if (S <= 0) fail("n_samples must be a positive integer, got " + std::to_string(S));
        const Vec<T> e = flat_eps(v, eps, S * x.rows());
        Vec<T> grad = Vec<T>::Zero(v.num_params());
        HElboTerms t;
        double J;
        {
          py::gil_scoped_release nogil;
          J = v.objective_grad(x, e.data(), S, mode, beta, free_bits, scale, grad.data(), &t);
        }
        return py::make_tuple(J, t.reconstruction, t.kl_levels, grad);
      }, py::arg("x"), py::arg("eps"), py::arg("n_samples"), py::arg("kl"), py::arg("beta"), py::arg("free_bits"),
           py::arg("scale"), "-> (objective, reconstruction (B), kl_levels (B, L), scale * dJ/dtheta (P)).")
      .def("log_likelihood", [](M& v, CRef x, Index K, uint64_t seed, Index row0) {
        if (row0 < 0) fail("row0 must be >= 0, got " + std::to_string(row0));
        py::gil_scoped_release nogil;
        return v.log_likelihood(x, K, seed, row0);
      }, py::arg("x"), py::arg("k"), py::arg("seed"), py::arg("row0") = 0,
         "x (B, D) -> L_K (B); row0: x's first row's index in the set whose noise is reproduced.");
}

void bind_hvae(py::module_& m) {
  bind_hvae_t<float>(m, "HVAE_f32");
  bind_hvae_t<double>(m, "HVAE_f64");
}

}  // namespace elbokit_py
