// BatchNorm with batch statistics followed by an activation, as one pass forward and two passes
// backward (CPU), and the batch statistics themselves. The fused block's training path takes
// the statistics from batch_norm_statistics (one read of x from memory; the running
// statistics updated as nn.BatchNorm2d updates them) and passes them to the others: forward writes act(x * scale + shift) with
// scale = invstd * weight and shift = bias - mean * scale, where eager writes the normalized
// tensor and then activates it; backward recomputes the pre-activation from x, so the
// activation's gradient, BatchNorm's two per-channel sums and the input gradient take two
// reads of (grad, x) and one write, where eager takes five passes and two more tensors.
//
// channels_last walks rows of C channels, vectorized over C; NCHW walks planes. The sums are
// deterministic: channels_last rows are cut into chunks whose size depends only on the shape,
// each chunk is summed by one thread, and the chunks are added in order; NCHW sums each channel
// on one thread. Float16/bfloat16 compute through float32 copies; float64 in float64.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "../layout.h"
#include "batch_norm_activation_kernels.h"
#include "cpu_capability.h"
#include "depthwise_entry.h"

namespace mobilefuse {
#ifdef MOBILEFUSE_AVX512_KERNELS
// Defined in batch_norm_activation_avx512.cpp, compiled with AVX-512 enabled.
namespace batch_norm::AVX512 {
template <typename T>
void forward(const T* x, const T* scale, const T* shift, T* out, const Shape& s, Act act,
             ImageAffine<T> out_scale);
template <typename T>
void gradient_sums(const T* grad, const T* x, const T* scale, const T* shift, const T* mean,
                   double* sum_g, double* sum_gx, const Shape& s, Act act, ImageAffine<T> pre);
template <typename T>
void input_gradient(const T* grad, const T* x, const T* scale, const T* shift, const T* alpha,
                    const T* beta, const T* mean, const T* gamma, T* out, const Shape& s,
                    Act act, ImageAffine<T> pre);
template <typename T>
void statistics(const T* x, double* mean, double* m2, const Shape& s);
}  // namespace batch_norm::AVX512
#endif

namespace {

using depthwise::Act;

struct Problem {
  at::Tensor x;  // in kernel_format, accumulate type
  at::Tensor mean, invstd, weight, bias;  // (C,), accumulate type; weight/bias may be empty
  bool channels_last;
  int64_t batch, channels, spatial;
  batch_norm::Shape shape() const { return {batch, channels, spatial, channels_last}; }
};

at::Tensor per_channel(const char* op, const char* name, const at::Tensor& t, int64_t channels,
                       at::ScalarType type) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == channels, op, ": ", name,
              " must have shape (C,) with C=", channels, ", got ", t.sizes());
  TORCH_CHECK(t.device().is_cpu(), op, ": expected CPU tensors, got ", name, " on ",
              t.device());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name,
              " must be a floating-point tensor, got ", t.scalar_type());
  return t.to(type).contiguous();
}

Problem prepare(const char* op, const at::Tensor& x_in, const at::Tensor& mean,
                const at::Tensor& invstd, const std::optional<at::Tensor>& weight,
                const std::optional<at::Tensor>& bias) {
  check_cpu_image_input(op, "x", x_in);
  const at::ScalarType acc = accumulate_type(x_in);
  const int64_t channels = x_in.size(1);
  const at::MemoryFormat fmt = kernel_format(x_in);
  Problem p;
  p.x = x_in.to(acc).contiguous(fmt);
  p.mean = per_channel(op, "mean", mean, channels, acc);
  p.invstd = per_channel(op, "invstd", invstd, channels, acc);
  if (weight.has_value()) p.weight = per_channel(op, "weight", *weight, channels, acc);
  if (bias.has_value()) p.bias = per_channel(op, "bias", *bias, channels, acc);
  p.channels_last = fmt == at::MemoryFormat::ChannelsLast;
  p.batch = x_in.size(0);
  p.channels = channels;
  p.spatial = x_in.size(2) * x_in.size(3);
  return p;
}

// scale = invstd * weight, shift = bias - mean * scale (BatchNorm as an affine map).
template <typename T>
void affine_of(const Problem& p, std::vector<T>& scale, std::vector<T>& shift) {
  const T* mean = p.mean.const_data_ptr<T>();
  const T* invstd = p.invstd.const_data_ptr<T>();
  const T* w = p.weight.defined() ? p.weight.const_data_ptr<T>() : nullptr;
  const T* b = p.bias.defined() ? p.bias.const_data_ptr<T>() : nullptr;
  scale.resize(p.channels);
  shift.resize(p.channels);
  for (int64_t c = 0; c < p.channels; ++c) {
    scale[c] = invstd[c] * (w == nullptr ? T(1) : w[c]);
    shift[c] = (b == nullptr ? T(0) : b[c]) - mean[c] * scale[c];
  }
}

// The kernels for this CPU: the AVX-512 copies where they were built and ATen uses AVX-512.
template <typename T>
using ImageAffine = batch_norm::ImageAffine<T>;

template <typename T>
void run_forward(const T* x, const T* scale, const T* shift, T* out, const batch_norm::Shape& s,
                 Act act, ImageAffine<T> out_scale) {
#ifdef MOBILEFUSE_AVX512_KERNELS
  if (use_avx512()) return batch_norm::AVX512::forward(x, scale, shift, out, s, act, out_scale);
#endif
  batch_norm::forward(x, scale, shift, out, s, act, out_scale);
}

template <typename T>
void run_gradient_sums(const T* grad, const T* x, const T* scale, const T* shift, const T* mean,
                       double* sum_g, double* sum_gx, const batch_norm::Shape& s, Act act,
                       ImageAffine<T> pre) {
#ifdef MOBILEFUSE_AVX512_KERNELS
  if (use_avx512()) {
    return batch_norm::AVX512::gradient_sums(grad, x, scale, shift, mean, sum_g, sum_gx, s,
                                             act, pre);
  }
#endif
  batch_norm::gradient_sums(grad, x, scale, shift, mean, sum_g, sum_gx, s, act, pre);
}

template <typename T>
void run_input_gradient(const T* grad, const T* x, const T* scale, const T* shift,
                        const T* alpha, const T* beta, const T* mean, const T* gamma, T* out,
                        const batch_norm::Shape& s, Act act, ImageAffine<T> pre) {
#ifdef MOBILEFUSE_AVX512_KERNELS
  if (use_avx512()) {
    return batch_norm::AVX512::input_gradient(grad, x, scale, shift, alpha, beta, mean, gamma,
                                              out, s, act, pre);
  }
#endif
  batch_norm::input_gradient(grad, x, scale, shift, alpha, beta, mean, gamma, out, s, act, pre);
}

// An optional per-(n, c) array of the image's batch and channel count, in the accumulate type.
at::Tensor per_image(const char* op, const char* name, const std::optional<at::Tensor>& t,
                     const Problem& p) {
  if (!t.has_value()) return at::Tensor();
  TORCH_CHECK(t->dim() == 2 && t->size(0) == p.batch && t->size(1) == p.channels, op, ": ",
              name, " must have shape (N, C) = (", p.batch, ", ", p.channels, "), got ",
              t->sizes());
  TORCH_CHECK(t->device().is_cpu(), op, ": expected CPU tensors, got ", name, " on ",
              t->device());
  TORCH_CHECK(at::isFloatingType(t->scalar_type()), op, ": ", name,
              " must be a floating-point tensor, got ", t->scalar_type());
  return t->to(p.x.scalar_type()).contiguous();
}

template <typename T>
ImageAffine<T> image_affine(const at::Tensor& scale, const at::Tensor& shift) {
  return {scale.defined() ? scale.const_data_ptr<T>() : nullptr,
          shift.defined() ? shift.const_data_ptr<T>() : nullptr};
}

template <typename T>
void run_statistics(const T* x, double* mean, double* m2, const batch_norm::Shape& s) {
#ifdef MOBILEFUSE_AVX512_KERNELS
  if (use_avx512()) return batch_norm::AVX512::statistics(x, mean, m2, s);
#endif
  batch_norm::statistics(x, mean, m2, s);
}

void check_running(const char* op, const char* name, const at::Tensor& running, int64_t C) {
  TORCH_CHECK(running.dim() == 1 && running.size(0) == C, op, ": ", name,
              " must have shape (C,) with C=", C, ", got ", running.sizes());
  TORCH_CHECK(running.device().is_cpu(), op, ": expected CPU tensors, got ", name, " on ",
              running.device());
  TORCH_CHECK(at::isFloatingType(running.scalar_type()), op, ": ", name,
              " must be a floating-point tensor, got ", running.scalar_type());
}

// running = momentum * batch + (1 - momentum) * running, in the running tensor's dtype.
void update_running(const at::Tensor& running, const std::vector<double>& batch,
                    double momentum) {
  const at::Tensor old = running.to(at::kDouble).contiguous();
  const double* r = old.const_data_ptr<double>();
  at::Tensor updated = at::empty_like(old);
  double* u = updated.mutable_data_ptr<double>();
  for (size_t c = 0; c < batch.size(); ++c) u[c] = momentum * batch[c] + (1.0 - momentum) * r[c];
  running.copy_(updated);
}

// (mean, invstd) per channel over N, H and W, in float32 (float64 for float64); updates the
// running statistics (the unbiased variance into running_var) when given.
std::tuple<at::Tensor, at::Tensor> batch_norm_statistics_cpu(
    const at::Tensor& x_in, const std::optional<at::Tensor>& running_mean,
    const std::optional<at::Tensor>& running_var, double momentum, double eps) {
  const char* op = "batch_norm_statistics";
  check_cpu_image_input(op, "x", x_in);
  TORCH_CHECK(eps >= 0.0, op, ": eps must be >= 0, got ", eps);
  TORCH_CHECK(running_mean.has_value() == running_var.has_value(), op,
              ": give both running_mean and running_var or neither");
  const at::ScalarType acc = accumulate_type(x_in);
  const at::MemoryFormat fmt = kernel_format(x_in);
  const at::Tensor x = x_in.to(acc).contiguous(fmt);
  const batch_norm::Shape shape{x.size(0), x.size(1), x.size(2) * x.size(3),
                                fmt == at::MemoryFormat::ChannelsLast};
  const int64_t C = shape.channels;
  const int64_t count = shape.batch * shape.spatial;
  TORCH_CHECK(count > 0, op, ": x has no values per channel (shape ", x_in.sizes(), ")");
  if (running_mean.has_value()) {
    // Both checked before either is written.
    check_running(op, "running_mean", *running_mean, C);
    check_running(op, "running_var", *running_var, C);
  }
  std::vector<double> mean(C), m2(C);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mobilefuse_batch_norm_statistics", [&] {
    run_statistics(x.const_data_ptr<scalar_t>(), mean.data(), m2.data(), shape);
  });
  at::Tensor mean_out = at::empty({C}, x.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor invstd_out = at::empty_like(mean_out);
  std::vector<double> unbiased(C);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mobilefuse_batch_norm_statistics_out", [&] {
    scalar_t* mo = mean_out.mutable_data_ptr<scalar_t>();
    scalar_t* io = invstd_out.mutable_data_ptr<scalar_t>();
    for (int64_t c = 0; c < C; ++c) {
      mo[c] = static_cast<scalar_t>(mean[c]);
      io[c] = static_cast<scalar_t>(1.0 / std::sqrt(m2[c] / static_cast<double>(count) + eps));
      // As ATen: one value per channel gives 0 / 0.
      unbiased[c] = count > 1 ? m2[c] / static_cast<double>(count - 1)
                              : std::numeric_limits<double>::quiet_NaN();
    }
  });
  if (running_mean.has_value()) {
    update_running(*running_mean, mean, momentum);
    update_running(*running_var, unbiased, momentum);
  }
  return {mean_out, invstd_out};
}

at::Tensor batch_norm_activation_cpu(const at::Tensor& x, const at::Tensor& mean,
                                     const at::Tensor& invstd,
                                     const std::optional<at::Tensor>& weight,
                                     const std::optional<at::Tensor>& bias,
                                     c10::string_view activation,
                                     const std::optional<at::Tensor>& out_scale) {
  const char* op = "batch_norm_activation";
  const Act act = depthwise::parse_activation(op, "activation", activation);
  const Problem p = prepare(op, x, mean, invstd, weight, bias);
  const at::Tensor gate = per_image(op, "out_scale", out_scale, p);
  at::Tensor out = at::empty_like(p.x);
  if (out.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(p.x.scalar_type(), "mobilefuse_batch_norm_activation", [&] {
      std::vector<scalar_t> scale, shift;
      affine_of(p, scale, shift);
      run_forward(p.x.const_data_ptr<scalar_t>(), scale.data(), shift.data(),
                  out.mutable_data_ptr<scalar_t>(), p.shape(), act,
                  image_affine<scalar_t>(gate, at::Tensor()));
    });
  }
  return out.to(x.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_activation_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& mean,
    const at::Tensor& invstd, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, c10::string_view activation,
    std::array<bool, 3> output_mask, const std::optional<at::Tensor>& grad_scale,
    const std::optional<at::Tensor>& grad_shift) {
  const char* op = "batch_norm_activation_backward";
  const Act act = depthwise::parse_activation(op, "activation", activation);
  check_same_device_dtype_shape(op, grad_out, x);
  const Problem p = prepare(op, x, mean, invstd, weight, bias);
  TORCH_CHECK(grad_scale.has_value() || !grad_shift.has_value(), op,
              ": grad_shift needs grad_scale");
  const at::Tensor pre_scale = per_image(op, "grad_scale", grad_scale, p);
  const at::Tensor pre_shift = per_image(op, "grad_shift", grad_shift, p);
  const at::Tensor grad = grad_out.to(p.x.scalar_type())
                              .contiguous(p.channels_last ? at::MemoryFormat::ChannelsLast
                                                          : at::MemoryFormat::Contiguous);
  const int64_t C = p.channels;
  const int64_t count = p.batch * p.spatial;
  at::Tensor grad_x, grad_weight, grad_bias;
  AT_DISPATCH_FLOATING_TYPES(p.x.scalar_type(), "mobilefuse_batch_norm_activation_backward",
                             [&] {
    using T = scalar_t;
    std::vector<T> scale, shift;
    affine_of(p, scale, shift);
    std::vector<double> sum_g(C), sum_gx(C);
    const T* gp = grad.const_data_ptr<T>();
    const T* xp = p.x.const_data_ptr<T>();
    const T* mu = p.mean.const_data_ptr<T>();
    const ImageAffine<T> pre = image_affine<T>(pre_scale, pre_shift);
    run_gradient_sums(gp, xp, scale.data(), shift.data(), mu, sum_g.data(), sum_gx.data(),
                      p.shape(), act, pre);
    const T* inv = p.invstd.const_data_ptr<T>();
    const T* w = p.weight.defined() ? p.weight.const_data_ptr<T>() : nullptr;
    if (output_mask[1]) {
      grad_weight = at::empty({C}, p.x.options().memory_format(at::MemoryFormat::Contiguous));
      T* gw = grad_weight.mutable_data_ptr<T>();
      for (int64_t c = 0; c < C; ++c) gw[c] = static_cast<T>(sum_gx[c] * inv[c]);
    }
    if (output_mask[2]) {
      grad_bias = at::empty({C}, p.x.options().memory_format(at::MemoryFormat::Contiguous));
      T* gb = grad_bias.mutable_data_ptr<T>();
      for (int64_t c = 0; c < C; ++c) gb[c] = static_cast<T>(sum_g[c]);
    }
    if (output_mask[0]) {
      std::vector<T> alpha(C), beta(C), gamma(C);
      const double m = static_cast<double>(std::max<int64_t>(count, 1));
      for (int64_t c = 0; c < C; ++c) {
        const double k = static_cast<double>(inv[c]) * (w == nullptr ? 1.0 : w[c]);
        const double b = -k * inv[c] * inv[c] * sum_gx[c] / m;
        alpha[c] = static_cast<T>(k);
        beta[c] = static_cast<T>(b);
        gamma[c] = static_cast<T>(-k * sum_g[c] / m);
      }
      grad_x = at::empty_like(p.x);
      if (grad_x.numel() > 0) {
        run_input_gradient(gp, xp, scale.data(), shift.data(), alpha.data(), beta.data(), mu,
                           gamma.data(), grad_x.mutable_data_ptr<T>(), p.shape(), act, pre);
      }
    }
  });
  // Gradients output_mask leaves out come back empty, like depthwise_conv2d_backward's.
  auto cast = [&](const at::Tensor& t, at::ScalarType type) {
    return t.defined() ? t.to(type) : at::empty({0}, x.options().dtype(type));
  };
  return {cast(grad_x, x.scalar_type()),
          cast(grad_weight, weight.has_value() ? weight->scalar_type() : x.scalar_type()),
          cast(grad_bias, bias.has_value() ? bias->scalar_type() : x.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(mobilefuse, CPU, m) {
  m.impl("batch_norm_activation", &batch_norm_activation_cpu);
  m.impl("batch_norm_activation_backward", &batch_norm_activation_backward_cpu);
  m.impl("batch_norm_statistics", &batch_norm_statistics_cpu);
}

}  // namespace mobilefuse
