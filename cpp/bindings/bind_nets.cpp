// bind_nets.cpp: elbokit._core.NetSpec, the description a model builds each of its networks from
// (nets.hpp). The Python layer fills it from the models' arguments.
#include <pybind11/stl.h>

#include "bindings.hpp"
#include "elbokit/nets.hpp"

namespace py = pybind11;
using namespace elbokit;

namespace elbokit_py {

void bind_nets(py::module_& m) {
  py::class_<NetSpec>(m, "NetSpec", "A network's description: kind, layer widths (conv: channels), activation, image shape and GroupNorm groups (conv, unet).")
      .def(py::init([](std::string kind, std::vector<Index> widths, std::string activation, std::string arg,
                       std::vector<Index> image_shape) {
             NetSpec s;
             s.image_shape = std::move(image_shape);
             s.kind = std::move(kind);
             s.widths = std::move(widths);
             s.activation = std::move(activation);
             s.arg = std::move(arg);
             return s;
           }),
           py::arg("kind") = "mlp", py::arg("widths") = std::vector<Index>{}, py::arg("activation") = "relu",
           py::arg("arg") = "hidden", py::arg("image_shape") = std::vector<Index>{})
      .def_readwrite("kind", &NetSpec::kind)
      .def_readwrite("widths", &NetSpec::widths)
      .def_readwrite("activation", &NetSpec::activation)
      .def_readwrite("arg", &NetSpec::arg)
      .def_readwrite("image_shape", &NetSpec::image_shape)
      .def_readwrite("groups", &NetSpec::groups)
      .def("check", &check_net_spec, "Raises ValueError when the description is not a valid network.")
      .def("mirrored", &mirrored, "The same description with its widths reversed (a decoder mirroring an encoder).");
  m.attr("NET_KINDS") = py::str(net_kinds());
}

}  // namespace elbokit_py
