// module.cpp: the extension elbokit._core. std::invalid_argument arrives as ValueError.
#include <omp.h>

#include "bindings.hpp"
#include "elbokit/gemm.hpp"
#include "elbokit/train.hpp"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
  m.doc() = "elbokit's C++ engine (private: use the elbokit package)";
  elbokit::gemm_init();
  m.def("gemm_backend", &elbokit::gemm_backend, "The library behind the engine's matrix products.");
  m.def("vector_isa", []() -> std::string {
#if defined(__AVX512F__)
    return "avx512";
#elif defined(__AVX2__)
    return "avx2";
#else
    return "baseline";
#endif
  }, "The vector instructions the engine was compiled for: 'avx512', 'avx2' or 'baseline'.");
  m.def("num_threads", []() { return omp_get_max_threads(); }, "OpenMP threads used by the engine.");
  m.def("set_num_threads", [](int n) {
    if (n <= 0) throw std::invalid_argument("n must be a positive integer, got " + std::to_string(n));
    omp_set_num_threads(n);
  }, py::arg("n"), "Sets the number of OpenMP threads; results do not depend on it.");
  elbokit_py::bind_rng(m);
  elbokit_py::bind_nets(m);
  elbokit_py::bind_vae(m);
  elbokit_py::bind_hvae(m);
  elbokit_py::bind_diffusion(m);
  elbokit_py::bind_flows(m);
  elbokit_py::bind_autoencoder(m);
  elbokit_py::bind_surgery(m);
  elbokit_py::bind_kernels(m);
  elbokit_py::bind_conv(m);
}
