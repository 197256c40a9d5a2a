// Squeeze-and-excitation's heavy passes on CPU: per-(n, c) sums over H×W (of x, or of x*y for
// the gate's gradient) and the per-(n, c) affine map x*scale + shift (the gating, and the input
// gradient). NCHW works plane by plane; channels_last walks pixels with a block of channels in
// registers. Sums are float32 (float64 for float64) in a fixed order: deterministic.
// Float16/bfloat16 inputs are summed through a float32 copy and scaled element by element.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../layout.h"
#include "se_excitation.h"

namespace mobilefuse {
namespace {

// out[i] = sum over the p values of plane i of x (times y): NCHW planes are contiguous runs.
// Four independent accumulators hide the add latency.
template <typename T>
void sum_planes(const T* x, const T* y, T* out, int64_t planes, int64_t p) {
  using Vec = at::vec::Vectorized<T>;
  const int64_t step = Vec::size();
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(p, 1));
  at::parallel_for(0, planes, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const T* xp = x + i * p;
      const T* yp = y == nullptr ? nullptr : y + i * p;
      auto load = [&](int64_t j) {
        Vec v = Vec::loadu(xp + j);
        return yp == nullptr ? v : v * Vec::loadu(yp + j);
      };
      Vec a0(0), a1(0), a2(0), a3(0);
      int64_t j = 0;
      for (; j + 4 * step <= p; j += 4 * step) {
        a0 += load(j);
        a1 += load(j + step);
        a2 += load(j + 2 * step);
        a3 += load(j + 3 * step);
      }
      for (; j + step <= p; j += step) {
        a0 += load(j);
      }
      T sum = at::vec::vec_reduce_all<T>([](Vec a, Vec b) { return a + b; },
                                          (a0 + a1) + (a2 + a3));
      for (; j < p; ++j) {
        sum += yp == nullptr ? xp[j] : xp[j] * yp[j];
      }
      out[i] = sum;
    }
  });
}

// out[n, c] = sum over the p pixels of x[n, pixel, c] (times y): a block of channels is
// accumulated in registers while the pixels stream by.
template <typename T>
void sum_pixels(const T* x, const T* y, T* out, int64_t batch, int64_t channels, int64_t p) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t kVecs = 8;
  const int64_t block = kVecs * Vec::size();
  const int64_t blocks = (channels + block - 1) / block;
  at::parallel_for(0, batch * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / blocks;
      const int64_t c0 = (task % blocks) * block;
      const int64_t count = std::min(block, channels - c0);
      Vec acc[kVecs];
      for (auto& a : acc) {
        a = Vec(0);
      }
      for (int64_t q = 0; q < p; ++q) {
        const int64_t at_pixel = (n * p + q) * channels + c0;
        for (int64_t v = 0; v * Vec::size() < count; ++v) {
          const int64_t lanes = std::min<int64_t>(Vec::size(), count - v * Vec::size());
          Vec xv = Vec::loadu(x + at_pixel + v * Vec::size(), lanes);
          if (y != nullptr) {
            xv = xv * Vec::loadu(y + at_pixel + v * Vec::size(), lanes);
          }
          acc[v] += xv;
        }
      }
      for (int64_t v = 0; v * Vec::size() < count; ++v) {
        const int64_t lanes = std::min<int64_t>(Vec::size(), count - v * Vec::size());
        acc[v].store(out + n * channels + c0 + v * Vec::size(), lanes);
      }
    }
  });
}

at::Tensor se_channel_sum_cpu(const at::Tensor& x_in, const c10::optional<at::Tensor>& y_in) {
  const char* op = "se_channel_sum";
  check_cpu_image_input(op, "x", x_in);
  const at::MemoryFormat fmt = kernel_format(x_in);
  const at::ScalarType acc_type = accumulate_type(x_in);
  // Float16/bfloat16 are summed from a float32 copy.
  at::Tensor x = x_in.to(acc_type).contiguous(fmt);
  at::Tensor y;
  if (y_in.has_value()) {
    check_cpu_image_input(op, "y", *y_in);
    check_same_device_dtype_shape(op, *y_in, x_in);
    y = y_in->to(acc_type).contiguous(fmt);
  }
  const int64_t batch = x.size(0), channels = x.size(1), p = x.size(2) * x.size(3);
  at::Tensor out = at::empty({batch, channels}, x.options());
  if (out.numel() == 0) {
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES(acc_type, "mobilefuse_se_channel_sum", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.defined() ? y.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op_out = out.mutable_data_ptr<scalar_t>();
    if (fmt == at::MemoryFormat::ChannelsLast) {
      sum_pixels(xp, yp, op_out, batch, channels, p);
    } else {
      sum_planes(xp, yp, op_out, batch * channels, p);
    }
  });
  return out;
}

// out = x * scale[n, c] + shift[n, c] over one contiguous run of `count` values that share
// one (n, c) (NCHW plane) or that run over channels c0.. of one pixel (channels_last).
template <typename T, typename Acc>
inline void affine_run(const T* x, T* out, int64_t count, const Acc* scale, const Acc* shift,
                       bool per_element) {
  if constexpr (std::is_same_v<T, Acc>) {
    using Vec = at::vec::Vectorized<T>;
    int64_t j = 0;
    for (; j + Vec::size() <= count; j += Vec::size()) {
      Vec s = per_element ? Vec::loadu(scale + j) : Vec(scale[0]);
      Vec r = Vec::loadu(x + j) * s;
      if (shift != nullptr) {
        r = r + (per_element ? Vec::loadu(shift + j) : Vec(shift[0]));
      }
      r.store(out + j);
    }
    for (; j < count; ++j) {
      const int64_t k = per_element ? j : 0;
      out[j] = x[j] * scale[k] + (shift == nullptr ? T(0) : shift[k]);
    }
  } else {
    for (int64_t j = 0; j < count; ++j) {
      const int64_t k = per_element ? j : 0;
      out[j] = static_cast<T>(static_cast<Acc>(x[j]) * scale[k] +
                              (shift == nullptr ? Acc(0) : shift[k]));
    }
  }
}

at::Tensor se_channel_affine_cpu(const at::Tensor& x_in, const at::Tensor& scale_in,
                                 const c10::optional<at::Tensor>& shift_in) {
  const char* op = "se_channel_affine";
  check_cpu_image_input(op, "x", x_in);
  const at::ScalarType acc_type = accumulate_type(x_in);
  const int64_t batch = x_in.size(0), channels = x_in.size(1);
  auto check_nc = [&](const char* name, const at::Tensor& t) {
    TORCH_CHECK(t.dim() == 2 && t.size(0) == batch && t.size(1) == channels, op, ": ", name,
                " must have shape (N, C) = (", batch, ", ", channels, "), got ", t.sizes());
    TORCH_CHECK(t.device().is_cpu(), op, ": expected CPU tensors, got ", name, " on ",
                t.device());
    return t.to(acc_type).contiguous();
  };
  const at::Tensor scale = check_nc("scale", scale_in);
  const at::Tensor shift = shift_in.has_value() ? check_nc("shift", *shift_in) : at::Tensor();
  const at::MemoryFormat fmt = kernel_format(x_in);
  const at::Tensor x = x_in.contiguous(fmt);
  at::Tensor out = at::empty_like(x, fmt);
  const int64_t p = x.size(2) * x.size(3);
  if (out.numel() == 0) {
    return out;
  }
  const bool channels_last = fmt == at::MemoryFormat::ChannelsLast;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "mobilefuse_se_channel_affine", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op_out = out.mutable_data_ptr<scalar_t>();
    const acc_t* sp = scale.const_data_ptr<acc_t>();
    const acc_t* dp = shift.defined() ? shift.const_data_ptr<acc_t>() : nullptr;
    // Runs: NCHW planes (one scale each) or channels_last pixels (a scale per channel).
    const int64_t runs = channels_last ? batch * p : batch * channels;
    const int64_t length = channels_last ? channels : p;
    const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(length, 1));
    at::parallel_for(0, runs, grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t nc = channels_last ? (r / p) * channels : r;
        affine_run<scalar_t, acc_t>(xp + r * length, op_out + r * length, length, sp + nc,
                                    dp == nullptr ? nullptr : dp + nc, channels_last);
      }
    });
  });
  return out;
}

// The whole forward without autograd, one op call instead of seven: the pool, the excitation,
// the gating. Small excitations run image by image in C++ (a few thousand multiply-adds each,
// less than the call overhead of the two GEMMs and four elementwise ops they replace); large
// ones (wide reductions such as MobileNetV3's 960 -> 240, or many images) through torch's GEMM,
// which is faster there: side by side on a 2-core Xeon, C++ over the GEMM path was 1.13-1.67x
// for C x R up to 1152 x 48 and eight images, but 0.53-0.89x for 960 x 240 or 32 images.
bool excite_by_image(int64_t batch, int64_t channels, int64_t reduced) {
  return channels * reduced <= (int64_t{1} << 16) &&
         batch * channels * reduced <= (int64_t{1} << 19);
}

at::Tensor se_inference_cpu(const at::Tensor& x, const at::Tensor& w_reduce,
                            const c10::optional<at::Tensor>& b_reduce, const at::Tensor& w_expand,
                            const c10::optional<at::Tensor>& b_expand,
                            c10::string_view activation, c10::string_view gate) {
  const char* op = "se_inference";
  check_cpu_image_input(op, "x", x);
  se::check_se_weights(op, x, w_reduce, b_reduce, w_expand, b_expand);
  se::check_se_options(op, "activation", activation, gate);
  const at::Tensor sums = se_channel_sum_cpu(x, c10::nullopt);
  const at::ScalarType ct = sums.scalar_type();
  const int64_t batch = x.size(0), channels = x.size(1), reduced = w_reduce.size(0);
  const int64_t pixels = std::max<int64_t>(x.size(2) * x.size(3), 1);
  const se::ExcitationWeights weights(w_reduce, b_reduce, w_expand, b_expand, ct);
  if (!excite_by_image(batch, channels, reduced)) {
    const at::Tensor z =
        weights.gate_by_gemm(sums / static_cast<double>(pixels), activation, gate);
    return se_channel_affine_cpu(x, z, c10::nullopt);
  }
  at::Tensor scale = at::empty({batch, channels}, sums.options());
  if (scale.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(ct, "mobilefuse_se_inference", [&] {
      const se::ImageExcitation<scalar_t> excite = weights.by_image<scalar_t>(
          activation == "silu", gate == "sigmoid",
          static_cast<scalar_t>(1.0 / static_cast<double>(pixels)));
      const scalar_t* sum_data = sums.const_data_ptr<scalar_t>();
      scalar_t* scale_data = scale.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> hidden(reduced);
        for (int64_t n = begin; n < end; ++n) {
          excite.gate_values(sum_data + n * channels, hidden.data(), scale_data + n * channels);
        }
      });
    });
  }
  return se_channel_affine_cpu(x, scale, c10::nullopt);
}

}  // namespace

TORCH_LIBRARY_IMPL(mobilefuse, CPU, m) {
  m.impl("se_channel_sum", &se_channel_sum_cpu);
  m.impl("se_channel_affine", &se_channel_affine_cpu);
  m.impl("se_inference", &se_inference_cpu);
}

}  // namespace mobilefuse
