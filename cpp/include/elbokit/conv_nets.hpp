// elbokit/conv_nets.hpp: the convolutional networks as modules (module.hpp), kind "conv" in nets.hpp.
//
// Shapes: B batch, (C, H, W) the image, c_i the channels of level i (spec.widths, i = 0 … n−1),
// h_i × w_i = H/2^(i+1) × W/2^(i+1) the sides after level i, Z the decoder's input. Rows are NCHW
// images flattened (features = C·H·W), as torch's x.view(B, −1).
//
//   ConvEncoder  x (B, C·H·W) → features (B, c_{n−1}·h_{n−1}·w_{n−1}):
//     prefix.{i} = Conv2d(c_{i−1}, c_i, 4, stride 2, padding 1) + activation, c_{−1} = C.
//   ConvDecoder  z (B, Z) → (B, C·H·W):
//     prefix.fc = Linear(Z, c_{n−1}·h·w) + activation, reshaped (c_{n−1}, h, w);
//     prefix.{j} = ConvTranspose2d(c_{n−1−j}, c_{n−2−j}, 4, 2, 1) + activation, j = 0 … n−2;
//     prefix.out = ConvTranspose2d(c_0, C, 4, 2, 1), no activation.
// Parameters as torch.nn.Conv2d (O, C, 4, 4) / ConvTranspose2d (C_in, C_out, 4, 4) and their biases,
// initialized as torch does: U(±1/√fan_in), fan_in = weight.size(1)·k·k.
#pragma once

#include <string>
#include <vector>

#include "elbokit/conv.hpp"
#include "elbokit/layers.hpp"
#include "elbokit/module.hpp"
#include "elbokit/nets.hpp"

namespace elbokit {

constexpr Index kConvNetKernel = 4, kConvNetStride = 2, kConvNetPad = 1;

// image_shape_str and check_conv_net (declared in nets.hpp) are defined in cpp/src/conv_nets.cpp.

// One convolution layer of a network: its geometry (of the input for Conv2d; of the output for
// ConvTranspose2d, conv.hpp), channels and parameter offsets.
struct ConvLayer {
  ConvGeom g;
  Index C_in = 0, C_out = 0, w = 0, b = 0;
  Index out_size() const { return C_out * g.Ho() * g.Wo(); }  // Conv2d
};

// The saved activations of a conv network and its scratch: per layer pre, post (B, features).
template <class T>
struct ConvNetState : CacheState {
  std::vector<Mat<T>> pre, post, dpre, dpost;
  ConvWork<T> work;
  void size(size_t n) {
    pre.resize(n);
    post.resize(n);
    dpre.resize(n);
    dpost.resize(n);
  }
};

template <class T>
class ConvEncoder final : public Module<T> {
 public:
  ConvEncoder(ParamLayout& layout, const std::string& prefix, const std::vector<Index>& image,
              const std::vector<Index>& widths, Activation act, const std::string& arg)
      : image_(image), widths_(widths), act_(act) {
    check_conv_net(image, widths, arg);
    Index C = image[0], H = image[1], W = image[2];
    for (size_t i = 0; i < widths.size(); ++i) {
      ConvLayer l;
      l.g = ConvGeom{C, H, W, kConvNetKernel, kConvNetStride, kConvNetPad};
      l.C_in = C;
      l.C_out = widths[i];
      const std::string name = prefix + "." + std::to_string(i);
      l.w = layout.add(name + ".weight", {l.C_out, C, kConvNetKernel, kConvNetKernel});
      l.b = layout.add(name + ".bias", {l.C_out});
      layers_.push_back(l);
      C = l.C_out;
      H = l.g.Ho();
      W = l.g.Wo();
    }
    this->in_ = image[0] * image[1] * image[2];
    this->out_ = C * H * W;
  }

  bool split_rows() const override { return true; }
  std::string describe() const override {
    std::string s = "conv(" + std::to_string(image_[0]) + "x" + std::to_string(image_[1]) + "x" +
                    std::to_string(image_[2]) + ":";
    for (size_t i = 0; i < widths_.size(); ++i) s += (i ? ", " : " ") + std::to_string(widths_[i]);
    return s + ")";
  }

  void init(T* p, uint64_t seed) const override {
    for (const ConvLayer& l : layers_) {
      const double bound = 1.0 / std::sqrt(double(l.C_in * kConvNetKernel * kConvNetKernel));
      init_uniform(p, l.w, l.C_out * l.C_in * kConvNetKernel * kConvNetKernel, bound, seed);
      init_uniform(p, l.b, l.C_out, bound, seed);
    }
  }

  // forward: x (B, C·H·W) → conv_0 + act → … → conv_{n−1} + act (B, c_{n−1}·h·w).
  const T* forward(const T* p, const T* in, const T*, Index B, Cache& c) const override {
    auto& s = c.get<ConvNetState<T>>();
    s.size(layers_.size());
    const T* h = in;
    for (size_t i = 0; i < layers_.size(); ++i) {
      const ConvLayer& l = layers_[i];
      s.pre[i].resize(B, l.out_size());
      s.post[i].resize(B, l.out_size());
      conv2d_forward(s.pre[i].data(), h, p + l.w, p + l.b, B, l.g, l.C_out, s.work);
      activation_forward(s.post[i].data(), s.pre[i].data(), s.pre[i].size(), act_);
      h = s.post[i].data();
    }
    return h;
  }

  void backward(const T* p, T* g, const T* in, const T*, Index B, Cache& c, const T* dout, T* din) const override {
    auto& s = c.get<ConvNetState<T>>();
    const T* d = dout;
    for (size_t i = layers_.size(); i-- > 0;) {
      const ConvLayer& l = layers_[i];
      s.dpre[i].resize(B, l.out_size());
      activation_backward(s.dpre[i].data(), d, s.pre[i].data(), s.post[i].data(), s.pre[i].size(), act_);
      T* dx = din;
      if (i > 0) {
        set_zero(s.dpost[i - 1], B, layers_[i - 1].out_size());
        dx = s.dpost[i - 1].data();
      }
      conv2d_backward(dx, g + l.w, g + l.b, s.dpre[i].data(), i ? s.post[i - 1].data() : in, p + l.w, B, l.g,
                      l.C_out, s.work);
      if (i > 0) d = s.dpost[i - 1].data();
    }
  }

 private:
  std::vector<Index> image_, widths_;
  Activation act_;
  std::vector<ConvLayer> layers_;
};

template <class T>
class ConvDecoder final : public Module<T> {
 public:
  ConvDecoder(ParamLayout& layout, const std::string& prefix, Index in, const std::vector<Index>& image,
              const std::vector<Index>& widths, Activation act, const std::string& arg)
      : image_(image), widths_(widths), act_(act) {
    check_conv_net(image, widths, arg);
    const Index n = Index(widths.size());
    Index h = image[1] >> n, w = image[2] >> n, C = widths.back();
    fc_ = layout.add_dense(prefix + ".fc", in, C * h * w);
    for (Index j = 0; j < n; ++j) {
      const bool last = j == n - 1;
      ConvLayer l;
      l.C_in = C;
      l.C_out = last ? image[0] : widths[n - 2 - j];
      l.g = conv_transpose_geom(l.C_out, h, w, kConvNetKernel, kConvNetStride, kConvNetPad);
      const std::string name = prefix + "." + (last ? std::string("out") : std::to_string(j));
      l.w = layout.add(name + ".weight", {l.C_in, l.C_out, kConvNetKernel, kConvNetKernel});
      l.b = layout.add(name + ".bias", {l.C_out});
      layers_.push_back(l);
      C = l.C_out;
      h = l.g.H;
      w = l.g.W;
    }
    this->in_ = in;
    this->out_ = image[0] * image[1] * image[2];
  }

  bool split_rows() const override { return true; }
  std::string describe() const override {
    std::string s = "conv(" + std::to_string(this->in_) + " -> ";
    for (size_t i = widths_.size(); i-- > 0;) s += std::to_string(widths_[i]) + ", ";
    return s + std::to_string(image_[0]) + "x" + std::to_string(image_[1]) + "x" + std::to_string(image_[2]) + ")";
  }

  void init(T* p, uint64_t seed) const override {
    init_dense(p, fc_, seed);
    for (const ConvLayer& l : layers_) {  // torch: fan_in = weight.size(1)·k·k = C_out·k·k
      const double bound = 1.0 / std::sqrt(double(l.C_out * kConvNetKernel * kConvNetKernel));
      init_uniform(p, l.w, l.C_in * l.C_out * kConvNetKernel * kConvNetKernel, bound, seed);
      init_uniform(p, l.b, l.C_out, bound, seed);
    }
  }

  // forward: z (B, Z) → fc + act (B, c_{n−1}·h·w) → convT_j + act … → out (B, C·H·W).
  // Saved: pre/post[0] of fc, pre/post[j + 1] of convT j (the last one's pre is the output).
  const T* forward(const T* p, const T* in, const T*, Index B, Cache& c) const override {
    auto& s = c.get<ConvNetState<T>>();
    s.size(layers_.size() + 1);
    s.pre[0].resize(B, fc_.out);
    s.post[0].resize(B, fc_.out);
    linear_forward(s.pre[0].data(), in, p + fc_.w, p + fc_.b, B, fc_.in, fc_.out);
    activation_forward(s.post[0].data(), s.pre[0].data(), s.pre[0].size(), act_);
    const T* h = s.post[0].data();
    for (size_t j = 0; j < layers_.size(); ++j) {
      const ConvLayer& l = layers_[j];
      Mat<T>& pre = s.pre[j + 1];
      pre.resize(B, l.g.in_size());
      conv_transpose2d_forward(pre.data(), h, p + l.w, p + l.b, B, l.C_in, l.g, s.work);
      if (j + 1 == layers_.size()) return pre.data();
      s.post[j + 1].resize(B, l.g.in_size());
      activation_forward(s.post[j + 1].data(), pre.data(), pre.size(), act_);
      h = s.post[j + 1].data();
    }
    return h;
  }

  void backward(const T* p, T* g, const T* in, const T*, Index B, Cache& c, const T* dout, T* din) const override {
    auto& s = c.get<ConvNetState<T>>();
    const T* d = dout;  // ∂J/∂(pre of layer j + 1)
    for (size_t j = layers_.size(); j-- > 0;) {
      const ConvLayer& l = layers_[j];
      if (j + 1 < layers_.size()) {
        s.dpre[j + 1].resize(B, l.g.in_size());
        activation_backward(s.dpre[j + 1].data(), d, s.pre[j + 1].data(), s.post[j + 1].data(),
                            s.pre[j + 1].size(), act_);
        d = s.dpre[j + 1].data();
      }
      set_zero(s.dpost[j], B, s.post[j].cols());
      conv_transpose2d_backward(s.dpost[j].data(), g + l.w, g + l.b, d, s.post[j].data(), p + l.w, B, l.C_in, l.g,
                                s.work);
      d = s.dpost[j].data();
    }
    s.dpre[0].resize(B, fc_.out);
    activation_backward(s.dpre[0].data(), d, s.pre[0].data(), s.post[0].data(), s.pre[0].size(), act_);
    linear_backward(din, g + fc_.w, g + fc_.b, s.dpre[0].data(), in, p + fc_.w, B, fc_.in, fc_.out);
  }

 private:
  std::vector<Index> image_, widths_;
  Activation act_;
  Dense fc_;
  std::vector<ConvLayer> layers_;
};

}  // namespace elbokit
