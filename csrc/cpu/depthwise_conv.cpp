// Depthwise convolution on CPU, with bias and activation fused into the forward and the
// activation's derivative fused into the backward (the pre-activation is recomputed).
//
// NCHW transposes one vector's worth of channels at a time into an NHWC block and runs the
// NHWC kernels on it (depthwise_channel_blocks.h). Planes too large for that buffer go plane
// by plane: each input plane is copied once into a zero-padded buffer split into `stride_w`
// column phases, so every tap of every output row reads a contiguous run and the inner loops
// are plain vector FMAs. NHWC vectorizes over channels and walks an output
// row one vector of channels at a time, in groups of pixels with independent sums that share
// the input columns they read. Float16/bfloat16 run through float32 copies (float32
// accumulation); float64 is computed in float64.
//
// The backward walks each channel (NCHW) or band of output rows (NHWC, fused: dz, the weight
// and bias sums and grad_x in one pass) on one thread, and adds the partial sums in a fixed
// order: the weight and bias gradients are deterministic, with no atomics.
//
// The kernels live in depthwise_kernels.h. Where the build adds an AVX-512 copy of them
// (depthwise_conv_avx512.cpp), channels_last and the NCHW channel blocks run it on CPUs that
// have AVX-512: a vector of 16 floats covers twice the channels per instruction. The NCHW
// plane kernels stay on the AVX2 build: they vectorize over the width.
#include <ATen/ATen.h>
#include <ATen/Version.h>
#include <torch/library.h>

#include "../layout.h"
#include "cpu_capability.h"
#include "depthwise_channel_blocks.h"
#include "depthwise_entry.h"

namespace mobilefuse {
namespace depthwise {
#ifdef MOBILEFUSE_AVX512_KERNELS
// Defined in depthwise_conv_avx512.cpp, compiled with AVX-512 enabled.
namespace AVX512 {
template <typename T>
void forward_nhwc(const T* x, const T* w_taps, const T* bias, T* out, const Geometry& g, Act act,
                  T* sums);
template <typename T>
void forward_nhwc_by_image(const T* x, const T* w_taps, const T* bias, T* out,
                           const Geometry& g, Act act,
                           const std::function<void(int64_t, const T*)>& after);
template <typename T>
void backward_nhwc(const T* grad, const T* x, const T* w_taps, const T* bias, T* gx, T* gw,
                   T* gb, const Geometry& g, Act act, GradMask mask);
template <typename T>
void forward_nchw_blocked(const T* x, const T* w, const T* bias, T* out, const Geometry& g,
                          Act act);
template <typename T>
void backward_nchw_blocked(const T* grad, const T* x, const T* w, const T* bias, T* gx, T* gw,
                           T* gb, const Geometry& g, Act act, GradMask mask);
}  // namespace AVX512
#endif

template <typename T>
void run_forward_nhwc(const T* x, const T* w_taps, const T* bias, T* out, const Geometry& g,
                      Act act, T* sums) {
#ifdef MOBILEFUSE_AVX512_KERNELS
  if (use_avx512()) return AVX512::forward_nhwc(x, w_taps, bias, out, g, act, sums);
#endif
  forward_nhwc(x, w_taps, bias, out, g, act, sums);
}

template <typename T>
void run_forward_nhwc_by_image(const T* x, const T* w_taps, const T* bias, T* out,
                               const Geometry& g, Act act,
                               const std::function<void(int64_t, const T*)>& after) {
#ifdef MOBILEFUSE_AVX512_KERNELS
  if (use_avx512()) return AVX512::forward_nhwc_by_image(x, w_taps, bias, out, g, act, after);
#endif
  forward_nhwc_by_image(x, w_taps, bias, out, g, act, after);
}

template void run_forward_nhwc_by_image<float>(
    const float*, const float*, const float*, float*, const Geometry&, Act,
    const std::function<void(int64_t, const float*)>&);
template void run_forward_nhwc_by_image<double>(
    const double*, const double*, const double*, double*, const Geometry&, Act,
    const std::function<void(int64_t, const double*)>&);

template void run_forward_nhwc<float>(const float*, const float*, const float*, float*,
                                      const Geometry&, Act, float*);
template void run_forward_nhwc<double>(const double*, const double*, const double*, double*,
                                       const Geometry&, Act, double*);

Act parse_activation(const char* op, const char* arg, c10::string_view name) {
  if (name == "none") return Act::kNone;
  if (name == "relu") return Act::kRelu;
  if (name == "relu6") return Act::kRelu6;
  if (name == "hardswish") return Act::kHardSwish;
  if (name == "silu") return Act::kSilu;
  TORCH_CHECK(false, op, ": ", arg, " must be none, relu, relu6, hardswish or silu, got ", name);
}

void check_args(const char* op, const at::Tensor& x, const at::Tensor& weight,
                const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                at::IntArrayRef padding, at::IntArrayRef dilation) {
  TORCH_CHECK(x.dim() == 4, op, ": x must have rank 4 (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op,
              ": x must be float16, bfloat16, float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == x.size(1) && weight.size(1) == 1, op,
              ": weight must have shape (C, 1, kh, kw) with C=", x.size(1), ", got ",
              weight.sizes());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), op, ": weight dtype ",
              weight.scalar_type(), " differs from x dtype ", x.scalar_type());
  TORCH_CHECK(weight.device() == x.device(), op, ": weight is on ", weight.device(),
              " but x is on ", x.device());
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == x.size(1), op,
                ": bias must have shape (C,), got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == x.scalar_type() && bias->device() == x.device(), op,
                ": bias must match x's dtype and device");
  }
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, op,
              ": stride, padding and dilation must have 2 entries");
  TORCH_CHECK(stride[0] >= 1 && stride[1] >= 1, op, ": stride must be >= 1, got ", stride);
  TORCH_CHECK(dilation[0] >= 1 && dilation[1] >= 1, op, ": dilation must be >= 1, got ",
              dilation);
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0, op, ": padding must be >= 0, got ", padding);
  for (int d = 0; d < 2; ++d) {
    TORCH_CHECK(dilation[d] * (weight.size(2 + d) - 1) + 1 <= x.size(2 + d) + 2 * padding[d], op,
                ": the kernel is larger than the padded input");
  }
}

Geometry make_geometry(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation) {
  Geometry g{};
  g.batch = x.size(0);
  g.channels = x.size(1);
  g.height = x.size(2);
  g.width = x.size(3);
  g.kh = weight.size(2);
  g.kw = weight.size(3);
  g.sh = stride[0];
  g.sw = stride[1];
  g.ph = padding[0];
  g.pw = padding[1];
  g.dh = dilation[0];
  g.dw = dilation[1];
  g.out_h = (g.height + 2 * g.ph - g.dh * (g.kh - 1) - 1) / g.sh + 1;
  g.out_w = (g.width + 2 * g.pw - g.dw * (g.kw - 1) - 1) / g.sw + 1;
  return g;
}

// Float16/bfloat16 compute in float32; float32/float64 as they are.
// The weight as (kh*kw, C): each tap's channels contiguous, for the NHWC kernels.
at::Tensor weight_by_tap(const at::Tensor& w) {
  return w.reshape({w.size(0), w.size(2) * w.size(3)}).t().contiguous();
}

}  // namespace depthwise

namespace {

using depthwise::Act;
using depthwise::Geometry;
using depthwise::GradMask;
using depthwise::check_args;
using depthwise::make_geometry;
using depthwise::parse_activation;
using depthwise::run_forward_nhwc;
using depthwise::weight_by_tap;

template <typename T>
void run_backward_nhwc(const T* grad, const T* x, const T* w_taps, const T* bias, T* gx,
                       T* gw, T* gb, const Geometry& g, Act act, GradMask mask) {
#ifdef MOBILEFUSE_AVX512_KERNELS
  if (use_avx512()) {
    return depthwise::AVX512::backward_nhwc(grad, x, w_taps, bias, gx, gw, gb, g, act, mask);
  }
#endif
  depthwise::backward_nhwc(grad, x, w_taps, bias, gx, gw, gb, g, act, mask);
}

// NCHW runs through channel blocks (depthwise_channel_blocks.h) unless a plane is so large
// that the per-thread block buffers (plane x vector lanes, three of them in the backward)
// would not fit in cache and would cost real memory: past 2^17 pixels (8 MiB a buffer at
// most: 16 float or 8 double lanes), the plane kernels, which buffer one padded plane.
bool use_channel_blocks(const Geometry& g) { return g.height * g.width <= (int64_t{1} << 17); }

template <typename T>
void run_forward_nchw(const T* x, const T* w, const T* bias, T* out, const Geometry& g,
                      Act act) {
  if (use_channel_blocks(g)) {
#ifdef MOBILEFUSE_AVX512_KERNELS
    if (use_avx512()) return depthwise::AVX512::forward_nchw_blocked(x, w, bias, out, g, act);
#endif
    return depthwise::forward_nchw_blocked(x, w, bias, out, g, act);
  }
  depthwise::forward_nchw(x, w, bias, out, g, act);
}

template <typename T>
void run_backward_nchw(const T* grad, const T* x, const T* w, const T* bias, T* gx, T* gw,
                       T* gb, const Geometry& g, Act act, GradMask mask) {
  if (use_channel_blocks(g)) {
#ifdef MOBILEFUSE_AVX512_KERNELS
    if (use_avx512()) {
      return depthwise::AVX512::backward_nchw_blocked(grad, x, w, bias, gx, gw, gb, g, act,
                                                      mask);
    }
#endif
    return depthwise::backward_nchw_blocked(grad, x, w, bias, gx, gw, gb, g, act, mask);
  }
  depthwise::backward_nchw(grad, x, w, bias, gx, gw, gb, g, act, mask);
}

// ---------------------------------------------------------------------------------------
// Op entry points

at::Tensor depthwise_conv2d_cpu(const at::Tensor& x, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation,
                                c10::string_view activation) {
  check_args("depthwise_conv2d", x, weight, bias, stride, padding, dilation);
  TORCH_CHECK(x.device().is_cpu(), "depthwise_conv2d: expected CPU tensors, got ", x.device());
  const Act act = parse_activation("depthwise_conv2d", "activation", activation);
  const Geometry g = make_geometry(x, weight, stride, padding, dilation);
  const at::MemoryFormat fmt = kernel_format(x);
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast;
  const at::ScalarType ct = accumulate_type(x);
  const at::Tensor xc = x.to(ct).contiguous(fmt);
  const at::Tensor w = nhwc ? weight_by_tap(weight.to(ct)) : weight.to(ct).contiguous();
  const at::Tensor b = bias.has_value() ? bias->to(ct).contiguous() : at::Tensor();
  at::Tensor out = at::empty({g.batch, g.channels, g.out_h, g.out_w}, xc.options(), fmt);
  if (out.numel() == 0) return out.to(x.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(ct, "mobilefuse_depthwise_conv2d", [&] {
    const scalar_t* bp = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
    if (nhwc) {
      run_forward_nhwc(xc.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), bp,
                   out.mutable_data_ptr<scalar_t>(), g, act);
    } else {
      run_forward_nchw(xc.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), bp,
                   out.mutable_data_ptr<scalar_t>(), g, act);
    }
  });
  return out.to(x.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> depthwise_conv2d_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, c10::string_view activation, std::array<bool, 3> output_mask) {
  const char* op = "depthwise_conv2d_backward";
  check_args(op, x, weight, bias, stride, padding, dilation);
  TORCH_CHECK(x.device().is_cpu() && grad_out.device().is_cpu(), op, ": expected CPU tensors");
  const Act act = parse_activation(op, "activation", activation);
  const Geometry g = make_geometry(x, weight, stride, padding, dilation);
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({g.batch, g.channels, g.out_h, g.out_w}), op,
              ": grad_out has shape ", grad_out.sizes(), ", expected the output's");
  TORCH_CHECK(grad_out.scalar_type() == x.scalar_type(), op, ": grad_out dtype ",
              grad_out.scalar_type(), " differs from x dtype ", x.scalar_type());
  const GradMask mask{output_mask[0], output_mask[1], output_mask[2] && bias.has_value()};
  const at::MemoryFormat fmt = kernel_format(x);
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast;
  const at::ScalarType ct = accumulate_type(x);
  const at::TensorOptions opts = x.options().dtype(ct);
  const at::Tensor xc = x.to(ct).contiguous(fmt);
  const at::Tensor gc = grad_out.to(ct).contiguous(fmt);
  const at::Tensor w = nhwc ? weight_by_tap(weight.to(ct)) : weight.to(ct).contiguous();
  const at::Tensor b = bias.has_value() ? bias->to(ct).contiguous() : at::Tensor();
  at::Tensor gx = mask.input ? at::empty(x.sizes(), opts.memory_format(fmt)) : at::empty({0}, opts);
  at::Tensor gw = mask.weight ? at::zeros(weight.sizes(), opts) : at::empty({0}, opts);
  at::Tensor gb = mask.bias ? at::zeros({g.channels}, opts) : at::empty({0}, opts);
  const bool work = mask.input || mask.weight || mask.bias;
  if (work && g.batch * g.channels * g.out_h * g.out_w > 0) {
    AT_DISPATCH_FLOATING_TYPES(ct, "mobilefuse_depthwise_conv2d_backward", [&] {
      const scalar_t* bp = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
      scalar_t* gxp = mask.input ? gx.mutable_data_ptr<scalar_t>() : nullptr;
      scalar_t* gwp = mask.weight ? gw.mutable_data_ptr<scalar_t>() : nullptr;
      scalar_t* gbp = mask.bias ? gb.mutable_data_ptr<scalar_t>() : nullptr;
      if (nhwc) {
        run_backward_nhwc(gc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(),
                          w.const_data_ptr<scalar_t>(), bp, gxp, gwp, gbp, g, act, mask);
      } else {
        run_backward_nchw(gc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(),
                      w.const_data_ptr<scalar_t>(), bp, gxp, gwp, gbp, g, act, mask);
      }
    });
  } else if (mask.input) {
    gx.zero_();  // an empty output: no pixel receives gradient
  }
  const at::ScalarType out_type = x.scalar_type();
  return {gx.to(out_type), gw.to(out_type), gb.to(out_type)};
}

}  // namespace

TORCH_LIBRARY_IMPL(mobilefuse, CPU, m) {
  m.impl("depthwise_conv2d", &depthwise_conv2d_cpu);
  m.impl("depthwise_conv2d_backward", &depthwise_conv2d_backward_cpu);
}

}  // namespace mobilefuse
