// concat_shuffle on CPU: channel_shuffle(cat((a, b), 1), 2) in one pass, the end of every
// ShuffleNetV2 unit. Output channel 2i is a's channel i and 2i + 1 is b's, so the
// concatenation is never written. Channels_last interleaves the two C-vectors of each pixel;
// contiguous (N, C, *) copies whole planes. Inputs may be channel slices of a larger tensor
// (the unit's `x.chunk(2, 1)`): they are read in place when their pixels (channels_last) or
// planes (contiguous) are evenly spaced. Pure data movement, so kernels go by element size.
// concat_shuffle_chunks writes the output's two channel halves as two dense channels_last
// tensors instead (the next unit's `x.chunk(2, 1)`, each read in place by its convolution).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/TensorUtils.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <tuple>
#include <utility>

#include "../layout.h"

namespace mobilefuse {
namespace {

void check_concat_shuffle_args(const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK(a.dim() >= 3, "concat_shuffle: a must have rank >= 3 (N, C, *), got rank ",
              a.dim());
  TORCH_CHECK(a.sizes() == b.sizes(), "concat_shuffle: b must have the shape of a ", a.sizes(),
              ", got ", b.sizes());
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "concat_shuffle: b must have the dtype of a (",
              a.scalar_type(), "), got ", b.scalar_type());
  TORCH_CHECK(a.device().is_cpu() && b.device().is_cpu(),
              "concat_shuffle: expected CPU tensors, got a on ", a.device(), " and b on ",
              b.device());
}

// The output's layout: channels_last when a is a 4-D tensor laid out that way (also a channel
// slice of one), as empty_like would choose.
bool output_channels_last(const at::Tensor& a) {
  return a.dim() == 4 && !a.is_contiguous() &&
         a.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

// Distance between consecutive pixels of a 4-D tensor whose (N, H, W) dims flatten into one
// and whose channels are adjacent; 0 when it is not so laid out.
int64_t pixel_stride(const at::Tensor& t) {
  const int64_t channels = t.size(1);
  at::Tensor pixels_first = t.permute({0, 2, 3, 1});
  const std::vector<int64_t> flat_shape = {t.numel() / channels, channels};
  auto flat = at::detail::computeStride(pixels_first.sizes(), pixels_first.strides(),
                                        at::IntArrayRef(flat_shape));
  if (!flat.has_value() || (channels > 1 && (*flat)[1] != 1) || (*flat)[0] < channels) {
    return 0;
  }
  return (*flat)[0];
}

// `t`'s pixel stride (see pixel_stride), `t` copied to channels_last first where it has
// none.
int64_t pixels_in_place(at::Tensor& t) {
  int64_t stride = pixel_stride(t);
  if (stride == 0) {
    t = t.contiguous(at::MemoryFormat::ChannelsLast);
    stride = t.size(1);
  }
  return stride;
}

// a and b as rows of `half` channels per pixel, `pixels` of them, read in place where their
// pixels are evenly spaced (else copied to channels_last; see pixels_in_place).
struct PixelRows {
  at::Tensor a, b;
  int64_t a_stride, b_stride, half, pixels;
  PixelRows(at::Tensor a_in, at::Tensor b_in) : a(std::move(a_in)), b(std::move(b_in)) {
    a_stride = pixels_in_place(a);
    b_stride = pixels_in_place(b);
    half = a.size(1);
    pixels = a.numel() / half;
  }
};

// f(p) for every pixel p of `pixels` (of 2 * half elements each) on ATen's threads.
template <typename F>
void for_each_pixel(int64_t pixels, int64_t half, F f) {
  const int64_t grain =
      std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(2 * half, 1));
  at::parallel_for(0, pixels, grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) f(p);
  });
}

// f(unit) with `unit` an unsigned integer as wide as t's elements: the kernels move bits, so
// one instantiation serves every dtype of a width.
template <typename F>
void with_unit_type(const at::Tensor& t, const char* op, F f) {
  switch (t.element_size()) {
    case 1: return f(uint8_t{});
    case 2: return f(uint16_t{});
    case 4: return f(uint32_t{});
    case 8: return f(uint64_t{});
    default:
      TORCH_CHECK(false, op, ": unsupported element size ", t.element_size(), " bytes (dtype ",
                  t.scalar_type(), ")");
  }
}

template <typename unit_t>
const unit_t* units(const at::Tensor& t) {
  return static_cast<const unit_t*>(t.const_data_ptr());
}

template <typename unit_t>
unit_t* mutable_units(at::Tensor& t) {
  return static_cast<unit_t*>(t.mutable_data_ptr());
}

// out[p, 2i] = a[p, i], out[p, 2i + 1] = b[p, i] for `pixels` pixels of `half` channels.
template <typename unit_t>
void interleave_pixels(const unit_t* a, int64_t a_stride, const unit_t* b, int64_t b_stride,
                       unit_t* out, int64_t pixels, int64_t half) {
  for_each_pixel(pixels, half, [&](int64_t p) {
    const unit_t* __restrict pa = a + p * a_stride;
    const unit_t* __restrict pb = b + p * b_stride;
    unit_t* __restrict po = out + p * 2 * half;
    for (int64_t i = 0; i < half; ++i) {
      po[2 * i] = pa[i];
      po[2 * i + 1] = pb[i];
    }
  });
}

at::Tensor concat_shuffle_channels_last(const at::Tensor& a, const at::Tensor& b,
                                        at::Tensor out) {
  const PixelRows in(a, b);
  with_unit_type(in.a, "concat_shuffle", [&](auto unit) {
    using unit_t = decltype(unit);
    interleave_pixels(units<unit_t>(in.a), in.a_stride, units<unit_t>(in.b), in.b_stride,
                      mutable_units<unit_t>(out), in.pixels, in.half);
  });
  return out;
}

// The shuffled output's channels [0, half) into `first` and [half, 2 * half) into `second`,
// both `half` channels per pixel: out channel 2i is a's channel i and 2i + 1 is b's.
template <typename unit_t>
void interleave_pixels_chunks(const unit_t* a, int64_t a_stride, const unit_t* b,
                              int64_t b_stride, unit_t* first, unit_t* second, int64_t pixels,
                              int64_t half) {
  const int64_t whole_pairs = half / 2;  // pairs that land in `first` whole
  const bool odd = half % 2 != 0;        // pair `whole_pairs` straddles the two chunks
  for_each_pixel(pixels, half, [&](int64_t p) {
    const unit_t* __restrict pa = a + p * a_stride;
    const unit_t* __restrict pb = b + p * b_stride;
    unit_t* __restrict pf = first + p * half;
    unit_t* __restrict ps = second + p * half;
    for (int64_t i = 0; i < whole_pairs; ++i) {
      pf[2 * i] = pa[i];
      pf[2 * i + 1] = pb[i];
    }
    int64_t i = whole_pairs;
    if (odd) {
      pf[half - 1] = pa[i];
      ps[0] = pb[i];
      ++i;
    }
    unit_t* __restrict rest = ps + (odd ? 1 : 0);
    for (int64_t j = 0; i + j < half; ++j) {
      rest[2 * j] = pa[i + j];
      rest[2 * j + 1] = pb[i + j];
    }
  });
}

std::tuple<at::Tensor, at::Tensor> concat_shuffle_chunks_cpu(const at::Tensor& a_in,
                                                             const at::Tensor& b_in) {
  check_concat_shuffle_args(a_in, b_in);
  TORCH_CHECK(a_in.dim() == 4, "concat_shuffle_chunks: a must have rank 4 (N, C, H, W), got "
              "rank ", a_in.dim());
  const auto options = a_in.options().memory_format(at::MemoryFormat::ChannelsLast);
  at::Tensor first = at::empty(a_in.sizes(), options);
  at::Tensor second = at::empty(a_in.sizes(), options);
  if (first.numel() == 0) {
    return {first, second};
  }
  const PixelRows in(a_in, b_in);
  with_unit_type(in.a, "concat_shuffle_chunks", [&](auto unit) {
    using unit_t = decltype(unit);
    interleave_pixels_chunks(units<unit_t>(in.a), in.a_stride, units<unit_t>(in.b), in.b_stride,
                             mutable_units<unit_t>(first), mutable_units<unit_t>(second),
                             in.pixels, in.half);
  });
  return {first, second};
}

// An input whose every image is a contiguous (C, *) block, images any distance apart (a channel
// slice of a contiguous tensor is); others are made contiguous.
at::Tensor planes_in_place(const at::Tensor& t) {
  return t.select(0, 0).is_contiguous() ? t : t.contiguous();
}

at::Tensor concat_shuffle_planes(const at::Tensor& a_in, const at::Tensor& b_in,
                                 at::Tensor out) {
  const at::Tensor a = planes_in_place(a_in);
  const at::Tensor b = planes_in_place(b_in);
  const int64_t batch = a.size(0);
  const int64_t half = a.size(1);
  const int64_t elem = a.element_size();
  const int64_t plane_bytes = a.numel() / (batch * half) * elem;
  const char* sources[2] = {static_cast<const char*>(a.const_data_ptr()),
                            static_cast<const char*>(b.const_data_ptr())};
  const int64_t image_bytes[2] = {a.stride(0) * elem, b.stride(0) * elem};
  char* dst = static_cast<char*>(out.mutable_data_ptr());
  const int64_t grain =
      std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(plane_bytes, 1));
  at::parallel_for(0, batch * 2 * half, grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / (2 * half);
      const int64_t oc = p % (2 * half);
      const int64_t which = oc % 2;
      std::memcpy(dst + p * plane_bytes,
                  sources[which] + n * image_bytes[which] + (oc / 2) * plane_bytes,
                  static_cast<size_t>(plane_bytes));
    }
  });
  return out;
}

at::Tensor concat_shuffle_cpu(const at::Tensor& a, const at::Tensor& b) {
  check_concat_shuffle_args(a, b);
  std::vector<int64_t> shape = a.sizes().vec();
  shape[1] *= 2;
  const bool channels_last = output_channels_last(a);
  at::Tensor out = at::empty(shape, a.options().memory_format(
      channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
  if (out.numel() == 0) {
    return out;
  }
  return channels_last ? concat_shuffle_channels_last(a, b, out)
                       : concat_shuffle_planes(a, b, out);
}

}  // namespace

TORCH_LIBRARY_IMPL(mobilefuse, CPU, m) {
  m.impl("concat_shuffle", &concat_shuffle_cpu);
  m.impl("concat_shuffle_chunks", &concat_shuffle_chunks_cpu);
}

}  // namespace mobilefuse
