// Max pooling for inference on CPU, channels_last: F.max_pool2d(x, kernel, stride, padding)
// with dilation 1, floor mode and no indices (the stem pool of ShuffleNet and ResNet). Each
// output pixel's C-vector is built in place from the window's input vectors, which run along
// memory; the input rows a band of output rows reads stay in cache for its neighbours. NaN
// propagates as in PyTorch. Inputs in other layouts are copied to channels_last first.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <limits>

namespace mobilefuse {
namespace {

struct PoolGeometry {
  int64_t kh, kw, sh, sw, ph, pw;
};

void check_max_pool_args(const at::Tensor& x, at::IntArrayRef kernel, at::IntArrayRef stride,
                         at::IntArrayRef padding) {
  TORCH_CHECK(x.dim() == 4, "max_pool2d: x must have rank 4 (N, C, H, W), got rank ", x.dim());
  TORCH_CHECK(x.device().is_cpu(), "max_pool2d: expected a CPU tensor, got ", x.device());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()),
              "max_pool2d: x must be float16, bfloat16, float32 or float64, got ",
              x.scalar_type());
  TORCH_CHECK(kernel.size() == 2 && stride.size() == 2 && padding.size() == 2,
              "max_pool2d: kernel, stride and padding must have two values each");
  for (int d = 0; d < 2; ++d) {
    TORCH_CHECK(kernel[d] > 0 && stride[d] > 0, "max_pool2d: kernel and stride must be "
                "positive, got kernel ", kernel, " and stride ", stride);
    TORCH_CHECK(padding[d] >= 0 && 2 * padding[d] <= kernel[d], "max_pool2d: padding must be "
                "between 0 and half the kernel, got padding ", padding, " for kernel ", kernel);
    TORCH_CHECK(x.size(2 + d) + 2 * padding[d] >= kernel[d], "max_pool2d: the padded input ",
                x.sizes(), " is smaller than the kernel ", kernel);
  }
}

template <typename scalar_t>
inline scalar_t nan_max(scalar_t a, scalar_t b) {
  // b wins when larger or NaN, so a NaN anywhere in the window reaches the output.
  return (b > a || std::isnan(static_cast<float>(b))) ? b : a;
}

template <>
inline float nan_max<float>(float a, float b) {
  return (b > a || b != b) ? b : a;
}

template <>
inline double nan_max<double>(double a, double b) {
  return (b > a || b != b) ? b : a;
}

template <typename scalar_t>
void max_pool_rows(const scalar_t* x, scalar_t* out, int64_t batch, int64_t channels,
                   int64_t height, int64_t width, int64_t out_h, int64_t out_w,
                   const PoolGeometry& g) {
  const int64_t row_cost = std::max<int64_t>(1, out_w * channels * g.kh * g.kw);
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / row_cost);
  at::parallel_for(0, batch * out_h, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / out_h;
      const int64_t oh = row % out_h;
      const int64_t h0 = oh * g.sh - g.ph;
      const int64_t h_begin = std::max<int64_t>(h0, 0);
      const int64_t h_end = std::min<int64_t>(h0 + g.kh, height);
      for (int64_t ow = 0; ow < out_w; ++ow) {
        const int64_t w0 = ow * g.sw - g.pw;
        const int64_t w_begin = std::max<int64_t>(w0, 0);
        const int64_t w_end = std::min<int64_t>(w0 + g.kw, width);
        scalar_t* __restrict o = out + ((n * out_h + oh) * out_w + ow) * channels;
        // The window always holds an input pixel (padding <= kernel / 2): start from one.
        const scalar_t* first = x + ((n * height + h_begin) * width + w_begin) * channels;
        for (int64_t c = 0; c < channels; ++c) {
          o[c] = first[c];
        }
        for (int64_t ih = h_begin; ih < h_end; ++ih) {
          for (int64_t iw = w_begin; iw < w_end; ++iw) {
            const scalar_t* __restrict in = x + ((n * height + ih) * width + iw) * channels;
            for (int64_t c = 0; c < channels; ++c) {
              o[c] = nan_max(o[c], in[c]);
            }
          }
        }
      }
    }
  });
}

at::Tensor max_pool2d_cpu(const at::Tensor& x_in, at::IntArrayRef kernel, at::IntArrayRef stride,
                          at::IntArrayRef padding) {
  check_max_pool_args(x_in, kernel, stride, padding);
  const PoolGeometry g{kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1]};
  const at::Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t batch = x.size(0), channels = x.size(1), height = x.size(2), width = x.size(3);
  const int64_t out_h = (height + 2 * g.ph - g.kh) / g.sh + 1;
  const int64_t out_w = (width + 2 * g.pw - g.kw) / g.sw + 1;
  at::Tensor out = at::empty({batch, channels, out_h, out_w},
                             x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) {
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "max_pool2d", [&] {
    max_pool_rows<scalar_t>(x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                            batch, channels, height, width, out_h, out_w, g);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mobilefuse, CPU, m) {
  m.impl("max_pool2d", &max_pool2d_cpu);
}

}  // namespace mobilefuse
