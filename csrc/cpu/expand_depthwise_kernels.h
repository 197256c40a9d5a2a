// The inverted residual block's 1x1 expansion and depthwise convolution in one pass, for CPU
// inference on channels_last inputs: the expanded map is never written to memory.
//
// A task walks the output rows of one band of one image. Each input row the depthwise taps
// need is expanded once into a ring of (kh - 1) * dh + 1 + sh rows (act(x_row @ W + b), every
// expanded channel), the depthwise row kernels read their taps from that ring, and the row
// leaves when no later output row needs it. The ring (a few hundred KB for the 112x112 and
// 56x56 layers) stays in L2, so the expanded activation, the largest tensor of the block,
// costs no pass over memory: eager and the unfused path write it once and read it back once
// (38.5 MB each way at batch 8 for EfficientNet-B0's first 96-channel expansion).
//
// The expansion is a small GEMM per row (W pixels x C_in by C_in x C): blocks of up to
// kExpandBlock channel vectors (a register tile of 4 pixels x that many vectors, the block's
// C_in weight rows read from L1) with the bias and the activation applied before the store.
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

// The expansion as the kernels read it (one type for every ISA build): weight (C_in, c_pad)
// and bias (c_pad), c_pad the expanded channels C rounded up to whole vectors, zeros past C.
template <typename T>
struct Expansion {
  const T* weight;
  const T* bias;
  int64_t c_in, c_pad;
  Act act;
};

inline namespace CPU_CAPABILITY {

// Channel vectors per expansion block: 4 pixels x kBlock sums, kBlock weights and a broadcast
// fill the vector registers (32 with AVX-512, 16 otherwise).
#ifdef CPU_CAPABILITY_AVX512
constexpr int kExpandBlock = 6;
#else
constexpr int kExpandBlock = 3;
#endif

// Channels [c0, c0 + kNB vectors) of act(x_row @ W + b) for the `width` pixels of x_row
// (C_in values each) into out_row (C values each); the block's last vector holds `last`
// channels (a whole vector unless kFullLast is false).
template <typename T, int kNB, Act kAct, bool kFullLast>
void expand_block(const T* x_row, int64_t width, const Expansion<T>& e, int64_t c0, int64_t C,
                  int64_t last, T* out_row) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  const T* wb = e.weight + c0;
  Vec bias[kNB];
  MOBILEFUSE_UNROLL
  for (int j = 0; j < kNB; ++j) bias[j] = Vec::loadu(e.bias + c0 + j * V);
  auto store = [&](const Vec& v, T* p, int j) MOBILEFUSE_LAMBDA_INLINE {
    if (kFullLast || j + 1 < kNB) act_forward(kAct, v).store(p);
    else act_forward(kAct, v).store(p, last);
  };
  auto pixels = [&](int64_t p, auto group) MOBILEFUSE_LAMBDA_INLINE {
    constexpr int kG = decltype(group)::value;
    Vec acc[kG][kNB];
    MOBILEFUSE_UNROLL
    for (int q = 0; q < kG; ++q) {
      MOBILEFUSE_UNROLL
      for (int j = 0; j < kNB; ++j) acc[q][j] = bias[j];
    }
    const T* xp = x_row + p * e.c_in;
    for (int64_t k = 0; k < e.c_in; ++k) {
      Vec w[kNB];
      MOBILEFUSE_UNROLL
      for (int j = 0; j < kNB; ++j) w[j] = Vec::loadu(wb + k * e.c_pad + j * V);
      MOBILEFUSE_UNROLL
      for (int q = 0; q < kG; ++q) {
        const Vec xv(xp[q * e.c_in + k]);
        MOBILEFUSE_UNROLL
        for (int j = 0; j < kNB; ++j) acc[q][j] = at::vec::fmadd(xv, w[j], acc[q][j]);
      }
    }
    MOBILEFUSE_UNROLL
    for (int q = 0; q < kG; ++q) {
      MOBILEFUSE_UNROLL
      for (int j = 0; j < kNB; ++j) store(acc[q][j], out_row + (p + q) * C + c0 + j * V, j);
    }
  };
  int64_t p = 0;
  for (; p + 4 <= width; p += 4) pixels(p, std::integral_constant<int, 4>());
  for (; p < width; ++p) pixels(p, std::integral_constant<int, 1>());
}

// Calls expand_block with kNB = vectors (1..kExpandBlock) as a compile-time constant.
template <typename T, Act kAct, bool kFullLast, int kNB = kExpandBlock>
inline void expand_block_of(int vectors, const T* x_row, int64_t width, const Expansion<T>& e,
                            int64_t c0, int64_t C, int64_t last, T* out_row) {
  if constexpr (kNB >= 1) {
    if (vectors == kNB) {
      return expand_block<T, kNB, kAct, kFullLast>(x_row, width, e, c0, C, last, out_row);
    }
    expand_block_of<T, kAct, kFullLast, kNB - 1>(vectors, x_row, width, e, c0, C, last,
                                                 out_row);
  }
}

// One expanded row: act(x_row @ W + b) for all C channels, block by block.
template <typename T>
void expand_row(const T* x_row, int64_t width, const Expansion<T>& e, int64_t C, T* out_row) {
  constexpr int64_t V = at::vec::Vectorized<T>::size();
  const int64_t vectors = (C + V - 1) / V;
  with_act(e.act, [&](auto a) {
    constexpr Act kAct = decltype(a)::value;
    for (int64_t v0 = 0; v0 < vectors; v0 += kExpandBlock) {
      const int nb = static_cast<int>(std::min<int64_t>(kExpandBlock, vectors - v0));
      const int64_t c0 = v0 * V, last = std::min(V, C - (c0 + (nb - 1) * V));
      if (last == V) {
        expand_block_of<T, kAct, true>(nb, x_row, width, e, c0, C, last, out_row);
      } else {
        expand_block_of<T, kAct, false>(nb, x_row, width, e, c0, C, last, out_row);
      }
    }
  });
}

// The expanded rows of one image that a band of output rows reads, each computed once.
template <typename T>
class ExpandedRing {
 public:
  ExpandedRing(const Geometry& g, const Expansion<T>& e)
      : g_(g), e_(e), slots_((g.kh - 1) * g.dh + 1 + g.sh), row_(g.width * g.channels),
        data_(slots_ * row_), held_(slots_, -1) {}

  // Starts image n (x_image: its C_in-channel input, NHWC); forgets the rows held.
  void start(const T* x_image) {
    x_ = x_image;
    std::fill(held_.begin(), held_.end(), int64_t(-1));
  }

  // Expanded input row ih (null outside the image). The rows a band asks for only move down,
  // and no output row spans more than the ring's slots, so no row still needed is replaced.
  const T* row(int64_t ih) {
    if (ih < 0 || ih >= g_.height) return nullptr;
    const int64_t slot = ih % slots_;
    T* dst = data_.data() + slot * row_;
    if (held_[slot] != ih) {
      expand_row(x_ + ih * g_.width * e_.c_in, g_.width, e_, g_.channels, dst);
      held_[slot] = ih;
    }
    return dst;
  }

 private:
  const Geometry& g_;
  const Expansion<T>& e_;
  int64_t slots_, row_;
  std::vector<T> data_;
  std::vector<int64_t> held_;
  const T* x_ = nullptr;
};

// act(depthwise(act_e(conv1x1(x)))) for NHWC x of C_in channels; g is the depthwise
// convolution's geometry (g.channels: the expanded C). Each task is one band of output rows
// of one image, `bands` per image. With `sums` (N * bands * C values), block (n, b) holds the
// per-channel sums of band b of image n. after(n) runs on the thread that wrote image n as
// soon as it is complete, when each image is one band.
template <typename T>
void expand_forward_nhwc(const T* x, const Expansion<T>& e, const T* w_taps, const T* bias,
                         T* out, const Geometry& g, Act act, int64_t bands, T* sums,
                         const std::function<void(int64_t)>& after) {
  const int64_t tile = forward_tile_channels<T>(g), C = g.channels, row = g.out_w * C;
  int64_t ow_lo, ow_hi;
  interior_columns(g, ow_lo, ow_hi);
  with_fixed<T>(g, act, [&](auto k, auto a) {
    at::parallel_for(0, g.batch * bands, 1, [&](int64_t begin, int64_t end) {
      RowScratch<T> scratch(g);
      ExpandedRing<T> ring(g, e);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t n = task / bands, b = task % bands;
        T* on = out + n * g.out_h * row;
        T* band_sums = sums ? sums + task * C : nullptr;
        if (band_sums) std::fill(band_sums, band_sums + C, T(0));
        ring.start(x + n * g.height * g.width * e.c_in);
        // Every channel of a row (pair) in tiles, so its ring rows serve all of them.
        forward_rows<T, decltype(k), decltype(a)::value>(
            [&](int64_t ih) { return ring.row(ih); }, on, w_taps, bias, g,
            b * g.out_h / bands, (b + 1) * g.out_h / bands, ow_lo, ow_hi, 0, C, tile, scratch,
            [&](int64_t oh) {
              if (band_sums) add_row_sums(on + oh * row, g.out_w, C, 0, C, band_sums);
            });
        if (bands == 1 && after) after(n);
      }
    });
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace depthwise
}  // namespace mobilefuse
