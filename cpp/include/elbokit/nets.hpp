// elbokit/nets.hpp: networks by description. A model names the role of each of its networks (the
// VAE's encoder x → features and decoder z → outputs, the diffusion model's ε-network (x_t, t) → D)
// and builds it here from a NetSpec; adding a network kind touches this file and the kind's own
// header, never a model file.
//
// Shapes: B batch, I input features, C conditioning features, O outputs (0: the network's own
// feature width, for a model that puts its own heads on top).
#pragma once

#include <string>
#include <vector>

#include "elbokit/mlp.hpp"
#include "elbokit/module.hpp"

namespace elbokit {

struct NetSpec {
  std::string kind = "mlp";         // "mlp", "conv" or "unet"
  std::vector<Index> widths;        // mlp: the hidden layers' widths; conv, unet: the channels per level
  std::vector<Index> image_shape;   // conv, unet: (C, H, W) of the images (conv_nets.hpp, unet.hpp)
  Index groups = 8;                 // unet: the groups of every GroupNorm
  std::string activation = "relu";  // layers.hpp: activation_names()
  std::string arg = "hidden";       // the user's argument behind `widths`, for error messages
};

inline const char* net_kinds() { return "'mlp', 'conv', 'unet'"; }

inline NetSpec mlp_spec(const std::vector<Index>& widths, const std::string& activation,
                        const std::string& arg = "hidden") {
  NetSpec s;
  s.kind = "mlp";
  s.widths = widths;
  s.activation = activation;
  s.arg = arg;
  return s;
}

// The same spec with its widths reversed: a decoder that mirrors its encoder.
inline NetSpec mirrored(NetSpec s) {
  s.widths = std::vector<Index>(s.widths.rbegin(), s.widths.rend());
  return s;
}

// The conv networks (conv_nets.hpp), compiled once in cpp/src/conv_nets.cpp so that a change to the
// image layers recompiles no model file.
std::string image_shape_str(const std::vector<Index>& s);  // "(1, 28, 28)"
// Checks the image shape (C, H, W) and the channels: the sides must halve len(channels) times;
// `arg` names the channels' argument.
void check_conv_net(const std::vector<Index>& image, const std::vector<Index>& widths, const std::string& arg);
// The conv encoder (out = 0) or decoder (out = C·H·W) of conv_nets.hpp.
template <class T>
ModulePtr<T> make_conv_net(ParamLayout& layout, const std::string& prefix, const NetSpec& s, Index in, Index cond,
                           Index out);
extern template ModulePtr<float> make_conv_net<float>(ParamLayout&, const std::string&, const NetSpec&, Index, Index,
                                                      Index);
extern template ModulePtr<double> make_conv_net<double>(ParamLayout&, const std::string&, const NetSpec&, Index,
                                                        Index, Index);

// The U-Net (unet.hpp), compiled once in cpp/src/unet.cpp: image (B, C·H·W) conditioned on
// cond (B, C_cond) → out (B, k·H·W), k output maps (out must be a whole number of H·W maps).
void check_image_shape(const std::vector<Index>& image);
template <class T>
ModulePtr<T> make_unet(ParamLayout& layout, const std::string& prefix, const NetSpec& s, Index in, Index cond,
                       Index out);
extern template ModulePtr<float> make_unet<float>(ParamLayout&, const std::string&, const NetSpec&, Index, Index, Index);
extern template ModulePtr<double> make_unet<double>(ParamLayout&, const std::string&, const NetSpec&, Index, Index,
                                                    Index);

// Checks a spec without building it (the models check every option before they allocate).
inline void check_net_spec(const NetSpec& s) {
  if (s.kind != "mlp" && s.kind != "conv" && s.kind != "unet")
    fail("net must be one of " + std::string(net_kinds()) + ", got '" + s.kind + "'");
  if (s.kind == "unet") {  // the rest is checked as the network is built (unet.hpp)
    check_image_shape(s.image_shape);
    if (s.groups <= 0) fail("groups must be a positive integer, got " + std::to_string(s.groups));
    activation_from_string(s.activation);
    return;
  }
  if (s.kind == "conv") {
    check_conv_net(s.image_shape, s.widths, s.arg);
    activation_from_string(s.activation);
    return;
  }
  for (size_t i = 0; i < s.widths.size(); ++i)
    if (s.widths[i] <= 0)
      fail(s.arg + " must hold positive layer widths, got " + std::to_string(s.widths[i]) + " at position " +
           std::to_string(i));
  activation_from_string(s.activation);
}

// make_net: the network `prefix` (its parameters added to layout under that prefix) mapping
// in (B, I) [and cond (B, C)] to (B, O), or to its own features when out = 0.
template <class T>
ModulePtr<T> make_net(ParamLayout& layout, const std::string& prefix, const NetSpec& s, Index in, Index cond,
                      Index out) {
  check_net_spec(s);
  if (s.kind == "conv") return make_conv_net<T>(layout, prefix, s, in, cond, out);
  if (s.kind == "unet") return make_unet<T>(layout, prefix, s, in, cond, out);
  return std::make_unique<MLP<T>>(layout, prefix, in, cond, s.widths, activation_from_string(s.activation), out);
}

}  // namespace elbokit
