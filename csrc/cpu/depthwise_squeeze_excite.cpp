// Inference form of depthwise convolution followed by squeeze-and-excitation, on CPU:
// squeeze_excite(act(depthwise_conv2d(x))) with the SE pool summed from each output row while
// that row is still in L1 (the depthwise kernel's epilogue), so the pool costs no pass over
// memory. With two images or more per thread each image is convolved, excited and gated by one
// thread in a row, its output still in cache; otherwise the excitation on the (N, C) means runs
// through torch inside this op and the gate multiplies the output in place. No autograd: the
// fused block calls it only when no gradient is recorded. Float16/bfloat16 compute in float32,
// like the depthwise op.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../layout.h"
#include "depthwise_entry.h"
#include "se_excitation.h"

namespace mobilefuse {
namespace {

using depthwise::Act;
using depthwise::Geometry;
using se::check_se_weights;
using se::ImageExcitation;

at::Tensor depthwise_squeeze_excite_cpu(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    c10::string_view activation, const at::Tensor& w_reduce,
    const std::optional<at::Tensor>& b_reduce, const at::Tensor& w_expand,
    const std::optional<at::Tensor>& b_expand, c10::string_view se_activation,
    c10::string_view gate) {
  const char* op = "depthwise_squeeze_excite";
  depthwise::check_args(op, x, weight, bias, stride, padding, dilation);
  TORCH_CHECK(x.device().is_cpu(), op, ": expected CPU tensors, got ", x.device());
  check_se_weights(op, x, w_reduce, b_reduce, w_expand, b_expand);
  se::check_se_options(op, "se_activation", se_activation, gate);
  const Act act = depthwise::parse_activation(op, "activation", activation);
  const Geometry g = depthwise::make_geometry(x, weight, stride, padding, dilation);
  const at::ScalarType ct = accumulate_type(x);
  const at::Tensor xc = x.to(ct).contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor w = depthwise::weight_by_tap(weight.to(ct));
  const at::Tensor b = bias.has_value() ? bias->to(ct).contiguous() : at::Tensor();
  at::Tensor out = at::empty({g.batch, g.channels, g.out_h, g.out_w}, xc.options(),
                             at::MemoryFormat::ChannelsLast);
  if (out.numel() == 0) return out.to(x.scalar_type()).contiguous(kernel_format(x));
  const se::ExcitationWeights weights(w_reduce, b_reduce, w_expand, b_expand, ct);
  // Two images or more per thread: each image's gate is applied by the thread that wrote it,
  // right after, from cache. Fewer: the rows of one image spread over threads, and the gate
  // is one more pass. Also one more pass where the excitation's weights outweigh an image's
  // output (R > pixels: MobileNetV3's 960-channel 7x7 layers, R = 240): excited image by
  // image, they would be read from L2/L3 once per image (1.8 MB each there) instead of once.
  if (g.batch >= 2 * at::get_num_threads() && w_reduce.size(0) <= g.out_h * g.out_w) {
    AT_DISPATCH_FLOATING_TYPES(ct, "mobilefuse_depthwise_squeeze_excite_by_image", [&] {
      const ImageExcitation<scalar_t> excite = weights.by_image<scalar_t>(
          se_activation == "silu", gate == "sigmoid",
          static_cast<scalar_t>(1.0 / static_cast<double>(g.out_h * g.out_w)));
      scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
      const int64_t pixels = g.out_h * g.out_w;
      depthwise::run_forward_nhwc_by_image<scalar_t>(
          xc.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
          b.defined() ? b.const_data_ptr<scalar_t>() : nullptr, out_data, g, act,
          [&](int64_t n, const scalar_t* sums) {
            std::vector<scalar_t> scratch(excite.R + excite.C);
            excite(out_data + n * pixels * g.channels, pixels, sums, scratch.data(),
                   scratch.data() + excite.R);
          });
    });
    return out.to(x.scalar_type()).contiguous(kernel_format(x));
  }
  at::Tensor sums = at::empty({g.batch, g.channels}, xc.options());
  AT_DISPATCH_FLOATING_TYPES(ct, "mobilefuse_depthwise_squeeze_excite", [&] {
    depthwise::run_forward_nhwc(xc.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                                b.defined() ? b.const_data_ptr<scalar_t>() : nullptr,
                                out.mutable_data_ptr<scalar_t>(), g, act,
                                sums.mutable_data_ptr<scalar_t>());
  });
  const at::Tensor pooled = sums.div_(static_cast<double>(g.out_h * g.out_w));
  const at::Tensor z = weights.gate_by_gemm(pooled, se_activation, gate);
  out.mul_(z.view({g.batch, g.channels, 1, 1}));
  return out.to(x.scalar_type()).contiguous(kernel_format(x));
}

}  // namespace

TORCH_LIBRARY_IMPL(mobilefuse, CPU, m) {
  m.impl("depthwise_squeeze_excite", &depthwise_squeeze_excite_cpu);
}

}  // namespace mobilefuse
