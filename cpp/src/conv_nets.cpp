// conv_nets.cpp: the conv networks (conv_nets.hpp) built from a NetSpec, for float and double. The
// image layers are compiled here (and in bind_conv.cpp) only: the model files see nets.hpp alone.
#include "elbokit/conv_nets.hpp"

namespace elbokit {

std::string image_shape_str(const std::vector<Index>& s) {
  std::string r = "(";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + ")";
}

void check_conv_net(const std::vector<Index>& image, const std::vector<Index>& widths, const std::string& arg) {
  if (image.size() != 3 || image[0] <= 0 || image[1] <= 0 || image[2] <= 0)
    fail("image_shape must be three positive integers (C, H, W), got " + image_shape_str(image));
  if (widths.empty()) fail(arg + " must hold at least one channel count for net='conv', got ()");
  for (size_t i = 0; i < widths.size(); ++i)
    if (widths[i] <= 0)
      fail(arg + " must hold positive channel counts, got " + std::to_string(widths[i]) + " at position " +
           std::to_string(i));
  if (widths.size() > 20) fail(arg + " must hold at most 20 levels, got " + std::to_string(widths.size()));
  const Index f = Index(1) << widths.size();
  if (image[1] % f || image[2] % f)
    fail("image_shape " + image_shape_str(image) + " with " + arg + " " + image_shape_str(widths) +
         ": the sides must be divisible by " + std::to_string(f) + " (each level halves them)");
}

template <class T>
ModulePtr<T> make_conv_net(ParamLayout& layout, const std::string& prefix, const NetSpec& s, Index in, Index cond,
                           Index out) {
  const std::vector<Index>& im = s.image_shape;
  check_conv_net(im, s.widths, s.arg);
  const Index D = im[0] * im[1] * im[2];
  const Activation act = activation_from_string(s.activation);
  if (cond > 0) fail("net='conv' takes no conditioning input, got " + std::to_string(cond) + " features");
  if ((out > 0 ? out : in) != D)
    fail("x_dim must equal C·H·W = " + std::to_string(D) + " for image_shape " + image_shape_str(im) + ", got " +
         std::to_string(out > 0 ? out : in));
  if (out > 0) return std::make_unique<ConvDecoder<T>>(layout, prefix, in, im, s.widths, act, s.arg);
  return std::make_unique<ConvEncoder<T>>(layout, prefix, im, s.widths, act, s.arg);
}

template ModulePtr<float> make_conv_net<float>(ParamLayout&, const std::string&, const NetSpec&, Index, Index, Index);
template ModulePtr<double> make_conv_net<double>(ParamLayout&, const std::string&, const NetSpec&, Index, Index,
                                                 Index);

}  // namespace elbokit
