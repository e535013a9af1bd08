// bind_rng.cpp: the counter-based generator, so that Python can reproduce the engine's noise.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "bindings.hpp"
#include "elbokit/common.hpp"
#include "elbokit/rng.hpp"

namespace py = pybind11;
using namespace elbokit;

namespace elbokit_py {

void bind_rng(py::module_& m) {
  m.def("normal", [](uint64_t seed, uint64_t stream, int64_t n, uint64_t offset) {
    if (n < 0) fail("size must be >= 0, got " + std::to_string(n));
    py::array_t<double> out(n);
    double* p = out.mutable_data();
    {
      py::gil_scoped_release nogil;
      fill_normal(p, n, seed, stream, offset);
    }
    return out;
  }, py::arg("seed"), py::arg("stream"), py::arg("n"), py::arg("offset") = 0,
        "n standard normal numbers (float64): number i is a pure function of (seed, stream, offset + i).");
  m.def("uniform", [](uint64_t seed, uint64_t stream, int64_t n) {
    if (n < 0) fail("size must be >= 0, got " + std::to_string(n));
    py::array_t<double> out(n);
    double* p = out.mutable_data();
    for (int64_t i = 0; i < n; ++i) p[i] = uniform_at(seed, stream, uint64_t(i));
    return out;
  }, py::arg("seed"), py::arg("stream"), py::arg("n"), "n uniform numbers in (0, 1) (float64).");
  m.def("permutation", [](int64_t n, uint64_t seed, uint64_t stream) {
    if (n < 0) fail("n must be >= 0, got " + std::to_string(n));
    const std::vector<int64_t> p = permutation(n, seed, stream);
    return py::array_t<int64_t>(py::ssize_t(p.size()), p.data());
  }, py::arg("n"), py::arg("seed"), py::arg("stream"), "The engine's shuffling permutation of 0..n-1.");
  m.def("philox4x32_10", [](std::array<uint32_t, 4> ctr, std::array<uint32_t, 2> key) {
    return philox4x32_10(ctr, key[0], key[1]);
  }, py::arg("counter"), py::arg("key"), "The raw Philox4x32-10 block function (for known-answer tests).");
  m.attr("STREAM_SAMPLE") = streams::kSample;
  m.attr("STREAM_LOG_LIKELIHOOD") = streams::kLogLikelihood;
  m.attr("STREAM_SHUFFLE") = streams::kShuffle;
  m.attr("STREAM_TRAIN_NOISE") = streams::kTrainNoise;
  m.attr("STREAM_VALIDATION") = streams::kValidation;
}

}  // namespace elbokit_py
