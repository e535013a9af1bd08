// bind_train.hpp: runs the shared training loop for any model with the GIL released, reporting
// progress to a Python callable, and turns the history into a dict of NumPy arrays.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>

#include "elbokit/train.hpp"

namespace elbokit_py {
namespace py = pybind11;

inline py::dict history_to_dict(const elbokit::FitHistory& h) {
  py::dict d;
  auto arr = [](const std::vector<double>& v) { return py::array_t<double>(py::ssize_t(v.size()), v.data()); };
  d["train_loss"] = arr(h.train_loss);
  d["train_elbo"] = arr(h.train_elbo);
  d["train_reconstruction"] = arr(h.train_reconstruction);
  d["train_kl"] = arr(h.train_kl);
  d["beta"] = arr(h.beta);
  d["grad_norm"] = arr(h.grad_norm);
  d["val_elbo"] = arr(h.val_elbo);
  d["val_reconstruction"] = arr(h.val_reconstruction);
  d["val_kl"] = arr(h.val_kl);
  d["step_loss"] = arr(h.step_loss);
  d["kl_terms"] = py::cast(h.kl_terms);
  d["active_units"] = py::cast(h.active_units);
  d["steps"] = h.steps;
  d["stopped_early"] = h.stopped_early;
  return d;
}

inline elbokit::FitOptions fit_options_from(const py::dict& d) {
  elbokit::FitOptions o;
  for (auto item : d) {
    const std::string k = py::str(item.first);
    py::handle v = item.second;
    if (k == "epochs") o.epochs = v.cast<elbokit::Index>();
    else if (k == "batch_size") o.batch_size = v.cast<elbokit::Index>();
    else if (k == "optimizer") o.optim.kind = v.cast<std::string>();
    else if (k == "lr") o.optim.lr = v.cast<double>();
    else if (k == "momentum") o.optim.momentum = v.cast<double>();
    else if (k == "weight_decay") o.optim.weight_decay = v.cast<double>();
    else if (k == "beta") o.beta = v.cast<double>();
    else if (k == "warmup_steps") o.warmup_steps = v.cast<elbokit::Index>();
    else if (k == "free_bits") o.free_bits = v.cast<double>();
    else if (k == "n_samples") o.n_samples = v.cast<elbokit::Index>();
    else if (k == "kl") o.kl = v.cast<std::string>();
    else if (k == "clip_norm") o.clip_norm = v.cast<double>();
    else if (k == "seed") o.seed = v.cast<uint64_t>();
    else if (k == "report_every") o.report_every = v.cast<elbokit::Index>();
    else if (k == "active_units") o.active_units = v.cast<bool>();
    else throw std::invalid_argument("unknown fit option '" + k + "'");
  }
  elbokit::validate(o);
  return o;
}

// Thrown out of the training loop when the Python allreduce raised (the error is rethrown after).
struct AllreduceFailed : std::runtime_error {
  AllreduceFailed() : std::runtime_error("allreduce failed") {}
};

// comm: None (one process) or (rank, size, allreduce), allreduce(grad (P,), stats (n,)) a Python
// callable that sums both float arrays over the processes in place (python/elbokit/distributed.py).
template <class T>
elbokit::Collective<T> collective_from(py::object comm, std::optional<py::error_already_set>& py_error) {
  elbokit::Collective<T> c;
  if (comm.is_none()) return c;
  py::tuple t = comm.cast<py::tuple>();
  if (t.size() != 3) throw std::invalid_argument("comm must be (rank, size, allreduce)");
  c.rank = t[0].cast<int>();
  c.size = t[1].cast<int>();
  py::object fn = t[2];
  c.allreduce = [fn, &py_error](T* grad, elbokit::Index P, double* stats, elbokit::Index n) {
    py::gil_scoped_acquire gil;
    try {
      // views of the engine's buffers (a base object: no copy)
      py::array_t<T> g({py::ssize_t(P)}, {py::ssize_t(sizeof(T))}, grad, py::none());
      py::array_t<double> s({py::ssize_t(n)}, {py::ssize_t(sizeof(double))}, stats, py::none());
      fn(g, s);
    } catch (py::error_already_set& e) {
      py_error.emplace(std::move(e));
      throw AllreduceFailed();
    }
  };
  return c;
}

// Returns (history, error message or None, failing step or -1).
template <class T, class Model>
py::tuple run_fit(Model& model, Eigen::Ref<const elbokit::Mat<T>> x, std::optional<Eigen::Ref<const elbokit::Mat<T>>> xval,
                  const py::dict& options, py::object callback, py::object comm = py::none()) {
  const elbokit::FitOptions o = fit_options_from(options);
  elbokit::check_cols("x", x.rows(), x.cols(), model.data_dim());
  if (xval) elbokit::check_cols("validation", xval->rows(), xval->cols(), model.data_dim());
  elbokit::FitHistory hist;
  std::optional<py::error_already_set> py_error;
  const elbokit::Collective<T> coll = collective_from<T>(comm, py_error);
  elbokit::ProgressFn fn;
  if (!callback.is_none()) {
    fn = [&](const elbokit::Progress& p) {
      py::gil_scoped_acquire gil;
      try {
        py::object r = callback(p.epoch, p.epochs, p.step, p.total_steps, p.loss, p.val_elbo, p.epoch_end);
        return r.is_none() || r.cast<bool>();
      } catch (py::error_already_set& e) {
        py_error.emplace(std::move(e));
        return false;
      }
    };
  }
  std::string err;
  elbokit::Index err_step = -1;
  {
    py::gil_scoped_release nogil;
    try {
      elbokit::fit<T>(model, x.data(), x.rows(), xval ? xval->data() : nullptr, xval ? xval->rows() : 0, o, hist, fn,
                      coll);
    } catch (const elbokit::NonFiniteError& e) {
      err = e.what();
      err_step = e.step();
    } catch (const AllreduceFailed&) {
    }
  }
  if (py_error) throw std::move(*py_error);
  return py::make_tuple(history_to_dict(hist), err.empty() ? py::object(py::none()) : py::object(py::str(err)), err_step);
}

// bind_fit: the "fit" method of a model class that runs the shared loop as it is.
template <class T, class M, class Cls>
Cls& bind_fit(Cls& cls) {
  using CRef = Eigen::Ref<const elbokit::Mat<T>>;
  cls.def("fit", [](M& v, CRef x, std::optional<CRef> xval, const py::dict& options, py::object callback,
                    py::object comm) {
    return run_fit<T>(v, x, xval, options, callback, comm);
  }, py::arg("x"), py::arg("validation"), py::arg("options"), py::arg("callback"), py::arg("comm") = py::none());
  return cls;
}

}  // namespace elbokit_py
