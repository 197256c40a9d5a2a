// Inference form of an inverted residual block's first half on CPU:
// squeeze_excite(act(depthwise_conv2d(act_e(conv1x1(x, expand_weight, expand_bias))))), the
// squeeze-and-excitation optional, with the expanded activation kept to a ring of rows in
// cache (expand_depthwise_kernels.h) instead of written to memory and read back. With enough
// images to balance the threads each image is expanded, convolved, excited and gated by one
// thread in a row; otherwise each image splits into bands of rows (each expanding the few rows
// bands share) or channel groups, and the excitation runs through torch after. No autograd:
// the fused block calls it only when no gradient is recorded. Float16/bfloat16 compute in
// float32, like the depthwise op.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "../layout.h"
#include "cpu_capability.h"
#include "depthwise_entry.h"
#include "expand_depthwise_kernels.h"
#include "se_excitation.h"

namespace mobilefuse {
namespace depthwise {
#ifdef MOBILEFUSE_AVX512_KERNELS
// Defined in expand_depthwise_avx512.cpp, compiled with AVX-512 enabled.
namespace AVX512 {
template <typename T>
void expand_forward_nhwc(const T* x, const Expansion<T>& e, const T* w_taps, const T* bias,
                         T* out, const Geometry& g, Act act, int64_t groups, int64_t bands,
                         T* sums, const std::function<void(int64_t)>& after);
}  // namespace AVX512
#endif
}  // namespace depthwise

namespace {

using depthwise::Act;
using depthwise::Expansion;
using depthwise::Geometry;

// How many channel groups or row bands split each image's work into tasks: whole images where
// they keep the threads 90% busy, otherwise each image in the fewest parts that make the tasks
// a multiple of the threads. Bands where the rows they expand twice (those they share, rounded
// to the ring's fills) add at most 30%; channel groups, which repeat no work, otherwise.
// (Groups split every pixel's cache lines between threads and read the input once each: at
// batch 1 on two threads, 1.2-1.9x slower than two bands on the 112x112 to 28x28 maps; on the
// 14x14 and 7x7 maps, where two bands expand 1.4-2x the rows, 1.1-1.4x faster.)
struct Split {
  int64_t groups, bands;
};

Split split_images(const Geometry& g, int64_t threads) {
  const int64_t rounds = (g.batch + threads - 1) / threads;
  if (10 * g.batch >= 9 * rounds * threads) return {1, 1};
  const int64_t parts = threads / std::gcd(g.batch, threads);
  const int64_t bands = std::min(parts, g.out_h);
  if (10 * depthwise::band_expanded_rows(g, bands) <= 13 * g.height) return {1, bands};
  const int64_t groups = std::min(parts, depthwise::group_units(g.channels));
  return {groups, std::clamp<int64_t>((parts + groups - 1) / groups, 1, g.out_h)};
}

template <typename T>
void run_expand_forward(const T* x, const Expansion<T>& e, const T* w_taps, const T* bias,
                        T* out, const Geometry& g, Act act, const Split& split, T* sums,
                        const std::function<void(int64_t)>& after) {
#ifdef MOBILEFUSE_AVX512_KERNELS
  if (use_avx512()) {
    return depthwise::AVX512::expand_forward_nhwc(x, e, w_taps, bias, out, g, act, split.groups,
                                                  split.bands, sums, after);
  }
#endif
  depthwise::expand_forward_nhwc(x, e, w_taps, bias, out, g, act, split.groups, split.bands,
                                 sums, after);
}

// expand_weight (C, C_in) or (C, C_in, 1, 1) and expand_bias (C,): x's dtype and device.
void check_expansion(const char* op, const at::Tensor& x, const at::Tensor& expand_weight,
                     const std::optional<at::Tensor>& expand_bias) {
  const bool shaped = (expand_weight.dim() == 2 ||
                       (expand_weight.dim() == 4 && expand_weight.size(2) == 1 &&
                        expand_weight.size(3) == 1)) &&
                      expand_weight.size(1) == x.size(1) && expand_weight.size(0) >= 1;
  TORCH_CHECK(shaped, op, ": expand_weight must have shape (C, C_in) or (C, C_in, 1, 1) with "
              "C_in=", x.size(1), ", got ", expand_weight.sizes());
  TORCH_CHECK(expand_weight.scalar_type() == x.scalar_type() &&
                  expand_weight.device() == x.device(),
              op, ": expand_weight must match x's dtype and device");
  if (expand_bias.has_value()) {
    TORCH_CHECK(expand_bias->dim() == 1 && expand_bias->size(0) == expand_weight.size(0), op,
                ": expand_bias must have shape (C,) with C=", expand_weight.size(0), ", got ",
                expand_bias->sizes());
    TORCH_CHECK(expand_bias->scalar_type() == x.scalar_type() &&
                    expand_bias->device() == x.device(),
                op, ": expand_bias must match x's dtype and device");
  }
}

at::Tensor expand_depthwise_cpu(
    const at::Tensor& x, const at::Tensor& expand_weight,
    const std::optional<at::Tensor>& expand_bias, c10::string_view expand_activation,
    const at::Tensor& weight, const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view activation,
    const std::optional<at::Tensor>& w_reduce, const std::optional<at::Tensor>& b_reduce,
    const std::optional<at::Tensor>& w_expand, const std::optional<at::Tensor>& b_expand,
    c10::string_view se_activation, c10::string_view gate) {
  const char* op = "expand_depthwise";
  TORCH_CHECK(x.dim() == 4, op, ": x must have rank 4 (N, C_in, H, W), got ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op,
              ": x must be float16, bfloat16, float32 or float64, got ", x.scalar_type());
  check_expansion(op, x, expand_weight, expand_bias);
  TORCH_CHECK(x.device().is_cpu(), op, ": expected CPU tensors, got ", x.device());
  const int64_t C = expand_weight.size(0);
  // The expanded map's shape, without data, for the depthwise and SE argument checks.
  const at::Tensor hidden =
      at::empty({1}, x.options()).expand({x.size(0), C, x.size(2), x.size(3)});
  depthwise::check_args(op, hidden, weight, bias, stride, padding, dilation);
  const bool se = w_reduce.has_value();
  TORCH_CHECK(se == w_expand.has_value(), op,
              ": give both w_reduce and w_expand (squeeze-and-excitation) or neither");
  TORCH_CHECK(se || (!b_reduce.has_value() && !b_expand.has_value()), op,
              ": b_reduce and b_expand need w_reduce and w_expand");
  const Act expand_act = depthwise::parse_activation(op, "expand_activation", expand_activation);
  const Act act = depthwise::parse_activation(op, "activation", activation);
  const Geometry g = depthwise::make_geometry(hidden, weight, stride, padding, dilation);
  const at::ScalarType ct = accumulate_type(x);
  std::optional<se::ExcitationWeights> excitation;
  if (se) {
    se::check_se_weights(op, hidden, *w_reduce, b_reduce, *w_expand, b_expand);
    se::check_se_options(op, "se_activation", se_activation, gate);
    excitation.emplace(*w_reduce, b_reduce, *w_expand, b_expand, ct);
  }
  const at::Tensor xc = x.to(ct).contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor w = depthwise::weight_by_tap(weight.to(ct));
  const at::Tensor b = bias.has_value() ? bias->to(ct).contiguous() : at::Tensor();
  at::Tensor out = at::empty({g.batch, C, g.out_h, g.out_w}, xc.options(),
                             at::MemoryFormat::ChannelsLast);
  if (out.numel() == 0) return out.to(x.scalar_type()).contiguous(kernel_format(x));
  const std::optional<at::Tensor> eb =
      expand_bias.has_value() ? std::optional<at::Tensor>(expand_bias->to(ct).contiguous())
                              : std::nullopt;
  const int64_t pixels = g.out_h * g.out_w;
  const Split split = split_images(g, at::get_num_threads());
  // Image by image, the gate applied from cache, as depthwise_squeeze_excite decides.
  const bool by_image =
      se && split.groups == 1 && split.bands == 1 && w_reduce->size(0) <= pixels;
  at::Tensor sums = se ? at::empty({g.batch, split.bands, C}, xc.options()) : at::Tensor();
  const at::Tensor ew = expand_weight.to(ct).reshape({C, x.size(1)}).contiguous();
  AT_DISPATCH_FLOATING_TYPES(ct, "mobilefuse_expand_depthwise", [&] {
    const Expansion<scalar_t> e{ew.const_data_ptr<scalar_t>(),
                                eb.has_value() ? eb->const_data_ptr<scalar_t>() : nullptr,
                                x.size(1), expand_act};
    scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
    scalar_t* sums_data = se ? sums.mutable_data_ptr<scalar_t>() : nullptr;
    std::function<void(int64_t)> after;
    std::optional<se::ImageExcitation<scalar_t>> excite;
    if (by_image) {
      excite.emplace(excitation->by_image<scalar_t>(
          se_activation == "silu", gate == "sigmoid",
          static_cast<scalar_t>(1.0 / static_cast<double>(pixels))));
      after = [&](int64_t n) {
        std::vector<scalar_t> scratch(excite->R + excite->C);
        (*excite)(out_data + n * pixels * C, pixels, sums_data + n * C, scratch.data(),
                  scratch.data() + excite->R);
      };
    }
    run_expand_forward<scalar_t>(xc.const_data_ptr<scalar_t>(), e, w.const_data_ptr<scalar_t>(),
                                 b.defined() ? b.const_data_ptr<scalar_t>() : nullptr, out_data,
                                 g, act, split, sums_data, after);
  });
  if (se && !by_image) {
    // The bands' sums added in band order (the same bits run to run), then the excitation.
    const at::Tensor pooled = sums.sum(1).div_(static_cast<double>(pixels));
    const at::Tensor z = excitation->gate_by_gemm(pooled, se_activation, gate);
    out.mul_(z.view({g.batch, C, 1, 1}));
  }
  return out.to(x.scalar_type()).contiguous(kernel_format(x));
}

}  // namespace

TORCH_LIBRARY_IMPL(mobilefuse, CPU, m) {
  m.impl("expand_depthwise", &expand_depthwise_cpu);
}

}  // namespace mobilefuse
