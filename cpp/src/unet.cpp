// unet.cpp: the U-Net (unet.hpp) built from a NetSpec, for float and double. The image layers are
// compiled here, in conv_nets.cpp and in bind_conv.cpp only: the model files see nets.hpp alone.
#include "elbokit/unet.hpp"

#include "elbokit/nets.hpp"

namespace elbokit {

void check_image_shape(const std::vector<Index>& s) {
  if (s.size() != 3 || s[0] <= 0 || s[1] <= 0 || s[2] <= 0)
    fail("image_shape must be (C, H, W), three positive integers, got " + image_shape_str(s));
}

template <class T>
ModulePtr<T> make_unet(ParamLayout& layout, const std::string& prefix, const NetSpec& s, Index in, Index cond,
                       Index out) {
  const std::vector<Index>& im = s.image_shape;
  check_image_shape(im);
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

template ModulePtr<float> make_unet<float>(ParamLayout&, const std::string&, const NetSpec&, Index, Index, Index);
template ModulePtr<double> make_unet<double>(ParamLayout&, const std::string&, const NetSpec&, Index, Index, Index);

}  // namespace elbokit
