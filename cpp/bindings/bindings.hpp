// bindings.hpp: the pieces of the elbokit._core module, one file per concept.
#pragma once
#include <pybind11/pybind11.h>

namespace elbokit_py {
void bind_rng(pybind11::module_& m);
void bind_nets(pybind11::module_& m);
void bind_vae(pybind11::module_& m);
void bind_hvae(pybind11::module_& m);
void bind_diffusion(pybind11::module_& m);
void bind_flows(pybind11::module_& m);
void bind_autoencoder(pybind11::module_& m);
void bind_surgery(pybind11::module_& m);
void bind_kernels(pybind11::module_& m);
void bind_conv(pybind11::module_& m);
}  // namespace elbokit_py
