// bind_diffusion.cpp: elbokit._core.Diffusion_f32 / Diffusion_f64. Arrays are row-major, batch along
// rows; steps t are int64 arrays with values in 1 … T.
#include <pybind11/eigen.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "bind_train.hpp"
#include "bind_params.hpp"
#include "bindings.hpp"
#include "elbokit/diffusion.hpp"

namespace py = pybind11;
using namespace elbokit;

namespace elbokit_py {

namespace {
py::dict schedule_dict(const Schedule& s) {
  auto arr = [](const std::vector<double>& v) { return py::array_t<double>(py::ssize_t(v.size() - 1), v.data() + 1); };
  py::dict d;
  d["betas"] = arr(s.betas);
  d["alphas"] = arr(s.alphas);
  d["alphas_cumprod"] = arr(s.alphas_cumprod);
  d["posterior_variance"] = arr(s.posterior_variance);
  return d;
}

py::tuple elbo_tuple(const DiffusionElboTerms& t) { return py::make_tuple(t.reconstruction, t.prior, t.steps); }
}  // namespace

template <class T>
void bind_diffusion_t(py::module_& m, const char* name) {
  using M = Diffusion<T>;
  using CRef = Eigen::Ref<const Mat<T>>;
  using Steps = std::vector<Index>;
  py::class_<M> cls(m, name);
  bind_param_methods<T, M>(cls);
  cls
      .def(py::init([](Index x_dim, std::vector<double> betas, NetSpec net, Index emb_dim, std::string prediction,
                       std::string variance, std::string data, uint64_t seed) {
             DiffusionConfig c;
             c.x_dim = x_dim;
             c.betas = std::move(betas);
             c.net = std::move(net);
             c.emb_dim = emb_dim;
             c.prediction = std::move(prediction);
             c.variance = std::move(variance);
             c.data = std::move(data);
             return new M(c, seed);
           }),
           py::arg("x_dim"), py::arg("betas"), py::arg("net"), py::arg("emb_dim"), py::arg("prediction"), py::arg("variance"), py::arg("data"), py::arg("seed"))
      .def("schedule", [](const M& v) { return schedule_dict(v.schedule()); },
           "{betas, alphas, alphas_cumprod, posterior_variance}: arrays (T) for t = 1 … T.")
      .def("sigma2", [](const M& v) {
        Vec<double> s(v.timesteps());
        for (Index t = 1; t <= v.timesteps(); ++t) s[t - 1] = v.sigma2(t);
        return s;
      }, "σ_t² of p(x_{t-1}|x_t) for t = 1 … T (T).")
      .def("q_sample", [](const M& v, CRef x0, const Steps& t, CRef eps) { return v.q_sample(x0, t, eps); },
           py::arg("x0"), py::arg("t"), py::arg("eps"), "x0 (B, D), t (B), eps (B, D) -> x_t (B, D).")
      .def("q_posterior", [](const M& v, CRef x0, CRef xt, const Steps& t) {
        Mat<T> mean;
        Vec<double> var;
        v.q_posterior(x0, xt, t, mean, var);
        return py::make_tuple(mean, var);
      }, py::arg("x0"), py::arg("xt"), py::arg("t"), "-> (mean (B, D), variance (B)) of q(x_{t-1}|x_t, x_0).")
      .def("p_mean_variance", [](M& v, CRef xt, const Steps& t) {
        Mat<T> mean, eps, x0;
        Mat<double> var;
        {
          py::gil_scoped_release nogil;
          v.p_mean_variance(xt, t, mean, var, eps, x0);
        }
        py::object vo = v.learned_variance() ? py::cast(var) : py::cast(Vec<double>(var.col(0)));
        return py::make_tuple(mean, vo, eps, x0);
      }, py::arg("xt"), py::arg("t"),
           "-> (mean (B, D), variance (B) or (B, D) for 'learned', eps_hat (B, D), x0_hat (B, D)).")
      .def("loss", [](M& v, CRef x0, const Steps& t, CRef eps, const std::string& kind) {
        const LossKind k = loss_from_string(kind);
        LossTerms r;
        {
          py::gil_scoped_release nogil;
          r = v.loss(x0, t, eps, k);
        }
        return py::make_tuple(r.loss, r.sq, r.step, r.prior);
      }, py::arg("x0"), py::arg("t"), py::arg("eps"), py::arg("kind"),
           "-> (loss (B), |eps - eps_hat|^2 (B), L_t (B), prior KL (B)).")
      .def("loss_grad", [](M& v, CRef x0, const Steps& t, CRef eps, const std::string& kind) {
        const LossKind k = loss_from_string(kind);
        Vec<T> grad = Vec<T>::Zero(v.num_params());
        LossTerms r;
        double J;
        {
          py::gil_scoped_release nogil;
          J = v.loss_grad(x0, t, eps, k, 1.0, grad.data(), &r);
        }
        return py::make_tuple(J, r.loss, grad);
      }, py::arg("x0"), py::arg("t"), py::arg("eps"), py::arg("kind"), "-> (mean loss, loss (B), dJ/dtheta (P)).")
      .def("elbo", [](M& v, CRef x0, const std::string& form, uint64_t seed, Index row0) {
        if (form != "denoising" && form != "consistency")
          fail("form must be one of 'denoising', 'consistency', got '" + form + "'");
        if (row0 < 0) fail("row0 must be >= 0, got " + std::to_string(row0));
        DiffusionElboTerms t;
        {
          py::gil_scoped_release nogil;
          t = form == "denoising" ? v.elbo_denoising(x0, seed, row0) : v.elbo_consistency(x0, seed, row0);
        }
        return elbo_tuple(t);
      }, py::arg("x0"), py::arg("form"), py::arg("seed"), py::arg("row0") = 0,
         "-> (reconstruction (B), prior (B), steps (B, T)); row0: x0's first row's index in the set whose noise "
         "is reproduced.")
      .def("sample", [](M& v, Index n, const std::string& method, Index steps, double eta, uint64_t seed, bool traj) {
        Mat<T> tr, x;
        std::vector<Index> times;
        {
          py::gil_scoped_release nogil;
          x = v.sample(n, method, steps, eta, seed, traj ? &tr : nullptr, traj ? &times : nullptr);
        }
        if (!traj) return py::tuple(py::make_tuple(x, py::none(), py::none()));
        return py::tuple(py::make_tuple(x, tr, times));
      }, py::arg("n"), py::arg("method"), py::arg("steps"), py::arg("eta"), py::arg("seed"), py::arg("trajectory"),
           "-> (x (n, D), trajectory ((S+1)*n, D) or None, steps visited or None).")
      .def("ema_flat", [](M& v) { return Vec<T>(v.ema()); }, "The EMA buffer (P) (after fit with ema: the last iterate).")
      .def("fit", [](M& v, CRef x, std::optional<CRef> xval, const py::dict& options, py::object callback,
                     const std::string& loss, double ema, py::object comm) {
        v.set_train_loss(loss_from_string(loss));
        const FitOptions o = fit_options_from(options);
        if (o.beta != 1.0 || o.warmup_steps != 0 || o.free_bits != 0.0 || o.n_samples != 1 || o.kl != "analytic")
          fail("beta, warmup_steps, free_bits, n_samples and kl are VAE options; a diffusion model takes none of them");
        if (ema > 0) v.ema_begin(ema);
        try {
          py::tuple r = run_fit<T>(v, x, xval, options, callback, comm);
          if (ema > 0) v.ema_end(r[1].is_none());  // keep the last finite iterate on divergence
          return r;
        } catch (...) {
          if (ema > 0) v.ema_end(false);
          throw;
        }
      }, py::arg("x"), py::arg("validation"), py::arg("options"), py::arg("callback"), py::arg("loss"), py::arg("ema"),
         py::arg("comm") = py::none());
}

void bind_diffusion(py::module_& m) {
  bind_diffusion_t<float>(m, "Diffusion_f32");
  bind_diffusion_t<double>(m, "Diffusion_f64");
  m.def("schedule_betas", &schedule_betas, py::arg("kind"), py::arg("timesteps"),
        "β_1 … β_T of a named schedule ('linear' or 'cosine').");
  m.attr("HYBRID_LAMBDA") = kHybridLambda;
  m.attr("STREAM_DIFFUSION_ELBO") = streams::kDiffusionElbo;
  m.attr("STREAM_DIFFUSION_CHAIN") = streams::kDiffusionChain;
  m.attr("STREAM_DIFFUSION_VAL_TIME") = streams::kDiffusionValTime;
  m.attr("STREAM_DIFFUSION_TIME") = streams::kDiffusionTime;
}

}  // namespace elbokit_py
