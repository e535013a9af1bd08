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
#include "elbokit/unet.hpp"

namespace elbokit {

struct NetSpec {
  std::string kind = "mlp";         // "mlp", "unet"
  std::vector<Index> widths;        // mlp: the hidden layers' widths; unet: the channels per level
  std::string activation = "relu";  // layers.hpp: activation_names()
  std::string arg = "hidden";       // the user's argument behind `widths`, for error messages
  std::vector<Index> image_shape;   // unet: (C, H, W) of the images
  Index groups = 8;                 // unet: the groups of every GroupNorm
};

inline const char* net_kinds() { return "'mlp', 'unet'"; }

inline std::string image_shape_str(const std::vector<Index>& s) {
  std::string r = "(";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + (s.size() == 1 ? ",)" : ")");
}

inline void check_image_shape(const std::vector<Index>& s) {
  if (s.size() != 3 || s[0] <= 0 || s[1] <= 0 || s[2] <= 0)
    fail("image_shape must be (C, H, W), three positive integers, got " + image_shape_str(s));
}

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

// Checks a spec without building it (the models check every option before they allocate).
inline void check_net_spec(const NetSpec& s) {
  if (s.kind != "mlp" && s.kind != "unet")
    fail("net must be one of " + std::string(net_kinds()) + ", got '" + s.kind + "'");
  if (s.kind == "unet") {  // the rest is checked as the network is built (unet.hpp)
    check_image_shape(s.image_shape);
    if (s.groups <= 0) fail("groups must be a positive integer, got " + std::to_string(s.groups));
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
  if (s.kind == "unet") {  // an image-to-image network: in = C·H·W, out = k·C·H·W (k output maps per channel)
    const std::vector<Index>& im = s.image_shape;
    const Index D = im[0] * im[1] * im[2];
    if (in != D)
      fail("x_dim must equal C·H·W = " + std::to_string(D) + " for image_shape " + image_shape_str(im) + ", got " +
           std::to_string(in));
    if (out <= 0 || out % (im[1] * im[2]))
      fail("net='unet' maps images to images: its output must be a whole number of H·W maps, got " +
           std::to_string(out) + " outputs");
    return std::make_unique<UNet<T>>(layout, prefix, im[0], im[1], im[2], s.widths, s.groups,
                                     activation_from_string(s.activation), cond, out / (im[1] * im[2]));
  }
  return std::make_unique<MLP<T>>(layout, prefix, in, cond, s.widths, activation_from_string(s.activation), out);
}

}  // namespace elbokit
