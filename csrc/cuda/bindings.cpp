// Registers the CUDA kernels with the dispatcher: checks inputs, allocates
// outputs and launches on the current stream (never the default stream).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>
#include <limits>
#include <optional>
#include <string>
#include <tuple>

#include "../layout.h"
#include "launchers.h"

namespace mobilefuse {
namespace {

cuda::FloatType float_type(const at::Tensor& t, const char* op) {
  switch (t.scalar_type()) {
    case at::kFloat: return cuda::FloatType::kFloat32;
    case at::kDouble: return cuda::FloatType::kFloat64;
    case at::kHalf: return cuda::FloatType::kFloat16;
    case at::kBFloat16: return cuda::FloatType::kBFloat16;
    default:
      TORCH_CHECK(false, op, ": x must be float16, bfloat16, float32 or float64, got ",
                  t.scalar_type());
  }
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

at::Tensor activation_forward_cuda(const at::Tensor& x, cuda::Activation act, const char* op) {
  check_activation_input(op, x);
  TORCH_CHECK(x.is_cuda(), op, ": expected a CUDA tensor, got ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty_like(x);
  const at::Tensor in = dense_like(x, out);
  check_launch(cuda::activation_forward(act, float_type(in, op), in.const_data_ptr(),
                                        out.mutable_data_ptr(), in.numel(),
                                        c10::cuda::getCurrentCUDAStream().stream()),
               op);
  return out;
}

at::Tensor activation_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                    cuda::Activation act, const char* op) {
  check_activation_input(op, x);
  check_same_device_dtype_shape(op, grad_out, x);
  TORCH_CHECK(x.is_cuda(), op, ": expected CUDA tensors, got ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor grad_in = at::empty_like(x);
  const at::Tensor in = dense_like(x, grad_in);
  const at::Tensor g = dense_like(grad_out, grad_in);
  check_launch(cuda::activation_backward(act, float_type(in, op), g.const_data_ptr(),
                                         in.const_data_ptr(), grad_in.mutable_data_ptr(),
                                         in.numel(), c10::cuda::getCurrentCUDAStream().stream()),
               op);
  return grad_in;
}

at::Tensor hardswish_cuda(const at::Tensor& x) {
  return activation_forward_cuda(x, cuda::Activation::kHardSwish, "hardswish");
}
at::Tensor hardswish_backward_cuda(const at::Tensor& g, const at::Tensor& x) {
  return activation_backward_cuda(g, x, cuda::Activation::kHardSwish, "hardswish_backward");
}
at::Tensor hardsigmoid_cuda(const at::Tensor& x) {
  return activation_forward_cuda(x, cuda::Activation::kHardSigmoid, "hardsigmoid");
}
at::Tensor hardsigmoid_backward_cuda(const at::Tensor& g, const at::Tensor& x) {
  return activation_backward_cuda(g, x, cuda::Activation::kHardSigmoid, "hardsigmoid_backward");
}

at::Tensor channel_shuffle_cuda(const at::Tensor& x, int64_t groups) {
  TORCH_CHECK(x.is_cuda(), "channel_shuffle: expected a CUDA tensor, got ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  ShuffleProblem p = prepare_channel_shuffle(x, groups);
  if (p.in.numel() == 0) {
    return p.out;
  }
  const int64_t outer = p.channels_last ? p.batch * p.spatial : p.batch;
  const int64_t inner = p.channels_last ? 1 : p.spatial;
  check_launch(cuda::channel_shuffle(p.in.const_data_ptr(), p.out.mutable_data_ptr(), outer,
                                     p.channels, inner, groups,
                                     static_cast<int64_t>(p.in.element_size()),
                                     c10::cuda::getCurrentCUDAStream().stream()),
               "channel_shuffle");
  return p.out;
}

cuda::ConvActivation conv_activation(c10::string_view name) {
  if (name == "none") return cuda::ConvActivation::kNone;
  if (name == "relu") return cuda::ConvActivation::kReLU;
  if (name == "relu6") return cuda::ConvActivation::kReLU6;
  if (name == "hardswish") return cuda::ConvActivation::kHardSwish;
  if (name == "silu") return cuda::ConvActivation::kSiLU;
  TORCH_CHECK(false, "depthwise_conv2d: activation must be \"none\", \"relu\", \"relu6\", "
              "\"hardswish\" or \"silu\", got \"", std::string(name), "\"");
}

// A validated depthwise_conv2d call: x dense in the layout the kernels walk (NHWC for a
// channels_last x, else NCHW), weight and bias contiguous, every size fitting in an int.
struct DepthwiseCall {
  at::Tensor x;
  at::Tensor weight;
  at::Tensor bias;  // undefined when there is none
  at::MemoryFormat format;
  cuda::DepthwiseGeometry geometry;
  cuda::ConvActivation act;
  cuda::FloatType type;
};

DepthwiseCall prepare_depthwise(const char* op, const at::Tensor& x, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation,
                                c10::string_view activation) {
  TORCH_CHECK(x.is_cuda(), op, ": expected a CUDA tensor, got ", x.device());
  TORCH_CHECK(x.dim() == 4, op, ": x must have rank 4 (N, C, H, W), got shape ", x.sizes());
  const cuda::FloatType type = float_type(x, op);
  const int64_t channels = x.size(1);
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == channels && weight.size(1) == 1 &&
                  weight.size(2) > 0 && weight.size(3) > 0,
              op, ": weight must have shape (C, 1, kh, kw) with C=", channels, ", got ",
              weight.sizes());
  TORCH_CHECK(weight.device() == x.device(), op, ": weight is on ", weight.device(),
              " but x is on ", x.device());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), op, ": weight has dtype ",
              weight.scalar_type(), " but x has dtype ", x.scalar_type());
  at::Tensor b;
  if (bias.has_value() && bias->defined()) {
    b = *bias;
    TORCH_CHECK(b.device() == x.device(), op, ": bias is on ", b.device(), " but x is on ",
                x.device());
    TORCH_CHECK(b.scalar_type() == x.scalar_type(), op, ": bias has dtype ", b.scalar_type(),
                " but x has dtype ", x.scalar_type());
    TORCH_CHECK(b.dim() == 1 && b.size(0) == channels, op, ": bias must have shape (", channels,
                ",), got ", b.sizes());
    b = b.contiguous();
  }
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, op,
              ": stride, padding and dilation must have 2 values each (h, w), got ", stride,
              ", ", padding, ", ", dilation);
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  int64_t out_size[2];
  for (int i = 0; i < 2; ++i) {
    TORCH_CHECK(stride[i] >= 1, op, ": stride must be >= 1, got ", stride);
    TORCH_CHECK(dilation[i] >= 1, op, ": dilation must be >= 1, got ", dilation);
    TORCH_CHECK(padding[i] >= 0, op, ": padding must be >= 0, got ", padding);
    const int64_t size = x.size(2 + i);
    const int64_t kernel = weight.size(2 + i);
    // Kernels index in int, a few strides past the last output included.
    TORCH_CHECK(size <= kIntMax && kernel <= kIntMax && stride[i] <= kIntMax &&
                    dilation[i] <= kIntMax && padding[i] <= kIntMax &&
                    size + 2 * padding[i] + 8 * stride[i] < kIntMax &&
                    (kernel - 1) * dilation[i] < kIntMax,
                op, ": sizes too large for the CUDA kernels");
    const int64_t span = dilation[i] * (kernel - 1) + 1;
    TORCH_CHECK(span <= size + 2 * padding[i], op, ": the kernel (dilated extent ", span,
                ") is larger than the padded input ", i == 0 ? "height " : "width ",
                size + 2 * padding[i]);
    out_size[i] = (size + 2 * padding[i] - span) / stride[i] + 1;
  }
  TORCH_CHECK(x.size(0) <= kIntMax && channels <= kIntMax, op,
              ": sizes too large for the CUDA kernels");

  const bool channels_last = uses_channels_last(x);
  cuda::DepthwiseGeometry g{};
  g.n = x.size(0);
  g.c = channels;
  g.h = x.size(2);
  g.w = x.size(3);
  g.out_h = out_size[0];
  g.out_w = out_size[1];
  g.kh = weight.size(2);
  g.kw = weight.size(3);
  g.stride_h = stride[0];
  g.stride_w = stride[1];
  g.pad_h = padding[0];
  g.pad_w = padding[1];
  g.dil_h = dilation[0];
  g.dil_w = dilation[1];
  g.channels_last = channels_last;
  return {channels_last ? x : x.contiguous(),
          weight.contiguous(),
          b,
          kernel_format(x),
          g,
          conv_activation(activation),
          type};
}

const void* data_or_null(const at::Tensor& t) { return t.defined() ? t.const_data_ptr() : nullptr; }

at::Tensor depthwise_conv2d_cuda(const at::Tensor& x, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation,
                                 c10::string_view activation) {
  constexpr const char* op = "depthwise_conv2d";
  TORCH_CHECK(x.is_cuda(), op, ": expected a CUDA tensor, got ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  const DepthwiseCall call =
      prepare_depthwise(op, x, weight, bias, stride, padding, dilation, activation);
  const cuda::DepthwiseGeometry& g = call.geometry;
  at::Tensor out =
      at::empty({g.n, g.c, g.out_h, g.out_w}, x.options().memory_format(call.format));
  if (out.numel() == 0) {
    return out;
  }
  check_launch(cuda::depthwise_conv2d_forward(call.type, call.act, g, call.x.const_data_ptr(),
                                              call.weight.const_data_ptr(),
                                              data_or_null(call.bias), out.mutable_data_ptr(),
                                              c10::cuda::getCurrentCUDAStream().stream()),
               op);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> depthwise_conv2d_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, c10::string_view activation, std::array<bool, 3> output_mask) {
  constexpr const char* op = "depthwise_conv2d_backward";
  TORCH_CHECK(x.is_cuda(), op, ": expected a CUDA tensor, got ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  const DepthwiseCall call =
      prepare_depthwise(op, x, weight, bias, stride, padding, dilation, activation);
  const cuda::DepthwiseGeometry& g = call.geometry;
  TORCH_CHECK(grad_out.device() == x.device(), op, ": grad_out is on ", grad_out.device(),
              " but x is on ", x.device());
  TORCH_CHECK(grad_out.scalar_type() == x.scalar_type(), op, ": grad_out has dtype ",
              grad_out.scalar_type(), " but x has dtype ", x.scalar_type());
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({g.n, g.c, g.out_h, g.out_w}), op,
              ": grad_out has shape ", grad_out.sizes(), ", expected the output's shape [", g.n,
              ", ", g.c, ", ", g.out_h, ", ", g.out_w, "]");

  const bool need_x = output_mask[0];
  const bool need_w = output_mask[1];
  const bool need_b = output_mask[2] && call.bias.defined();
  const at::TensorOptions options = x.options();
  at::Tensor grad_x = need_x ? at::empty(x.sizes(), options.memory_format(call.format))
                             : at::empty({0}, options);
  at::Tensor grad_w = need_w ? at::empty({g.c, 1, g.kh, g.kw}, options) : at::empty({0}, options);
  at::Tensor grad_b = need_b ? at::empty({g.c}, options) : at::empty({0}, options);
  if (!(need_x || need_w || need_b)) {
    return {grad_x, grad_w, grad_b};
  }
  // The kernels read grad_out densely in the output's layout.
  const at::Tensor g_out = grad_out.contiguous(call.format);
  const size_t workspace_bytes = cuda::depthwise_conv2d_backward_workspace(
      call.type, call.act, g, need_x, need_w, need_b);
  at::Tensor workspace =
      at::empty({static_cast<int64_t>(workspace_bytes)}, options.dtype(at::kByte));
  check_launch(cuda::depthwise_conv2d_backward(
                   call.type, call.act, g, g_out.const_data_ptr(), call.x.const_data_ptr(),
                   call.weight.const_data_ptr(), data_or_null(call.bias),
                   need_x ? grad_x.mutable_data_ptr() : nullptr,
                   need_w ? grad_w.mutable_data_ptr() : nullptr,
                   need_b ? grad_b.mutable_data_ptr() : nullptr, workspace.mutable_data_ptr(),
                   workspace_bytes, c10::cuda::getCurrentCUDAStream().stream()),
               op);
  return {grad_x, grad_w, grad_b};
}

void check_se_x(const char* op, const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4, op, ": x must have rank 4 (N, C, H, W), got rank ", x.dim());
  TORCH_CHECK(x.is_cuda(), op, ": expected a CUDA tensor, got ", x.device());
}

at::Tensor se_channel_sum_cuda(const at::Tensor& x_in, const std::optional<at::Tensor>& y_in) {
  constexpr const char* op = "se_channel_sum";
  check_se_x(op, x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::MemoryFormat fmt = kernel_format(x_in);
  const at::Tensor x = x_in.contiguous(fmt);
  at::Tensor y;
  if (y_in.has_value()) {
    check_same_device_dtype_shape(op, *y_in, x_in);
    y = y_in->contiguous(fmt);
  }
  const int64_t n = x.size(0), c = x.size(1), p = x.size(2) * x.size(3);
  at::Tensor sums = at::empty({n, c}, x.options().dtype(accumulate_type(x)));
  if (sums.numel() == 0) {
    return sums;
  }
  check_launch(cuda::se_channel_sum(float_type(x, op), x.const_data_ptr(),
                                    y.defined() ? y.const_data_ptr() : nullptr,
                                    sums.mutable_data_ptr(), n, c, p,
                                    fmt == at::MemoryFormat::ChannelsLast,
                                    c10::cuda::getCurrentCUDAStream().stream()),
               op);
  return sums;
}

at::Tensor se_channel_affine_cuda(const at::Tensor& x_in, const at::Tensor& scale_in,
                                  const std::optional<at::Tensor>& shift_in) {
  constexpr const char* op = "se_channel_affine";
  check_se_x(op, x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const int64_t n = x_in.size(0), c = x_in.size(1), p = x_in.size(2) * x_in.size(3);
  auto per_channel = [&](const char* name, const at::Tensor& t) {
    TORCH_CHECK(t.dim() == 2 && t.size(0) == n && t.size(1) == c, op, ": ", name,
                " must have shape (N, C) = (", n, ", ", c, "), got ", t.sizes());
    TORCH_CHECK(t.device() == x_in.device(), op, ": ", name, " is on ", t.device(),
                " but x is on ", x_in.device());
    return t.to(accumulate_type(x_in)).contiguous();
  };
  const at::Tensor scale = per_channel("scale", scale_in);
  const at::Tensor shift = shift_in.has_value() ? per_channel("shift", *shift_in) : at::Tensor();
  const at::MemoryFormat fmt = kernel_format(x_in);
  const at::Tensor x = x_in.contiguous(fmt);
  at::Tensor out = at::empty_like(x, fmt);
  check_launch(cuda::se_channel_affine(float_type(x, op), x.const_data_ptr(),
                                       scale.const_data_ptr(),
                                       shift.defined() ? shift.const_data_ptr() : nullptr,
                                       out.mutable_data_ptr(), n, c, p,
                                       fmt == at::MemoryFormat::ChannelsLast,
                                       c10::cuda::getCurrentCUDAStream().stream()),
               op);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mobilefuse, CUDA, m) {
  m.impl("hardswish", &hardswish_cuda);
  m.impl("hardswish_backward", &hardswish_backward_cuda);
  m.impl("hardsigmoid", &hardsigmoid_cuda);
  m.impl("hardsigmoid_backward", &hardsigmoid_backward_cuda);
  m.impl("channel_shuffle", &channel_shuffle_cuda);
  m.impl("depthwise_conv2d", &depthwise_conv2d_cuda);
  m.impl("depthwise_conv2d_backward", &depthwise_conv2d_backward_cuda);
  m.impl("se_channel_sum", &se_channel_sum_cuda);
  m.impl("se_channel_affine", &se_channel_affine_cuda);
}

}  // namespace mobilefuse
