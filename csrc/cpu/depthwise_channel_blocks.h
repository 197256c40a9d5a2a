// NCHW depthwise convolution through the NHWC kernels, one block of channels at a time.
//
// Vectorizing NCHW over the width wastes most of a vector on the 7- and 14-pixel rows of late
// layers, and a 16-lane vector more so. Here each task takes one vector's worth of channels
// (V) of one image, transposes their planes into a (H, W, V) buffer, runs the NHWC kernels on
// it as an image of V channels, and transposes the result back into the NCHW planes. The
// transposes stay in cache: a block of 7x7..56x56 planes is 3..200 KB.
//
// The weight (and bias) are laid out per block, by tap, with zeros in the lanes past C; the
// lanes of a partial last block compute on zeros and are not stored.
#pragma once

#include <algorithm>
#include <type_traits>

#if defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

#include "depthwise_kernels.h"

namespace mobilefuse {
namespace depthwise {
inline namespace CPU_CAPABILITY {

#if defined(CPU_CAPABILITY_AVX512)
// One tile of up to 16 x 16 floats, dst[j * ld_dst + i] = src[i * ld_src + j] for i < m,
// j < n, in registers: masked loads and stores cover the edges. Inlined, with no buffer to
// clear: ATen's transpose_mxn (a call per tile, zeroing a stack tile each time) took 40% of
// the NCHW forward of the 14x14 layers.
MOBILEFUSE_ALWAYS_INLINE void transpose_tile16(const float* src, int64_t ld_src, float* dst,
                                               int64_t ld_dst, int m, int n) {
  const __mmask16 cols = static_cast<__mmask16>((1u << n) - 1);
  const __mmask16 rows = static_cast<__mmask16>((1u << m) - 1);
  __m512 r[16], t[16];
  MOBILEFUSE_UNROLL
  for (int i = 0; i < 16; ++i) {
    r[i] = i < m ? _mm512_maskz_loadu_ps(cols, src + i * ld_src) : _mm512_setzero_ps();
  }
  // Interleave 32-bit elements of row pairs, then 64-bit pairs, then 128-bit lanes twice.
  MOBILEFUSE_UNROLL
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  MOBILEFUSE_UNROLL
  for (int i = 0; i < 4; ++i) {
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 2]);
    const __m512d c = _mm512_castps_pd(t[4 * i + 1]), d = _mm512_castps_pd(t[4 * i + 3]);
    r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
  }
  MOBILEFUSE_UNROLL
  for (int i = 0; i < 2; ++i) {
    MOBILEFUSE_UNROLL
    for (int j = 0; j < 4; ++j) {
      t[8 * i + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + 4 + j], 0x88);
      t[8 * i + 4 + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + 4 + j], 0xdd);
    }
  }
  MOBILEFUSE_UNROLL
  for (int j = 0; j < 8; ++j) {
    r[j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88);
    r[8 + j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0xdd);
  }
  MOBILEFUSE_UNROLL
  for (int j = 0; j < 16; ++j) {
    if (j < n) _mm512_mask_storeu_ps(dst + j * ld_dst, rows, r[j]);
  }
}
#endif

// dst[j * ld_dst + i] = src[i * ld_src + j] for i < m, j < n: vector tiles where this ISA
// has them, element by element at the edges (and for double).
template <typename T>
inline void transpose(const T* src, int64_t ld_src, T* dst, int64_t ld_dst, int64_t m,
                      int64_t n) {
  int64_t i = 0;
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, float>) {
    for (; i < m; i += 16) {
      for (int64_t j = 0; j < n; j += 16) {
        transpose_tile16(src + i * ld_src + j, ld_src, dst + j * ld_dst + i, ld_dst,
                         static_cast<int>(std::min<int64_t>(16, m - i)),
                         static_cast<int>(std::min<int64_t>(16, n - j)));
      }
    }
    return;
  }
#elif defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<T, float>) {
    for (; i + 8 <= m; i += 8) {
      int64_t j = 0;
      for (; j + 8 <= n; j += 8) {
        at::vec::transpose_mxn<float, 8, 8>(src + i * ld_src + j, ld_src, dst + j * ld_dst + i,
                                            ld_dst);
      }
      for (int64_t r = i; r < i + 8; ++r) {
        for (int64_t c = j; c < n; ++c) dst[c * ld_dst + r] = src[r * ld_src + c];
      }
    }
  }
#endif
  for (; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) dst[j * ld_dst + i] = src[i * ld_src + j];
  }
}

// The weight (C, taps) and bias (C,) laid out per block of V channels: [block][taps][V] and
// [block][V], zero past C.
template <typename T>
struct BlockedParams {
  int64_t taps, lanes, blocks;
  std::vector<T> weight, bias;
  BlockedParams(const T* w, const T* b, const Geometry& g, int64_t V)
      : taps(g.taps()),
        lanes(V),
        blocks((g.channels + V - 1) / V),
        weight(blocks * taps * V, T(0)),
        bias(blocks * V, T(0)) {
    for (int64_t c = 0; c < g.channels; ++c) {
      const int64_t blk = c / V, lane = c % V;
      for (int64_t t = 0; t < taps; ++t) weight[(blk * taps + t) * V + lane] = w[c * taps + t];
      if (b) bias[blk * V + lane] = b[c];
    }
  }
  const T* weight_of(int64_t blk) const { return weight.data() + blk * taps * lanes; }
  const T* bias_of(int64_t blk) const { return bias.data() + blk * lanes; }
};

// The geometry of one block: a single image of V channels.
inline Geometry block_geometry(const Geometry& g, int64_t V) {
  Geometry b = g;
  b.batch = 1;
  b.channels = V;
  return b;
}

template <typename T, typename K, Act kAct>
void forward_nchw_blocked_fixed(const T* x, const T* w, const T* bias, T* out,
                                const Geometry& g) {
  constexpr int64_t V = at::vec::Vectorized<T>::size();
  const BlockedParams<T> params(w, bias, g, V);
  const Geometry gb = block_geometry(g, V);
  const int64_t plane = g.height * g.width, out_plane = g.out_h * g.out_w;
  int64_t ow_lo, ow_hi;
  interior_columns(gb, ow_lo, ow_hi);
  at::parallel_for(0, g.batch * params.blocks, 1, [&](int64_t begin, int64_t end) {
    RowScratch<T> scratch(gb);
    std::vector<T> xb(plane * V, T(0)), ob(out_plane * V);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / params.blocks, blk = task % params.blocks;
      const int64_t c0 = blk * V, cnt = std::min(V, g.channels - c0);
      transpose(x + (n * g.channels + c0) * plane, plane, xb.data(), V, cnt, plane);
      forward_nhwc_output_rows<T, K, kAct>(xb.data(), ob.data(), params.weight_of(blk),
                                           params.bias_of(blk), gb, 0, g.out_h, ow_lo, ow_hi, 0,
                                           V, scratch, [](int64_t) {});
      transpose(ob.data(), V, out + (n * g.channels + c0) * out_plane, out_plane, out_plane,
                cnt);
    }
  });
}

template <typename T, typename K, Act kAct>
void backward_nchw_blocked_fixed(const T* grad, const T* x, const T* w, const T* bias, T* gx,
                                 T* gw, T* gb, const Geometry& g, GradMask mask) {
  constexpr int64_t V = at::vec::Vectorized<T>::size();
  const BlockedParams<T> params(w, bias, g, V);
  const Geometry geo = block_geometry(g, V);
  const int64_t plane = g.height * g.width, out_plane = g.out_h * g.out_w;
  const int64_t taps = g.taps(), tasks = g.batch * params.blocks;
  const bool sums = mask.weight || mask.bias;
  const bool need_x = kAct != Act::kNone || mask.weight;
  const bool ring = kAct != Act::kNone && mask.input;
  std::vector<T> part(sums ? tasks * (taps + 1) * V : 0);  // [n][block][taps + bias][V]
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    BandScratch<T> scratch(geo, ring);
    std::vector<T> xb(need_x ? plane * V : 0, T(0)), gb_buf(out_plane * V, T(0));
    std::vector<T> gxb(mask.input ? plane * V : 0);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / params.blocks, blk = task % params.blocks;
      const int64_t c0 = blk * V, cnt = std::min(V, g.channels - c0);
      if (need_x) transpose(x + (n * g.channels + c0) * plane, plane, xb.data(), V, cnt, plane);
      transpose(grad + (n * g.channels + c0) * out_plane, out_plane, gb_buf.data(), V, cnt,
                out_plane);
      // One band per block: the tasks already spread over the threads.
      backward_nhwc_band<T, K, kAct>(gb_buf.data(), xb.data(), params.weight_of(blk),
                                     params.bias_of(blk), mask.input ? gxb.data() : nullptr,
                                     sums ? part.data() + task * (taps + 1) * V : nullptr, geo,
                                     mask, 0, 1, 0, V, scratch);
      if (mask.input) {
        transpose(gxb.data(), V, gx + (n * g.channels + c0) * plane, plane, plane, cnt);
      }
    }
  });
  if (!sums) return;
  // Sums over the images; channel c is lane c % V of block c / V within an image's partials.
  const int64_t block_len = (taps + 1) * V;
  reduce_partials(part, g.batch, params.blocks * block_len, V,
                  [&](int64_t c) { return c / V * block_len + c % V; }, g, gw, gb, mask);
}

template <typename T>
void forward_nchw_blocked(const T* x, const T* w, const T* bias, T* out, const Geometry& g,
                          Act act) {
  with_fixed<T>(g, act, [&](auto k, auto a) {
    forward_nchw_blocked_fixed<T, decltype(k), decltype(a)::value>(x, w, bias, out, g);
  });
}

template <typename T>
void backward_nchw_blocked(const T* grad, const T* x, const T* w, const T* bias, T* gx, T* gw,
                           T* gb, const Geometry& g, Act act, GradMask mask) {
  with_fixed<T>(g, act, [&](auto k, auto a) {
    backward_nchw_blocked_fixed<T, decltype(k), decltype(a)::value>(grad, x, w, bias, gx, gw, gb,
                                                                    g, mask);
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace depthwise
}  // namespace mobilefuse
