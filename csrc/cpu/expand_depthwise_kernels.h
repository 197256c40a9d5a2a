// The inverted residual block's 1x1 expansion and depthwise convolution in one pass, for CPU
// inference on channels_last inputs: the expanded map is never written to memory.
//
// A task walks the output rows of one band of one channel group of one image. Each input row
// the depthwise taps need is expanded once (act(x_row @ W + b), the group's channels) into a
// ring of rows, the depthwise row kernels read their taps from that ring, and the row leaves
// when no later output row needs it. The ring (a few hundred KB) stays in L2, so the expanded
// activation, the largest tensor of the block, costs no pass over memory: eager and the
// unfused path write it once and read it back once (38.5 MB each way at batch 8 for
// EfficientNet-B0's first 96-channel expansion).
//
// The expansion is a small GEMM per fill of the ring (enough whole rows for kFillPixels
// pixels): blocks of up to kExpandBlock channel vectors (a register tile of 4 pixels x that
// many vectors) whose weights are packed contiguously and read kKChunk input channels at a
// time, so the chunk stays in L1 while every pixel of the fill reads it; partial sums go to
// the ring between chunks, and the bias and the activation are applied with the last.
//
// Compiled once per vector ISA, like depthwise_kernels.h.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <functional>
#include <vector>

#include "depthwise_kernels.h"

namespace mobilefuse {
namespace depthwise {

// The expansion as the op passes it (one type for every ISA build): weight (C, C_in) as the
// 1x1 convolution holds it, bias (C) or null.
template <typename T>
struct Expansion {
  const T* weight;
  const T* bias;
  int64_t c_in;
  Act act;
};

// Channel groups start at multiples of this many channels: whole vectors of every ISA the
// kernels are built for (16 floats with AVX-512, 8 with AVX2; fewer doubles).
constexpr int64_t kGroupAlign = 16;

// The kGroupAlign-channel units C channels split into: at most this many groups.
inline int64_t group_units(int64_t C) { return (C + kGroupAlign - 1) / kGroupAlign; }

// Channels [lo, hi) of group i of `groups` over C channels.
inline void group_channels(int64_t C, int64_t groups, int64_t i, int64_t& lo, int64_t& hi) {
  const int64_t units = group_units(C);
  lo = std::min(C, i * units / groups * kGroupAlign);
  hi = std::min(C, (i + 1) * units / groups * kGroupAlign);
}

// Pixels a fill of the ring expands at least (whole rows), so that each chunk of weights
// loaded into L1 serves them all. One 7-pixel row at a time reused each chunk for two pixel
// groups.
constexpr int64_t kFillPixels = 64;

// Rows of the expanded map a fill of the ring expands: the aligned groups of rows it holds.
inline int64_t fill_rows(const Geometry& g) {
  return std::clamp<int64_t>((kFillPixels + g.width - 1) / g.width, 1, g.height);
}

// Rows of the expanded map that `bands` bands of output rows expand in all (each band the
// fills its input rows fall in): the map's height when bands share no fill.
inline int64_t band_expanded_rows(const Geometry& g, int64_t bands) {
  const int64_t fill = fill_rows(g);
  int64_t rows = 0;
  for (int64_t b = 0; b < bands; ++b) {
    const int64_t oh_lo = b * g.out_h / bands, oh_hi = (b + 1) * g.out_h / bands;
    if (oh_lo == oh_hi) continue;
    const int64_t lo = std::max<int64_t>(0, oh_lo * g.sh - g.ph);
    const int64_t hi = std::min(g.height - 1, (oh_hi - 1) * g.sh - g.ph + (g.kh - 1) * g.dh);
    if (lo > hi) continue;
    rows += std::min(g.height, (hi / fill + 1) * fill) - lo / fill * fill;
  }
  return rows;
}

inline namespace CPU_CAPABILITY {

// Channel vectors per expansion block: 4 pixels x kBlock sums, kBlock weights and a broadcast
// fill the vector registers (32 with AVX-512, 16 otherwise).
#ifdef CPU_CAPABILITY_AVX512
constexpr int kExpandBlock = 6;
#else
constexpr int kExpandBlock = 3;
#endif

// Input channels per pass over a fill's pixels: a full block's chunk of weights (24 KB of
// float32 with AVX-512) stays in L1 while all the pixels read it. Unchunked, a block's weight
// rows (up to 74 KB for EfficientNet's 192 input channels) came from L2 each time; packed,
// chunked and filled 64 pixels at a time, 192 -> 1152 channels at 7x7, batch 8, on a 2-core
// Zen 5 went from 1.49 to 0.50 ms (oneDNN's expansion and the depthwise op: 0.47 ms).
constexpr int64_t kKChunk = 64;

// Calls f(c0, nb, last) for the expansion blocks of channels [c_lo, c_hi) (c_lo a multiple
// of the vector size): nb vectors from channel c0, the last of them holding `last` channels.
template <typename T, typename F>
void for_expand_blocks(int64_t c_lo, int64_t c_hi, F f) {
  constexpr int64_t V = at::vec::Vectorized<T>::size();
  for (int64_t c0 = c_lo; c0 < c_hi; c0 += kExpandBlock * V) {
    const int64_t nb = std::min<int64_t>(kExpandBlock, (c_hi - c0 + V - 1) / V);
    f(c0, static_cast<int>(nb), std::min(V, c_hi - (c0 + (nb - 1) * V)));
  }
}

// The expansion's weights as the blocks of each channel group read them: the block of nb
// vectors from channel c0 holds its C_in rows of nb * V values at c_in * c0; bias padded
// with zeros to whole vectors.
template <typename T>
class PackedExpansion {
 public:
  PackedExpansion(const Expansion<T>& e, int64_t C, int64_t groups)
      : c_in(e.c_in), channels(C), act(e.act) {
    constexpr int64_t V = at::vec::Vectorized<T>::size();
    const int64_t c_pad = (C + V - 1) / V * V;
    weight_.assign(c_in * c_pad, T(0));
    bias_.assign(c_pad, T(0));
    if (e.bias) std::copy(e.bias, e.bias + C, bias_.begin());
    for (int64_t i = 0; i < groups; ++i) {
      int64_t lo, hi;
      group_channels(C, groups, i, lo, hi);
      for_expand_blocks<T>(lo, hi, [&](int64_t c0, int nb, int64_t) {
        T* dst = weight_.data() + c_in * c0;
        const int64_t width = nb * V;
        for (int64_t c = c0; c < std::min(C, c0 + width); ++c) {
          for (int64_t k = 0; k < c_in; ++k) dst[k * width + (c - c0)] = e.weight[c * c_in + k];
        }
      });
    }
  }
  const T* block(int64_t c0) const { return weight_.data() + c_in * c0; }
  const T* bias(int64_t c0) const { return bias_.data() + c0; }

  const int64_t c_in, channels;
  const Act act;

 private:
  std::vector<T> weight_, bias_;
};

// Channels [c0, c0 + kNB vectors) of act(x @ W + b) for `pixels` consecutive pixels of x
// (C_in values each) into out (C values a pixel, from channel c0); wb and bias: the block's
// packed weights and bias. The block's last vector holds `last` channels (a whole vector
// unless kFullLast is false). K is summed in chunks, each chunk's partial sums stored and
// reloaded (the same additions in the same order as one pass).
template <typename T, int kNB, Act kAct, bool kFullLast>
void expand_block(const T* x, int64_t pixels, int64_t c_in, const T* wb, const T* bias_p,
                  int64_t C, int64_t last, T* out) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size(), kWidth = kNB * V;
  auto load = [&](const T* p, int j) MOBILEFUSE_LAMBDA_INLINE {
    return kFullLast || j + 1 < kNB ? Vec::loadu(p) : Vec::loadu(p, last);
  };
  auto store = [&](const Vec& v, T* p, int j) MOBILEFUSE_LAMBDA_INLINE {
    if (kFullLast || j + 1 < kNB) v.store(p);
    else v.store(p, last);
  };
  for (int64_t k0 = 0; k0 < c_in; k0 += kKChunk) {
    const int64_t k1 = std::min(c_in, k0 + kKChunk);
    const bool first = k0 == 0, final = k1 == c_in;
    auto group = [&](int64_t p, auto size) MOBILEFUSE_LAMBDA_INLINE {
      constexpr int kG = decltype(size)::value;
      Vec acc[kG][kNB];
      MOBILEFUSE_UNROLL
      for (int q = 0; q < kG; ++q) {
        MOBILEFUSE_UNROLL
        for (int j = 0; j < kNB; ++j) {
          acc[q][j] = first ? Vec::loadu(bias_p + j * V) : load(out + (p + q) * C + j * V, j);
        }
      }
      const T* xp = x + p * c_in;
      for (int64_t k = k0; k < k1; ++k) {
        Vec w[kNB];
        MOBILEFUSE_UNROLL
        for (int j = 0; j < kNB; ++j) w[j] = Vec::loadu(wb + k * kWidth + j * V);
        MOBILEFUSE_UNROLL
        for (int q = 0; q < kG; ++q) {
          const Vec xv(xp[q * c_in + k]);
          MOBILEFUSE_UNROLL
          for (int j = 0; j < kNB; ++j) acc[q][j] = at::vec::fmadd(xv, w[j], acc[q][j]);
        }
      }
      MOBILEFUSE_UNROLL
      for (int q = 0; q < kG; ++q) {
        MOBILEFUSE_UNROLL
        for (int j = 0; j < kNB; ++j) {
          T* dst = out + (p + q) * C + j * V;
          if (final) store(act_forward(kAct, acc[q][j]), dst, j);
          else store(acc[q][j], dst, j);
        }
      }
    };
    int64_t p = 0;
    for (; p + 4 <= pixels; p += 4) group(p, std::integral_constant<int, 4>());
    for (; p < pixels; ++p) group(p, std::integral_constant<int, 1>());
  }
}

// Calls expand_block with kNB = nb (1..kExpandBlock) as a compile-time constant.
template <typename T, Act kAct, bool kFullLast, int kNB = kExpandBlock>
inline void expand_block_of(int nb, const T* x, int64_t pixels, int64_t c_in, const T* wb,
                            const T* bias, int64_t C, int64_t last, T* out) {
  if constexpr (kNB >= 1) {
    if (nb == kNB) return expand_block<T, kNB, kAct, kFullLast>(x, pixels, c_in, wb, bias, C,
                                                                 last, out);
    expand_block_of<T, kAct, kFullLast, kNB - 1>(nb, x, pixels, c_in, wb, bias, C, last, out);
  }
}

// act(x @ W + b), channels [c_lo, c_hi) (one channel group), for `pixels` consecutive pixels
// of x into out (C values a pixel).
template <typename T>
void expand_pixels(const T* x, int64_t pixels, const PackedExpansion<T>& e, int64_t c_lo,
                   int64_t c_hi, T* out) {
  constexpr int64_t V = at::vec::Vectorized<T>::size();
  const int64_t C = e.channels;
  with_act(e.act, [&](auto a) {
    constexpr Act kAct = decltype(a)::value;
    for_expand_blocks<T>(c_lo, c_hi, [&](int64_t c0, int nb, int64_t last) {
      if (last == V) {
        expand_block_of<T, kAct, true>(nb, x, pixels, e.c_in, e.block(c0), e.bias(c0), C, last,
                                       out + c0);
      } else {
        expand_block_of<T, kAct, false>(nb, x, pixels, e.c_in, e.block(c0), e.bias(c0), C,
                                        last, out + c0);
      }
    });
  });
}

// The expanded rows of one image's channel group that a band of output rows reads, each
// computed once. Rows are expanded `fill` at a time (aligned groups of rows), into a ring of
// `fills` such groups: enough that the rows one output row or row pair reads, (kh - 1) * dh
// + 1 + sh, are all held at once.
template <typename T>
class ExpandedRing {
 public:
  ExpandedRing(const Geometry& g, const PackedExpansion<T>& e)
      : g_(g), e_(e), fill_(fill_rows(g)),
        fills_(std::min((g.height + fill_ - 1) / fill_,
                        ((g.kh - 1) * g.dh + g.sh + fill_ - 1) / fill_ + 1)),
        row_(g.width * g.channels), data_(fills_ * fill_ * row_), held_(fills_, -1) {}

  // Starts channels [c_lo, c_hi) of image n (x_image: its C_in-channel input, NHWC); forgets
  // the rows held.
  void start(const T* x_image, int64_t c_lo, int64_t c_hi) {
    x_ = x_image;
    c_lo_ = c_lo;
    c_hi_ = c_hi;
    std::fill(held_.begin(), held_.end(), int64_t(-1));
  }

  // Expanded input row ih (null outside the image). The rows a band asks for only move down,
  // and no output row (pair) spans more rows than the ring's fills hold, so no row still
  // needed is replaced.
  const T* row(int64_t ih) {
    if (ih < 0 || ih >= g_.height) return nullptr;
    const int64_t f = ih / fill_, slot = f % fills_;
    T* dst = data_.data() + slot * fill_ * row_;
    if (held_[slot] != f) {
      const int64_t r0 = f * fill_, rows = std::min(fill_, g_.height - r0);
      expand_pixels(x_ + r0 * g_.width * e_.c_in, rows * g_.width, e_, c_lo_, c_hi_, dst);
      held_[slot] = f;
    }
    return dst + (ih - f * fill_) * row_;
  }

 private:
  const Geometry& g_;
  const PackedExpansion<T>& e_;
  int64_t fill_, fills_, row_;
  std::vector<T> data_;
  std::vector<int64_t> held_;
  const T* x_ = nullptr;
  int64_t c_lo_ = 0, c_hi_ = 0;
};

// act(depthwise(act_e(conv1x1(x)))) for NHWC x of C_in channels; g is the depthwise
// convolution's geometry (g.channels: the expanded C). Each task is one band of output rows
// of one channel group (group_channels) of one image: `groups` groups and `bands` bands an
// image. With `sums` (N * bands * C values), block (n, b) holds the per-channel sums of band
// b of image n. after(n) runs on the thread that wrote image n as soon as it is complete,
// when each image is one task.
template <typename T>
void expand_forward_nhwc(const T* x, const Expansion<T>& e, const T* w_taps, const T* bias,
                         T* out, const Geometry& g, Act act, int64_t groups, int64_t bands,
                         T* sums, const std::function<void(int64_t)>& after) {
  const int64_t tile = forward_tile_channels<T>(g), C = g.channels, row = g.out_w * C;
  int64_t ow_lo, ow_hi;
  interior_columns(g, ow_lo, ow_hi);
  const PackedExpansion<T> packed(e, C, groups);
  const int64_t per_image = groups * bands;
  with_fixed<T>(g, act, [&](auto k, auto a) {
    at::parallel_for(0, g.batch * per_image, 1, [&](int64_t begin, int64_t end) {
      RowScratch<T> scratch(g);
      ExpandedRing<T> ring(g, packed);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t n = task / per_image, i = task / bands % groups, b = task % bands;
        int64_t c_lo, c_hi;
        group_channels(C, groups, i, c_lo, c_hi);
        T* on = out + n * g.out_h * row;
        T* band_sums = sums ? sums + (n * bands + b) * C : nullptr;
        if (band_sums) std::fill(band_sums + c_lo, band_sums + c_hi, T(0));
        ring.start(x + n * g.height * g.width * e.c_in, c_lo, c_hi);
        // Every channel of the group in a row (pair), in tiles, so its ring rows serve all.
        forward_rows<T, decltype(k), decltype(a)::value>(
            [&](int64_t ih) { return ring.row(ih); }, on, w_taps, bias, g,
            b * g.out_h / bands, (b + 1) * g.out_h / bands, ow_lo, ow_hi, c_lo, c_hi, tile,
            scratch, [&](int64_t oh) {
              if (band_sums) add_row_sums(on + oh * row, g.out_w, C, c_lo, c_hi, band_sums);
            });
        if (per_image == 1 && after) after(n);
      }
    });
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace depthwise
}  // namespace mobilefuse
