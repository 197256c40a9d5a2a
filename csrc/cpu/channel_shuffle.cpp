// Channel shuffle on CPU. Contiguous (N, C, *) input moves whole planes with
// memcpy; channels_last input permutes the C-vector of every pixel. Both are
// pure data movement, so kernels are chosen by element size, not dtype.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>

#include "../layout.h"

namespace mobilefuse {
namespace {

// out[n, j*g + i, :] = x[n, i*cpg + j, :] for planes of `plane_bytes` bytes.
void shuffle_planes(const char* src, char* dst, int64_t batch, int64_t channels,
                    int64_t groups, int64_t plane_bytes) {
  const int64_t cpg = channels / groups;
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(plane_bytes, 1));
  at::parallel_for(0, batch * channels, grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / channels;
      const int64_t oc = p % channels;
      const int64_t ic = (oc % groups) * cpg + oc / groups;
      std::memcpy(dst + p * plane_bytes, src + (n * channels + ic) * plane_bytes,
                  static_cast<size_t>(plane_bytes));
    }
  });
}

// One pixel: out[j*G + i] = in[i*cpg + j], a (G, cpg) -> (cpg, G) transpose. With G known at
// compile time the inner loop unrolls into G sequential read streams and one interleaved
// sequential write, which the compiler vectorizes with shuffles.
template <typename unit_t, int G>
inline void transpose_pixel(const unit_t* __restrict in, unit_t* __restrict out, int64_t cpg) {
  for (int64_t j = 0; j < cpg; ++j) {
    for (int i = 0; i < G; ++i) {
      out[j * G + i] = in[i * cpg + j];
    }
  }
}

template <typename unit_t>
inline void transpose_pixel_any(const unit_t* __restrict in, unit_t* __restrict out,
                                int64_t groups, int64_t cpg) {
  // Reads stride by cpg inside one pixel's C-vector, which is in cache; writes stay sequential.
  for (int64_t j = 0; j < cpg; ++j) {
    for (int64_t i = 0; i < groups; ++i) {
      out[j * groups + i] = in[i * cpg + j];
    }
  }
}

template <typename unit_t>
void shuffle_pixels(const unit_t* src, unit_t* dst, int64_t pixels, int64_t channels,
                    int64_t groups) {
  const int64_t cpg = channels / groups;
  const int64_t grain =
      std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(channels, 1));
  at::parallel_for(0, pixels, grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const unit_t* in = src + p * channels;
      unit_t* out = dst + p * channels;
      switch (groups) {  // the group counts ShuffleNet v1/v2 use
        case 2: transpose_pixel<unit_t, 2>(in, out, cpg); break;
        case 3: transpose_pixel<unit_t, 3>(in, out, cpg); break;
        case 4: transpose_pixel<unit_t, 4>(in, out, cpg); break;
        case 8: transpose_pixel<unit_t, 8>(in, out, cpg); break;
        default: transpose_pixel_any(in, out, groups, cpg);
      }
    }
  });
}

template <typename unit_t>
void shuffle_pixels_bytes(const at::Tensor& in, at::Tensor& out, int64_t pixels,
                          int64_t channels, int64_t groups) {
  shuffle_pixels(static_cast<const unit_t*>(in.const_data_ptr()),
                 static_cast<unit_t*>(out.mutable_data_ptr()), pixels, channels, groups);
}

at::Tensor channel_shuffle_cpu(const at::Tensor& x, int64_t groups) {
  TORCH_CHECK(x.device().is_cpu(), "channel_shuffle: expected a CPU tensor, got ", x.device());
  ShuffleProblem p = prepare_channel_shuffle(x, groups);
  if (p.in.numel() == 0) {
    return p.out;
  }
  const int64_t elem = static_cast<int64_t>(p.in.element_size());
  if (!p.channels_last) {
    shuffle_planes(static_cast<const char*>(p.in.const_data_ptr()),
                   static_cast<char*>(p.out.mutable_data_ptr()), p.batch, p.channels, groups,
                   p.spatial * elem);
    return p.out;
  }
  const int64_t pixels = p.batch * p.spatial;
  switch (elem) {
    case 1: shuffle_pixels_bytes<uint8_t>(p.in, p.out, pixels, p.channels, groups); break;
    case 2: shuffle_pixels_bytes<uint16_t>(p.in, p.out, pixels, p.channels, groups); break;
    case 4: shuffle_pixels_bytes<uint32_t>(p.in, p.out, pixels, p.channels, groups); break;
    case 8: shuffle_pixels_bytes<uint64_t>(p.in, p.out, pixels, p.channels, groups); break;
    default:
      TORCH_CHECK(false, "channel_shuffle: unsupported element size ", elem, " bytes (dtype ",
                  p.in.scalar_type(), ")");
  }
  return p.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mobilefuse, CPU, m) {
  m.impl("channel_shuffle", &channel_shuffle_cpu);
}

}  // namespace mobilefuse
