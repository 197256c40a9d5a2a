// Layout helpers shared by the CPU and CUDA bindings.
#pragma once

#include <ATen/ATen.h>

namespace mobilefuse {

// Returns `t` when it already has `like`'s strides (dense), else a copy laid out
// like `like`: kernels then walk both tensors as one flat array.
inline at::Tensor dense_like(const at::Tensor& t, const at::Tensor& like) {
  if (t.strides() == like.strides()) {
    return t;
  }
  at::Tensor copy = at::empty_like(like, t.options());
  copy.copy_(t);
  return copy;
}

// The layout the NCHW kernels (channel_shuffle, depthwise_conv2d) work in: channels_last for
// a 4-D tensor that is channels_last-contiguous (and not also plain contiguous), else contiguous.
inline bool uses_channels_last(const at::Tensor& x) {
  return x.dim() == 4 && !x.is_contiguous() &&
         x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// The memory format the kernels work and write in (see uses_channels_last).
inline at::MemoryFormat kernel_format(const at::Tensor& x) {
  return uses_channels_last(x) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// The type the kernels accumulate in: double for double inputs, float for the other floats.
inline at::ScalarType accumulate_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_channel_shuffle_args(const at::Tensor& x, int64_t groups) {
  TORCH_CHECK(x.dim() >= 3, "channel_shuffle: x must have rank >= 3 (N, C, *), got rank ",
              x.dim());
  TORCH_CHECK(groups > 0, "channel_shuffle: groups must be positive, got ", groups);
  TORCH_CHECK(x.size(1) % groups == 0, "channel_shuffle: groups (", groups,
              ") must divide the channel count C=", x.size(1));
}

// A validated channel_shuffle call: the input in the layout the kernels walk (contiguous
// (N, C, S) or channels_last (N*S, C)), its output allocated in that same layout.
struct ShuffleProblem {
  at::Tensor in;
  at::Tensor out;
  bool channels_last;
  int64_t batch;
  int64_t channels;
  int64_t spatial;  // product of the dims after C
};

inline ShuffleProblem prepare_channel_shuffle(const at::Tensor& x, int64_t groups) {
  check_channel_shuffle_args(x, groups);
  const bool channels_last = uses_channels_last(x);
  at::Tensor in = channels_last ? x : x.contiguous();
  at::Tensor out = at::empty_like(in, kernel_format(x));
  const int64_t batch = in.size(0);
  const int64_t channels = in.size(1);
  const int64_t spatial = in.numel() == 0 ? 0 : in.numel() / (batch * channels);
  return {in, out, channels_last, batch, channels, spatial};
}

inline void check_activation_input(const char* op, const at::Tensor& x) {
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op,
              ": x must be float16, bfloat16, float32 or float64, got ", x.scalar_type());
}

// A CPU kernel's (N, C, H, W) floating-point input named `name`.
inline void check_cpu_image_input(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.dim() == 4, op, ": ", name, " must have rank 4 (N, C, H, W), got rank ",
              t.dim());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name,
              " must be float16, bfloat16, float32 or float64, got ", t.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), op, ": expected CPU tensors, got ", name, " on ",
              t.device());
}

inline void check_same_device_dtype_shape(const char* op, const at::Tensor& grad,
                                          const at::Tensor& x) {
  TORCH_CHECK(grad.device() == x.device(), op, ": grad_out is on ", grad.device(),
              " but x is on ", x.device());
  TORCH_CHECK(grad.scalar_type() == x.scalar_type(), op, ": grad_out has dtype ",
              grad.scalar_type(), " but x has dtype ", x.scalar_type());
  TORCH_CHECK(grad.sizes() == x.sizes(), op, ": grad_out has shape ", grad.sizes(),
              " but x has shape ", x.sizes());
}

}  // namespace mobilefuse
