// What the CPU ops built on the depthwise convolution share with it (defined in
// depthwise_conv.cpp): argument checks, the geometry, the weight's NHWC layout and the NHWC
// forward on the best vector ISA this CPU has.
#pragma once

#include <ATen/ATen.h>

#include <functional>

#include "depthwise_types.h"

namespace mobilefuse {
namespace depthwise {

// "none", "relu", "relu6", "hardswish" or "silu"; otherwise an error naming `op` and its
// argument `arg`.
Act parse_activation(const char* op, const char* arg, c10::string_view name);

// The checks every depthwise op makes on x, weight, bias, stride, padding and dilation.
void check_args(const char* op, const at::Tensor& x, const at::Tensor& weight,
                const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                at::IntArrayRef padding, at::IntArrayRef dilation);

Geometry make_geometry(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation);

// The weight (C, 1, kh, kw) as (kh*kw, C): each tap's channels contiguous.
at::Tensor weight_by_tap(const at::Tensor& w);

// The NHWC forward (float or double); with `sums` (N * C values), also each output channel's
// sum per image.
template <typename T>
void run_forward_nhwc(const T* x, const T* w_taps, const T* bias, T* out, const Geometry& g,
                      Act act, T* sums = nullptr);

// The NHWC forward one image per task: after(n, sums) runs on that task's thread as soon as
// image n's output is written, with that image's per-channel sums (C values).
template <typename T>
void run_forward_nhwc_by_image(const T* x, const T* w_taps, const T* bias, T* out,
                               const Geometry& g, Act act,
                               const std::function<void(int64_t, const T*)>& after);

}  // namespace depthwise
}  // namespace mobilefuse
