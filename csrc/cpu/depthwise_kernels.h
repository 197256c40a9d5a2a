// Depthwise convolution on CPU, with bias and activation fused into the forward and the
// activation's derivative fused into the backward (the pre-activation is recomputed).
//
// NCHW works plane by plane: each input plane is copied once into a zero-padded buffer split
// into `stride_w` column phases, so every tap of every output row reads a contiguous run and
// the inner loops are plain vector FMAs. NHWC vectorizes over channels and walks an output
// row in groups of pixels with independent sums that share the input columns they read: the
// forward takes each group through every channel vector (at stride 1 and 2: two output rows
// at once); the backward's dz takes one channel vector along the whole row, its grad_x each
// group through every vector on rows of 14+ pixels (at stride 1: two rows at once).
// Float16/bfloat16 run through float32 copies (float32 accumulation);
// float64 is computed in float64.
//
// The backward walks each channel (NCHW) or band of output rows (NHWC, fused: dz, the weight
// and bias sums and grad_x in one pass) on one thread, and adds the partial sums in a fixed
// order: the weight and bias gradients are deterministic, with no atomics.
//
// This header is compiled once per vector ISA: ATen's CPU_CAPABILITY macro (AVX2, AVX512, or
// undefined) names the namespace, so each build's kernels are distinct symbols.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <functional>
#include <type_traits>
#include <vector>

#include "activation_vec.h"
#include "depthwise_types.h"

namespace mobilefuse {
namespace depthwise {
inline namespace CPU_CAPABILITY {

// ---------------------------------------------------------------------------------------
// NCHW

// Where tap column j reads inside the phased padded row: phase and offset.
inline int64_t tap_phase(const Geometry& g, int64_t j) { return (j * g.dw) % g.sw; }
inline int64_t tap_offset(const Geometry& g, int64_t j) { return (j * g.dw) / g.sw; }

// First index t of phase q whose padded column t*sw + q is an input column (>= pw).
inline int64_t first_phase_index(const Geometry& g, int64_t q) {
  return q >= g.pw ? 0 : (g.pw - q + g.sw - 1) / g.sw;
}

// Zero-padded copy of one plane; phase q of padded row r holds padded columns q, q+sw, ...
// Only the input's own positions are written: the buffer starts zeroed (once per thread) and
// every plane writes the same positions, so the padding stays zero.
template <typename T>
void load_padded_plane(const T* src, const Geometry& g, T* buf) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  const int64_t len = g.phase_len();
  for (int64_t r = 0; r < g.height; ++r) {
    T* row = buf + (r + g.ph) * g.sw * len;
    const T* in = src + r * g.width;
    if (g.sw == 1) {
      std::copy(in, in + g.width, row + g.pw);
      continue;
    }
    if (g.sw == 2) {
      // Even input columns 2m land in phase pw % 2 at m + pw / 2, odd ones in the other phase
      // at m + (pw + 1) / 2: split 2V columns at a time. The last split reads zeros past the
      // row and stores them on the right padding (or the slack past it), which stays zero.
      T* even = row + (g.pw % 2) * len + g.pw / 2;
      T* odd = row + ((g.pw + 1) % 2) * len + (g.pw + 1) / 2;
      for (int64_t done = 0; done < g.width; done += 2 * V) {
        const int64_t rest = g.width - done;
        const Vec a = Vec::loadu(in + done, std::min(rest, V));
        const Vec b = rest > V ? Vec::loadu(in + done + V, std::min(rest - V, V)) : Vec(0);
        const auto split = at::vec::deinterleave2(a, b);
        split.first.store(even + done / 2);
        split.second.store(odd + done / 2);
      }
      continue;
    }
    for (int64_t q = 0; q < g.sw; ++q) {
      T* phase = row + q * len;
      for (int64_t t = first_phase_index(g, q), c = t * g.sw + q - g.pw; c < g.width;
           ++t, c += g.sw) {
        phase[t] = in[c];
      }
    }
  }
}

// The lanes of `v` added in double, in lane order.
template <typename T>
inline double lane_sum(const at::vec::Vectorized<T>& v) {
  T lanes[at::vec::Vectorized<T>::size()];
  v.store(lanes);
  double total = 0.0;
  for (T lane : lanes) total += static_cast<double>(lane);
  return total;
}

// Output chunks of one plane: Vec::size() consecutive outputs of one row each, with where
// they sit in the output plane and where their first tap reads in the padded plane.
struct Chunk {
  int64_t out_at, in_at, count;
};

inline std::vector<Chunk> plane_chunks(const Geometry& g, int64_t width) {
  std::vector<Chunk> chunks;
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    for (int64_t ow = 0; ow < g.out_w; ow += width) {
      chunks.push_back({oh * g.out_w + ow, oh * g.sh * g.sw * g.phase_len() + ow,
                        std::min(width, g.out_w - ow)});
    }
  }
  return chunks;
}

// Stores a chunk into its plane (plane_size elements). Chunks are stored in plane order, so
// the lanes past a row's end may spill into the next row, whose own chunk rewrites them
// later: a full store, much cheaper than a partial one, everywhere but at the plane's end.
template <typename T>
inline void store_chunk(const at::vec::Vectorized<T>& v, T* plane, const Chunk& ch,
                        int64_t plane_size) {
  if (ch.out_at + at::vec::Vectorized<T>::size() <= plane_size) v.store(plane + ch.out_at);
  else v.store(plane + ch.out_at, ch.count);
}

// Loads a chunk from its plane (plane_size elements), lanes past its row's end zero; a full
// load and a blend where the plane goes on past the chunk.
template <typename T>
inline at::vec::Vectorized<T> load_chunk(const T* plane, const Chunk& ch, int64_t plane_size) {
  using Vec = at::vec::Vectorized<T>;
  if (ch.out_at + Vec::size() > plane_size) return Vec::loadu(plane + ch.out_at, ch.count);
  const Vec v = Vec::loadu(plane + ch.out_at);
  return ch.count == Vec::size() ? v : Vec::set(Vec(0), v, ch.count);
}

// Where each tap reads in the phased padded plane, relative to a chunk's in_at. Computed
// once: the divisions stay out of the inner loops.
inline std::vector<int64_t> plane_tap_offsets(const Geometry& g) {
  std::vector<int64_t> off(g.taps());
  for (int64_t i = 0; i < g.kh; ++i) {
    for (int64_t j = 0; j < g.kw; ++j) {
      off[i * g.kw + j] = (i * g.dh * g.sw + tap_phase(g, j)) * g.phase_len() + tap_offset(g, j);
    }
  }
  return off;
}

// Pre-activation of up to kGroup chunks at once: independent accumulators hide the FMA
// latency, and each broadcast weight serves all of them.
template <typename T, int kGroup, int kTaps>
inline void conv_chunks_fixed(const T* buf, const at::vec::Vectorized<T>* wv,
                              const int64_t* tap_off, int64_t runtime_taps,
                              at::vec::Vectorized<T> bias, const Chunk* chunks,
                              at::vec::Vectorized<T>* acc) {
  using Vec = at::vec::Vectorized<T>;
  // kTaps > 0: the tap count is known at compile time, so the loop unrolls.
  const int64_t taps = kTaps > 0 ? kTaps : runtime_taps;
  const T* base[kGroup];
  for (int q = 0; q < kGroup; ++q) {
    acc[q] = bias;
    base[q] = buf + chunks[q].in_at;
  }
  for (int64_t t = 0; t < taps; ++t) {
    const Vec w = wv[t];
    const int64_t off = tap_off[t];
    for (int q = 0; q < kGroup; ++q) acc[q] = at::vec::fmadd(Vec::loadu(base[q] + off), w, acc[q]);
  }
}

template <typename T, int kGroup>
inline void conv_chunks(const T* buf, const at::vec::Vectorized<T>* wv, const int64_t* tap_off,
                        int64_t taps, at::vec::Vectorized<T> bias, const Chunk* chunks,
                        at::vec::Vectorized<T>* acc) {
  switch (taps) {  // 3x3, 5x5, 7x7
    case 9: return conv_chunks_fixed<T, kGroup, 9>(buf, wv, tap_off, taps, bias, chunks, acc);
    case 25: return conv_chunks_fixed<T, kGroup, 25>(buf, wv, tap_off, taps, bias, chunks, acc);
    case 49: return conv_chunks_fixed<T, kGroup, 49>(buf, wv, tap_off, taps, bias, chunks, acc);
    default: return conv_chunks_fixed<T, kGroup, 0>(buf, wv, tap_off, taps, bias, chunks, acc);
  }
}

// Calls f(chunk pointer, group size) over the chunks in groups of 4, then of 2 and 1: small
// planes keep a few independent sums too.
template <typename F>
inline void for_chunk_groups(const std::vector<Chunk>& chunks, F f) {
  size_t c = 0;
  for (; c + 4 <= chunks.size(); c += 4) f(chunks.data() + c, std::integral_constant<int, 4>());
  for (; c + 2 <= chunks.size(); c += 2) f(chunks.data() + c, std::integral_constant<int, 2>());
  for (; c < chunks.size(); ++c) f(chunks.data() + c, std::integral_constant<int, 1>());
}

template <typename T>
void forward_nchw(const T* x, const T* w, const T* bias, T* out, const Geometry& g, Act act) {
  using Vec = at::vec::Vectorized<T>;
  const std::vector<Chunk> chunks = plane_chunks(g, Vec::size());
  const std::vector<int64_t> tap_off = plane_tap_offsets(g);
  at::parallel_for(0, g.batch * g.channels, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> buf(g.plane_buffer());
    std::vector<Vec> wv(g.taps());
    for (int64_t p = begin; p < end; ++p) {
      const int64_t c = p % g.channels;
      load_padded_plane(x + p * g.height * g.width, g, buf.data());
      for (int64_t t = 0; t < g.taps(); ++t) wv[t] = Vec(w[c * g.taps() + t]);
      const Vec bv(bias ? bias[c] : T(0));
      T* dst = out + p * g.out_h * g.out_w;
      for_chunk_groups(chunks, [&](const Chunk* group, auto size) {
        constexpr int kGroup = decltype(size)::value;
        Vec acc[kGroup];
        conv_chunks<T, kGroup>(buf.data(), wv.data(), tap_off.data(), g.taps(), bv, group, acc);
        for (int q = 0; q < kGroup; ++q) {
          store_chunk(act_forward(act, acc[q]), dst, group[q], g.out_h * g.out_w);
        }
      });
    }
  });
}

// grad_x of one NCHW plane as a stride-1 correlation: dz is spread into a zero plane Z at
// rows oh*sh + (kh-1)*dh - ph (columns alike), and grad_x[ih, iw] = sum over taps of the
// flipped weight times Z[ih + i*dh, iw + j*dw]. Every grad_x element is written once, and the
// chunk loop of the forward computes it (no overlapping read-modify-write).
struct InputGradPlan {
  int64_t rows, stride, row_shift, col_shift;  // Z's shape, and where dz lands in it
  std::vector<Chunk> chunks;                   // over grad_x's plane
  std::vector<int64_t> tap_off;                // flipped tap t -> offset in Z

  explicit InputGradPlan(const Geometry& g, int64_t width) {
    rows = g.height + (g.kh - 1) * g.dh;
    stride = g.width + (g.kw - 1) * g.dw + 16;  // room for full vector loads past the end
    row_shift = (g.kh - 1) * g.dh - g.ph;
    col_shift = (g.kw - 1) * g.dw - g.pw;
    for (int64_t ih = 0; ih < g.height; ++ih) {
      for (int64_t iw = 0; iw < g.width; iw += width) {
        chunks.push_back({ih * g.width + iw, ih * stride + iw, std::min(width, g.width - iw)});
      }
    }
    tap_off.resize(g.taps());
    for (int64_t i = 0; i < g.kh; ++i) {
      for (int64_t j = 0; j < g.kw; ++j) tap_off[i * g.kw + j] = i * g.dh * stride + j * g.dw;
    }
  }
  int64_t size() const { return rows * stride; }

  template <typename T>
  // Z starts zeroed (once per thread) and every plane writes the same positions, so only
  // dz's own positions are written (with sw == 2, the zeros between them too).
  void spread(const T* dz, const Geometry& g, T* z) const {
    using Vec = at::vec::Vectorized<T>;
    constexpr int64_t V = Vec::size();
    // Output columns whose Z column col = ow*sw + col_shift lies in [0, stride - 16).
    const int64_t ow_a = col_shift >= 0 ? 0 : (-col_shift + g.sw - 1) / g.sw;
    const int64_t ow_b = std::min(g.out_w, (stride - 16 - col_shift + g.sw - 1) / g.sw);
    for (int64_t oh = 0; oh < g.out_h; ++oh) {
      const int64_t r = oh * g.sh + row_shift;
      if (r < 0 || r >= rows) continue;
      const T* src = dz + oh * g.out_w;
      T* dst = z + r * stride + col_shift;
      int64_t ow = ow_a;
      if (g.sw == 1) {
        std::copy(src + ow_a, src + std::max(ow_a, ow_b), dst + ow_a);
        continue;
      }
      if (g.sw == 2) {
        for (; ow + V <= ow_b; ow += V) {
          const auto pair = at::vec::interleave2(Vec::loadu(src + ow), Vec(0));
          pair.first.store(dst + 2 * ow);
          pair.second.store(dst + 2 * ow + V);
        }
      }
      for (; ow < ow_b; ++ow) dst[ow * g.sw] = src[ow];
    }
  }
};

template <typename T>
void backward_nchw(const T* grad, const T* x, const T* w, const T* bias, T* gx, T* gw, T* gb,
                   const Geometry& g, Act act, GradMask mask) {
  using Vec = at::vec::Vectorized<T>;
  const int64_t out_plane = g.out_h * g.out_w;
  const bool need_x = act != Act::kNone || mask.weight;
  const std::vector<Chunk> chunks = plane_chunks(g, Vec::size());
  const std::vector<int64_t> tap_off = plane_tap_offsets(g);
  const InputGradPlan plan(g, Vec::size());
  at::parallel_for(0, g.channels, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> buf(need_x ? g.plane_buffer() : 0);
    std::vector<T> zbuf(mask.input ? plan.size() : 0);
    std::vector<T> dz(act != Act::kNone ? out_plane : 0);
    std::vector<Vec> wv(g.taps()), wflip(g.taps()), dw_lanes(g.taps());
    std::vector<double> dw_sum(g.taps());
    for (int64_t c = begin; c < end; ++c) {
      for (int64_t t = 0; t < g.taps(); ++t) {
        wv[t] = Vec(w[c * g.taps() + t]);
        wflip[g.taps() - 1 - t] = wv[t];
      }
      const Vec bv(bias ? bias[c] : T(0));
      std::fill(dw_sum.begin(), dw_sum.end(), 0.0);
      double db_sum = 0.0;
      for (int64_t n = 0; n < g.batch; ++n) {
        const int64_t p = n * g.channels + c;
        const T* gp = grad + p * out_plane;
        if (need_x) load_padded_plane(x + p * g.height * g.width, g, buf.data());
        // dz = grad * act'(z), z recomputed.
        const T* dzp = gp;
        if (act != Act::kNone) {
          for_chunk_groups(chunks, [&](const Chunk* group, auto size) {
            constexpr int kGroup = decltype(size)::value;
            Vec z[kGroup];
            conv_chunks<T, kGroup>(buf.data(), wv.data(), tap_off.data(), g.taps(), bv, group, z);
            for (int q = 0; q < kGroup; ++q) {
              store_chunk(act_backward(act, load_chunk(gp, group[q], out_plane), z[q]), dz.data(),
                          group[q], out_plane);
            }
          });
          dzp = dz.data();
        }
        if (mask.weight || mask.bias) {
          Vec db_lanes(0);
          std::fill(dw_lanes.begin(), dw_lanes.end(), Vec(0));
          for (const Chunk& ch : chunks) {
            // Lanes past the row's end load as zero, so they add nothing.
            const Vec d = load_chunk(dzp, ch, out_plane);
            db_lanes = db_lanes + d;
            if (!mask.weight) continue;
            for (int64_t t = 0; t < g.taps(); ++t) {
              dw_lanes[t] = at::vec::fmadd(d, Vec::loadu(buf.data() + ch.in_at + tap_off[t]),
                                           dw_lanes[t]);
            }
          }
          if (mask.bias) db_sum += lane_sum(db_lanes);
          if (mask.weight) {
            for (int64_t t = 0; t < g.taps(); ++t) dw_sum[t] += lane_sum(dw_lanes[t]);
          }
        }
        if (mask.input) {
          plan.spread(dzp, g, zbuf.data());
          T* dst = gx + p * g.height * g.width;
          for_chunk_groups(plan.chunks, [&](const Chunk* group, auto size) {
            constexpr int kGroup = decltype(size)::value;
            Vec acc[kGroup];
            conv_chunks<T, kGroup>(zbuf.data(), wflip.data(), plan.tap_off.data(), g.taps(),
                                   Vec(0), group, acc);
            for (int q = 0; q < kGroup; ++q) store_chunk(acc[q], dst, group[q], g.height * g.width);
          });
        }
      }
      if (mask.weight) {
        for (int64_t t = 0; t < g.taps(); ++t) gw[c * g.taps() + t] = static_cast<T>(dw_sum[t]);
      }
      if (mask.bias) gb[c] = static_cast<T>(db_sum);
    }
  });
}

// ---------------------------------------------------------------------------------------
// NHWC

// Output columns whose every tap column lies inside the input: [lo, hi).
inline void interior_columns(const Geometry& g, int64_t& lo, int64_t& hi) {
  lo = std::min(g.out_w, (g.pw + g.sw - 1) / g.sw);
  const int64_t last = g.width - 1 + g.pw - (g.kw - 1) * g.dw;  // largest ow * sw allowed
  hi = last < 0 ? lo : std::max(lo, std::min(g.out_w, last / g.sw + 1));
}

// Per-thread storage for the runtime-sized kernels (kernel sizes without a compile-time path).
template <typename T>
struct TapScratch {
  std::vector<at::vec::Vectorized<T>> vecs;
  std::vector<const T*> rows;
  std::vector<int64_t> cols;
  explicit TapScratch(const Geometry& g) : vecs(g.taps()), rows(g.kh), cols(g.kw) {}
};

// rows[i] + c0 (null stays null) into a compile-time array when KH > 0, else into scratch.
template <typename T, int KH>
inline const T* const* rows_at(const T* const* rows, int64_t kh, int64_t c0,
                               const T* (&fixed)[KH > 0 ? KH : 1], TapScratch<T>& scratch) {
  const T** out = KH > 0 ? fixed : scratch.rows.data();
  for (int64_t i = 0; i < kh; ++i) out[i] = rows[i] ? rows[i] + c0 : nullptr;
  return out;
}

// Loads and stores of the channels [c0, c0 + cnt) of one vector; kFull: cnt is a whole vector,
// so no count check is left in the inner loops.
template <typename T, bool kFull>
struct Lanes {
  using Vec = at::vec::Vectorized<T>;
  int64_t cnt;
  MOBILEFUSE_ALWAYS_INLINE Vec load(const T* p) const {
    if constexpr (kFull) return Vec::loadu(p);
    else return Vec::loadu(p, cnt);
  }
  MOBILEFUSE_ALWAYS_INLINE void store(const Vec& v, T* p) const {
    if constexpr (kFull) v.store(p);
    else v.store(p, cnt);
  }
};

// Calls f(first, group, border) over the pixels [0, count) in groups of kMax, then of 4, 2
// and 1 for the rest (short rows keep a few independent sums too); a row that kAlt divides
// and kMax does not goes in groups of kAlt instead (7 for the 7-, 14- and 28-pixel rows of
// these networks, which else end in a 2- and a 1-pixel group: one chain of FMAs, latency
// bound). border: the group reaches outside [lo, hi), where every tap is inside the tensor
// it reads. Group size and border are compile-time constants.
template <int kMax = 4, int kAlt = 0, typename F>
inline void for_pixel_groups(int64_t count, int64_t lo, int64_t hi, F f) {
  auto groups_of = [&](auto size, int64_t& p, int64_t end) {
    constexpr int kG = decltype(size)::value;
    for (; p + kG <= end; p += kG) {
      if (p >= lo && p + kG <= hi) f(p, size, std::false_type());
      else f(p, size, std::true_type());
    }
  };
  int64_t p = 0;
  if constexpr (kAlt > 0) {
    if (count % kAlt == 0 && count % kMax != 0) {
      groups_of(std::integral_constant<int, kAlt>(), p, count);
      return;
    }
  }
  if constexpr (kMax > 4) groups_of(std::integral_constant<int, kMax>(), p, count);
  groups_of(std::integral_constant<int, 4>(), p, count);
  groups_of(std::integral_constant<int, 2>(), p, count);
  groups_of(std::integral_constant<int, 1>(), p, count);
}

// Pixels per group in the NHWC forward at stride 1: with 32 vector registers (AVX-512) 8
// independent sums hide the FMA latency and leave room for the window; with 16, 4. At
// stride 2 the window of 8 pixels (17+ columns) does not fit: 4. With AVX-512, rows that
// these do not divide and 7 does go in 7s (a 7x7 map with 5x5 taps: 0.31 -> 0.25 ms NCHW);
// at stride 2, 7s where 4s fit were slower (C144 56x56: 0.14-0.16 -> 0.18 ms).
#ifdef CPU_CAPABILITY_AVX512
constexpr int kForwardGroup = 8;
constexpr int kAltGroup = 7;
#else
constexpr int kAltGroup = 0;
constexpr int kForwardGroup = 4;
#endif
// Pixels per group when two output rows share a pass, which holds twice the sums: with
// AVX-512, 8 (16 sums, a 12-column window and a weight in 32 registers; 8 and 4 measured
// alike, 8 a little ahead on 28-pixel rows); with 16 registers, 2.
#ifdef CPU_CAPABILITY_AVX512
constexpr int kPairGroup = 8;
#else
constexpr int kPairGroup = 2;
#endif

// Full unrolling of the small fixed loops over pixels, taps and window columns, past GCC's
// default limit of 16 iterations: only fully unrolled do the arrays of vectors they index
// live in registers (else they go to the stack, zeroed and spilled on every group).
#define MOBILEFUSE_UNROLL _Pragma("GCC unroll 64")

// Zero lanes (a vector has at most 16) that border pixels read in place of taps outside the
// tensor: one code path for every pixel of a group, and no branch per tap.
template <typename T>
alignas(64) constexpr T kZeroLanes[16] = {};

// The kernel size and column stride as compile-time constants, 0 where only known at run
// time. A kernel with sw > 0 has dilation 1: its taps' columns form a window shared by the
// pixels of a group.
template <int KH, int KW, int SW>
struct Kernel {
  static constexpr int kh = KH, kw = KW, sw = SW;
};

// Calls f(Kernel<...>()) with the compile-time shape matching g, else the run-time one.
// Float64 (gradcheck, not speed) always takes the run-time shape: half the instantiations.
template <typename T, typename F>
inline void with_kernel(const Geometry& g, F f) {
  if constexpr (std::is_same_v<T, double>) return f(Kernel<0, 0, 0>());
  if (g.kh == 3 && g.kw == 3 && g.dw == 1 && g.sw == 1) return f(Kernel<3, 3, 1>());
  if (g.kh == 3 && g.kw == 3 && g.dw == 1 && g.sw == 2) return f(Kernel<3, 3, 2>());
  if (g.kh == 5 && g.kw == 5 && g.dw == 1 && g.sw == 1) return f(Kernel<5, 5, 1>());
  if (g.kh == 5 && g.kw == 5 && g.dw == 1 && g.sw == 2) return f(Kernel<5, 5, 2>());
  if (g.kh == 7 && g.kw == 7 && g.dw == 1 && g.sw == 1) return f(Kernel<7, 7, 1>());
  if (g.kh == 7 && g.kw == 7 && g.dw == 1 && g.sw == 2) return f(Kernel<7, 7, 2>());
  f(Kernel<0, 0, 0>());
}


// Calls f(Kernel<...>(), std::integral_constant<Act, act>): both as compile-time constants.
template <typename T, typename F>
inline void with_fixed(const Geometry& g, Act act, F f) {
  with_act(act, [&](auto a) { with_kernel<T>(g, [&](auto k) { f(k, a); }); });
}

// Input columns a group of kG pixels reads in one kernel row, for a windowed kernel.
template <typename K, int kG>
constexpr int window_width() {
  return (kG - 1) * K::sw + K::kw;
}

// kWidth columns first, first + 1, ... (at xp, C apart) of a row `limit` columns wide;
// border groups read zeros for columns outside it.
template <typename T, int kWidth, bool kBorder, bool kFull>
MOBILEFUSE_ALWAYS_INLINE void load_columns(const T* xp, int64_t first, int64_t limit,
                                           int64_t C, Lanes<T, kFull> lanes,
                                           at::vec::Vectorized<T>* cols) {
  MOBILEFUSE_UNROLL
  for (int c = 0; c < kWidth; ++c) {
    const T* src = xp + c * C;
    if constexpr (kBorder) {
      if (first + c < 0 || first + c >= limit) src = kZeroLanes<T>;
    }
    cols[c] = lanes.load(src);
  }
}

// The window of a group in one row, starting at column `first` (at xp).
template <typename T, typename K, int kG, bool kBorder, bool kFull>
MOBILEFUSE_ALWAYS_INLINE void load_window(const T* xp, int64_t first, int64_t limit, const Geometry& g,
                        Lanes<T, kFull> lanes, at::vec::Vectorized<T>* cols) {
  load_columns<T, window_width<K, kG>(), kBorder>(xp, first, limit, g.channels, lanes, cols);
}

// Pre-activations of kG output pixels from ow, one vector of channels: bias plus the taps in
// tap order, one independent sum per pixel (a single pixel's chain of kh*kw dependent FMAs
// would leave the core waiting). rows[i] is input row i of the window at the vector's first
// channel, or null outside the input; border groups (kBorder) read zeros for the tap columns
// outside the input. The weights wp (taps of C) are read at each use: L1 hits, which leave
// the registers to the sums and the window.
template <typename T, typename K, int kG, bool kBorder, bool kFull>
MOBILEFUSE_ALWAYS_INLINE void conv_group(const T* const* rows, const T* wp, at::vec::Vectorized<T> bias,
                       const Geometry& g, Lanes<T, kFull> lanes, int64_t ow,
                       at::vec::Vectorized<T>* z) {
  const int64_t kh = K::kh > 0 ? K::kh : g.kh, kw = K::kw > 0 ? K::kw : g.kw;
  const int64_t C = g.channels, col = g.dw * C, step = g.sw * C;
  const int64_t iw0 = ow * g.sw - g.pw;
  MOBILEFUSE_UNROLL
  for (int q = 0; q < kG; ++q) z[q] = bias;
  for (int64_t i = 0; i < kh; ++i) {
    if (!rows[i]) continue;
    const T* xp = rows[i] + iw0 * C;
    if constexpr (K::sw > 0) {
      at::vec::Vectorized<T> cols[window_width<K, kG>()];
      load_window<T, K, kG, kBorder>(xp, iw0, g.width, g, lanes, cols);
      MOBILEFUSE_UNROLL
      for (int j = 0; j < K::kw; ++j) {
        const auto w = lanes.load(wp + (i * kw + j) * C);
        MOBILEFUSE_UNROLL
        for (int q = 0; q < kG; ++q) z[q] = at::vec::fmadd(cols[q * K::sw + j], w, z[q]);
      }
      continue;
    }
    for (int64_t j = 0; j < kw; ++j) {
      const auto w = lanes.load(wp + (i * kw + j) * C);
      MOBILEFUSE_UNROLL
      for (int q = 0; q < kG; ++q) {
        const T* src = xp + j * col + q * step;
        if constexpr (kBorder) {
          const int64_t iw = iw0 + q * g.sw + j * g.dw;
          if (iw < 0 || iw >= g.width) src = kZeroLanes<T>;
        }
        z[q] = at::vec::fmadd(lanes.load(src), w, z[q]);
      }
    }
  }
}

// Per-thread state of the NHWC kernels: the input (or dz) rows a row of taps reads, and the
// storage of the run-time-sized kernels.
template <typename T>
struct RowScratch {
  TapScratch<T> taps;
  std::vector<const T*> rows;
  explicit RowScratch(const Geometry& g) : taps(g), rows(g.kh) {}
};

// Calls f(c0, cnt, full) for each vector of channels in [lo, hi) (lo a multiple of the
// vector size): full is std::true_type for whole vectors, std::false_type for a partial last.
template <typename T, typename F>
MOBILEFUSE_ALWAYS_INLINE void for_channel_vectors(int64_t lo, int64_t hi, F f) {
  constexpr int64_t V = at::vec::Vectorized<T>::size();
  int64_t c0 = lo;
  for (; c0 + V <= hi; c0 += V) f(c0, V, std::true_type());
  if (c0 < hi) f(c0, hi - c0, std::false_type());
}

// The NHWC forward's walk of an output row: f(ow, group, border, c0, lanes) for each pixel
// group (as for_pixel_groups<kMax, kAlt> makes them) and, within it, each vector of the
// channels [c_lo, c_hi) (lanes: a Lanes<T, full>).
template <typename T, int kMax, int kAlt, typename F>
MOBILEFUSE_ALWAYS_INLINE void for_groups_then_vectors(int64_t width, int64_t ow_lo,
                                                      int64_t ow_hi, int64_t c_lo,
                                                      int64_t c_hi, F f) {
  for_pixel_groups<kMax, kAlt>(width, ow_lo, ow_hi, [&](int64_t ow, auto group, auto border) {
    for_channel_vectors<T>(c_lo, c_hi, [&](int64_t c0, int64_t cnt, auto full)
                                           MOBILEFUSE_LAMBDA_INLINE {
      f(ow, group, border, c0, Lanes<T, decltype(full)::value>{cnt});
    });
  });
}

// One output row of the NHWC forward, channels [c_lo, c_hi): pixel group by pixel group, each
// group through every channel vector in turn, so reads and writes run along memory. (Walking
// the row one channel vector at a time instead reads one 64-byte line every C * 4 bytes: with
// C a multiple of 32 those lines fall in a few L1 sets and evict each other, and each line's
// prefetched neighbour is gone before its own vector comes: C96 112x112 stride 2 took 2.3 ms
// for oneDNN's 1.5, now 1.25.) in_rows[i] is input row oh*sh - ph + i*dh, or null outside.
template <typename T, typename K, Act kAct>
void forward_row(const T* const* in_rows, T* orow, const T* w_taps, const T* bias,
                           const Geometry& g, int64_t c_lo, int64_t c_hi, int64_t ow_lo,
                           int64_t ow_hi, TapScratch<T>& scratch) {
  using Vec = at::vec::Vectorized<T>;
  const int64_t C = g.channels;
  for_groups_then_vectors<T, K::sw == 1 ? kForwardGroup : 4, kAltGroup>(
      g.out_w, ow_lo, ow_hi, c_lo, c_hi,
      [&](int64_t ow, auto group, auto border, int64_t c0, auto lanes)
          MOBILEFUSE_LAMBDA_INLINE {
        constexpr int kG = decltype(group)::value;
        const T* rows_fixed[K::kh > 0 ? K::kh : 1];
        const T* const* rows =
            rows_at<T, K::kh>(in_rows, K::kh > 0 ? K::kh : g.kh, c0, rows_fixed, scratch);
        const Vec bv = bias ? lanes.load(bias + c0) : Vec(0);
        Vec z[kG];
        conv_group<T, K, kG, decltype(border)::value>(rows, w_taps + c0, bv, g, lanes, ow, z);
        T* out = orow + c0;
        MOBILEFUSE_UNROLL
        for (int q = 0; q < kG; ++q) lanes.store(act_forward(kAct, z[q]), out + (ow + q) * C);
      });
}

// Kernels whose forward computes two output rows per pass: 3 or more rows, at a row stride
// equal to the column stride (the window of each of the kh + stride input rows a pair reads
// is loaded once for both rows). A single row per pass reads every input row kh / stride
// times, which refills L1 from L2 more often than its FMAs can hide (one thread, 5x5 stride 1
// at 28x28 and 14x14: 34 -> 45 GFMA/s). The 3x3 forward gained as well (interleaved on a
// 2-core Xeon, batch 8: 1.03-1.19x on each of its 19 layers in channels_last, 1.00-1.23x in
// NCHW, whose channel blocks run these rows too).
template <typename K>
constexpr bool kRowPairs = K::sw > 0 && K::kh >= 3;

// Pre-activations of kG pixels from ow in two consecutive output rows, one vector of
// channels: input row i of the kh + sw in rows[] meets weight row i in the first output row
// and weight row i - sw in the second. Row stride sw, dilation 1 (the caller checks).
template <typename T, typename K, int kG, bool kBorder, bool kFull>
MOBILEFUSE_ALWAYS_INLINE void conv_group_pair(const T* const* rows, const T* wp,
                                              at::vec::Vectorized<T> bias, const Geometry& g,
                                              Lanes<T, kFull> lanes, int64_t ow,
                                              at::vec::Vectorized<T>* z0,
                                              at::vec::Vectorized<T>* z1) {
  const int64_t C = g.channels, iw0 = ow * K::sw - g.pw;
  MOBILEFUSE_UNROLL
  for (int q = 0; q < kG; ++q) z0[q] = z1[q] = bias;
  MOBILEFUSE_UNROLL
  for (int i = 0; i < K::kh + K::sw; ++i) {
    if (!rows[i]) continue;
    at::vec::Vectorized<T> cols[window_width<K, kG>()];
    load_window<T, K, kG, kBorder>(rows[i] + iw0 * C, iw0, g.width, g, lanes, cols);
    if (i < K::kh) {
      MOBILEFUSE_UNROLL
      for (int j = 0; j < K::kw; ++j) {
        const auto w = lanes.load(wp + (i * K::kw + j) * C);
        MOBILEFUSE_UNROLL
        for (int q = 0; q < kG; ++q) z0[q] = at::vec::fmadd(cols[q * K::sw + j], w, z0[q]);
      }
    }
    if (i >= K::sw) {
      MOBILEFUSE_UNROLL
      for (int j = 0; j < K::kw; ++j) {
        const auto w = lanes.load(wp + ((i - K::sw) * K::kw + j) * C);
        MOBILEFUSE_UNROLL
        for (int q = 0; q < kG; ++q) z1[q] = at::vec::fmadd(cols[q * K::sw + j], w, z1[q]);
      }
    }
  }
}

// Two output rows of the NHWC forward (kRowPairs kernels), channels [c_lo, c_hi), in the
// order of forward_row. in_rows[i] (i < kh + sw) is input row oh * sw - ph + i, or null
// outside.
template <typename T, typename K, Act kAct>
void forward_row_pair(const T* const* in_rows, T* orow0, T* orow1, const T* w_taps,
                      const T* bias, const Geometry& g, int64_t c_lo, int64_t c_hi,
                      int64_t ow_lo, int64_t ow_hi) {
  using Vec = at::vec::Vectorized<T>;
  const int64_t C = g.channels;
  // At stride 2, groups of 4 (two rows of 7 would need 14 sums and a 17-column window).
  for_groups_then_vectors<T, K::sw == 1 ? kPairGroup : 4, K::sw == 1 ? kAltGroup : 0>(
      g.out_w, ow_lo, ow_hi, c_lo, c_hi,
      [&](int64_t ow, auto group, auto border, int64_t c0, auto lanes)
          MOBILEFUSE_LAMBDA_INLINE {
        constexpr int kG = decltype(group)::value;
        const T* rows[K::kh + K::sw];
        MOBILEFUSE_UNROLL
        for (int i = 0; i < K::kh + K::sw; ++i) rows[i] = in_rows[i] ? in_rows[i] + c0 : nullptr;
        const Vec bv = bias ? lanes.load(bias + c0) : Vec(0);
        Vec z0[kG], z1[kG];
        conv_group_pair<T, K, kG, decltype(border)::value>(rows, w_taps + c0, bv, g, lanes, ow,
                                                           z0, z1);
        MOBILEFUSE_UNROLL
        for (int q = 0; q < kG; ++q) {
          lanes.store(act_forward(kAct, z0[q]), orow0 + (ow + q) * C + c0);
          lanes.store(act_forward(kAct, z1[q]), orow1 + (ow + q) * C + c0);
        }
      });
}

// Output rows [oh_lo, oh_hi) of one NHWC image (output image on), channels [c_lo, c_hi) in
// tiles of `tile` within each row (or pair of rows), in pairs where the kernel computes two
// rows per pass; row_at(ih) is input row ih (null outside the image), asked for in rising
// order; after(oh) runs as each row is written. [ow_lo, ow_hi) are the interior columns of g.
template <typename T, typename K, Act kAct, typename RowAt, typename After>
void forward_rows(RowAt&& row_at, T* on, const T* w_taps, const T* bias, const Geometry& g,
                  int64_t oh_lo, int64_t oh_hi, int64_t ow_lo, int64_t ow_hi, int64_t c_lo,
                  int64_t c_hi, int64_t tile, RowScratch<T>& s, After after) {
  const int64_t row = g.out_w * g.channels;
  int64_t oh = oh_lo;
  if constexpr (kRowPairs<K>) {
    if (g.sh == K::sw && g.dh == 1) {
      for (; oh + 2 <= oh_hi; oh += 2) {
        const T* rows[K::kh + K::sw];
        for (int i = 0; i < K::kh + K::sw; ++i) rows[i] = row_at(oh * K::sw - g.ph + i);
        for (int64_t t = c_lo; t < c_hi; t += tile) {
          forward_row_pair<T, K, kAct>(rows, on + oh * row, on + (oh + 1) * row, w_taps, bias,
                                       g, t, std::min(c_hi, t + tile), ow_lo, ow_hi);
        }
        after(oh);
        after(oh + 1);
      }
    }
  }
  for (; oh < oh_hi; ++oh) {
    for (int64_t i = 0; i < g.kh; ++i) s.rows[i] = row_at(oh * g.sh - g.ph + i * g.dh);
    for (int64_t t = c_lo; t < c_hi; t += tile) {
      forward_row<T, K, kAct>(s.rows.data(), on + oh * row, w_taps, bias, g, t,
                              std::min(c_hi, t + tile), ow_lo, ow_hi, s.taps);
    }
    after(oh);
  }
}

// forward_rows on the rows of one NHWC image xn, channels [c_lo, c_hi) as one tile.
template <typename T, typename K, Act kAct, typename After>
void forward_nhwc_output_rows(const T* xn, T* on, const T* w_taps, const T* bias,
                              const Geometry& g, int64_t oh_lo, int64_t oh_hi, int64_t ow_lo,
                              int64_t ow_hi, int64_t c_lo, int64_t c_hi, RowScratch<T>& s,
                              After after) {
  const int64_t image_row = g.width * g.channels;
  forward_rows<T, K, kAct>(
      [&](int64_t ih) { return ih >= 0 && ih < g.height ? xn + ih * image_row : nullptr; }, on,
      w_taps, bias, g, oh_lo, oh_hi, ow_lo, ow_hi, c_lo, c_hi, c_hi - c_lo, s, after);
}

// Channels per task of the NHWC kernels: every channel, unless kh input rows of them (and,
// in the backward, its ring of `ring_rows` dz rows, out_w wide) outgrow 256 KB, half of a
// small L2; then as many whole vectors as fit, at least one. A task walks its channels down
// the image, so the next output row finds kh - 1 of its input rows in L2. (Tiles of the
// channels whose rows fit in 24 KB of L1 read one 64-byte line every C * 4 bytes; with C a
// multiple of 32 those lines fall in a few L1 sets, and each line's prefetched neighbour
// belongs to another tile, gone before that tile runs. Every channel instead, on 10 layers of
// the three networks on a 2-core Xeon: forward+backward geomean 1.17-1.40x eager -> 1.43-1.53x.)
template <typename T>
inline int64_t tile_channels(const Geometry& g, int64_t ring_rows = 0) {
  constexpr int64_t V = at::vec::Vectorized<T>::size();
  const int64_t vector_rows =
      (g.kh * g.width + ring_rows * g.out_w) * V * static_cast<int64_t>(sizeof(T));
  const int64_t vectors = std::max<int64_t>(1, 256 * 1024 / std::max<int64_t>(1, vector_rows));
  return std::min(vectors * V, (g.channels + V - 1) / V * V);
}

// Channels per task of the NHWC forward. Each input row is read by kh / stride output rows:
// tiles whose kh rows fit in 32 KB of L1 beat every channel, which refills L1 from L2 each
// time, once a pixel's read spans 256 contiguous bytes (128 for 5x5 at stride 1), so the
// neighbouring lines it prefetches are its own. (5x5 stride 1, interleaved on a 2-core Xeon:
// C240 28x28 0.77 -> 0.54 ms, C672 14x14 0.54 -> 0.49. 3x3 tiles of one vector lost, C32
// 112x112 0.68 -> 1.19 ms; of 4+ vectors the wide 14x14 and 7x7 layers gained 1.03-1.16x,
// e.g. C384 14x14 0.216 -> 0.185 ms, and the forward geomean went 1.44-1.48x -> 1.52-1.54x.)
template <typename T>
inline int64_t forward_tile_channels(const Geometry& g) {
  constexpr int64_t V = at::vec::Vectorized<T>::size();
  constexpr int64_t kVectorBytes = V * static_cast<int64_t>(sizeof(T));
  const int64_t all = tile_channels<T>(g);
  const int64_t vectors = 32 * 1024 / (g.kh * g.width * kVectorBytes);
  const int64_t least_bytes = g.kh >= 5 && g.sh == 1 ? 128 : 256;
  return vectors * kVectorBytes >= least_bytes ? std::min(vectors * V, all) : all;
}

// sums[c] += the `width` pixels of an output row, channels [c_lo, c_hi): the squeeze-and-
// excitation pool, taken while the row just written is still in L1.
template <typename T>
inline void add_row_sums(const T* row, int64_t width, int64_t C, int64_t c_lo, int64_t c_hi,
                         T* sums) {
  using Vec = at::vec::Vectorized<T>;
  for_channel_vectors<T>(c_lo, c_hi, [&](int64_t c0, int64_t cnt, auto) {
    Vec a0(0), a1(0);  // two chains: the adds' latency, not their count, bounds the loop
    int64_t ow = 0;
    for (; ow + 2 <= width; ow += 2) {
      a0 += Vec::loadu(row + ow * C + c0, cnt);
      a1 += Vec::loadu(row + (ow + 1) * C + c0, cnt);
    }
    if (ow < width) a0 += Vec::loadu(row + ow * C + c0, cnt);
    (Vec::loadu(sums + c0, cnt) + (a0 + a1)).store(sums + c0, cnt);
  });
}

// Each task is one band of output rows of one channel tile of one image; bands only where
// the images and tiles alone leave threads idle. With `sums`, sums[n * C + c] is set to the
// sum of output channel c of image n: each band sums into its own block, and the blocks are
// added in band order (the same bits for the same thread count).
template <typename T, typename K, Act kAct>
void forward_nhwc_fixed(const T* x, const T* w_taps, const T* bias, T* out, const Geometry& g,
                        T* sums) {
  int64_t ow_lo, ow_hi;
  interior_columns(g, ow_lo, ow_hi);
  const int64_t image = g.height * g.width * g.channels, row = g.out_w * g.channels;
  const int64_t tile = forward_tile_channels<T>(g), tiles = (g.channels + tile - 1) / tile;
  const int64_t wanted = 4 * at::get_num_threads();
  const int64_t bands = std::clamp<int64_t>((wanted + g.batch * tiles - 1) / (g.batch * tiles),
                                            1, std::max<int64_t>(1, g.out_h));
  std::vector<T> band_sums(sums ? g.batch * bands * g.channels : 0, T(0));
  at::parallel_for(0, g.batch * tiles * bands, 1, [&](int64_t begin, int64_t end) {
    RowScratch<T> scratch(g);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / (tiles * bands), t = task / bands % tiles, b = task % bands;
      const int64_t c_lo = t * tile, c_hi = std::min(g.channels, c_lo + tile);
      T* on = out + n * g.out_h * row;
      forward_nhwc_output_rows<T, K, kAct>(
          x + n * image, on, w_taps, bias, g, b * g.out_h / bands, (b + 1) * g.out_h / bands,
          ow_lo, ow_hi, c_lo, c_hi, scratch, [&](int64_t oh) {
            if (sums) {
              add_row_sums(on + oh * row, g.out_w, g.channels, c_lo, c_hi,
                           band_sums.data() + (n * bands + b) * g.channels);
            }
          });
    }
  });
  if (!sums) return;
  for (int64_t n = 0; n < g.batch; ++n) {
    for (int64_t c = 0; c < g.channels; ++c) {
      T total = 0;
      for (int64_t b = 0; b < bands; ++b) total += band_sums[(n * bands + b) * g.channels + c];
      sums[n * g.channels + c] = total;
    }
  }
}

// Image n's whole output on the calling thread, one channel tile at a time down the image,
// and sums[c] = the sum of its output channel c.
template <typename T, typename K, Act kAct>
void forward_nhwc_image(const T* xn, T* on, const T* w_taps, const T* bias, const Geometry& g,
                        T* sums, RowScratch<T>& scratch) {
  int64_t ow_lo, ow_hi;
  interior_columns(g, ow_lo, ow_hi);
  const int64_t row = g.out_w * g.channels, tile = forward_tile_channels<T>(g);
  std::fill(sums, sums + g.channels, T(0));
  for (int64_t c_lo = 0; c_lo < g.channels; c_lo += tile) {
    const int64_t c_hi = std::min(g.channels, c_lo + tile);
    forward_nhwc_output_rows<T, K, kAct>(
        xn, on, w_taps, bias, g, 0, g.out_h, ow_lo, ow_hi, c_lo, c_hi, scratch,
        [&](int64_t oh) { add_row_sums(on + oh * row, g.out_w, g.channels, c_lo, c_hi, sums); });
  }
}

// The NHWC forward one image per task: `after(n, sums)` runs on the same thread as soon as
// image n's output is written (and still in cache), with its per-channel sums.
template <typename T>
void forward_nhwc_by_image(const T* x, const T* w_taps, const T* bias, T* out,
                           const Geometry& g, Act act,
                           const std::function<void(int64_t, const T*)>& after) {
  with_fixed<T>(g, act, [&](auto k, auto a) {
    at::parallel_for(0, g.batch, 1, [&](int64_t begin, int64_t end) {
      RowScratch<T> scratch(g);
      std::vector<T> sums(g.channels);
      for (int64_t n = begin; n < end; ++n) {
        forward_nhwc_image<T, decltype(k), decltype(a)::value>(
            x + n * g.height * g.width * g.channels, out + n * g.out_h * g.out_w * g.channels,
            w_taps, bias, g, sums.data(), scratch);
        after(n, sums.data());
      }
    });
  });
}

// The NHWC forward; with `sums` (N * C values), also each output channel's sum per image.
template <typename T>
void forward_nhwc(const T* x, const T* w_taps, const T* bias, T* out, const Geometry& g,
                  Act act, T* sums = nullptr) {
  with_fixed<T>(g, act, [&](auto k, auto a) {
    forward_nhwc_fixed<T, decltype(k), decltype(a)::value>(x, w_taps, bias, out, g, sums);
  });
}

// Bands of output rows per image, each a block of the NHWC weight-gradient sums: fixed by the
// shape alone, so the blocked partial sums and their fixed-order reduction give the same bits
// every run. At least 8 blocks in all, so small batches still spread over the threads.
inline int64_t bands_per_image(const Geometry& g) {
  return std::max<int64_t>(1, std::min(g.out_h, (8 + g.batch - 1) / g.batch));
}

// One output row of the NHWC backward for the channels [c0, c0 + cnt): z recomputed, dz =
// grad * act'(z) (stored to dz_row when `store`), and with `own` the row's share of the weight
// and bias gradients, summed in registers along the row and added to `part` once. in_rows[i]
// is input row oh*sh - ph + i*dh, or null outside the input. With a compile-time kernel
// shape the tap loops unroll. Pixels go in groups, as in the forward.
template <typename T, typename K, Act kAct, bool kFull>
void backward_dz_row(const T* const* in_rows, const T* grow, T* dz_row, const T* w_taps,
                     const T* bias, T* part, const Geometry& g, int64_t c0, int64_t cnt,
                     bool own, GradMask mask, bool store, int64_t ow_lo, int64_t ow_hi,
                     TapScratch<T>& scratch) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int kTaps = K::kh * K::kw;
  const Lanes<T, kFull> lanes{cnt};
  const int64_t kh = K::kh > 0 ? K::kh : g.kh, kw = K::kw > 0 ? K::kw : g.kw, taps = kh * kw;
  const int64_t C = g.channels, col = g.dw * C, step = g.sw * C;
  const T* rows_fixed[K::kh > 0 ? K::kh : 1];
  const T* const* rows = rows_at<T, K::kh>(in_rows, kh, c0, rows_fixed, scratch);
  const T* wp = w_taps + c0;
  grow += c0;
  if (dz_row) dz_row += c0;
  Vec dw_fixed[kTaps > 0 ? kTaps : 1];
  Vec* dw = kTaps > 0 ? dw_fixed : scratch.vecs.data();
  for (int64_t t = 0; t < taps; ++t) dw[t] = Vec(0);
  const bool need_dw = own && mask.weight;
  const Vec bv = bias ? lanes.load(bias + c0) : Vec(0);
  Vec db(0);
  for_pixel_groups(g.out_w, ow_lo, ow_hi, [&](int64_t ow, auto group, auto border) {
    constexpr int kG = decltype(group)::value;
    const int64_t iw0 = ow * g.sw - g.pw;
    Vec d[kG];
    MOBILEFUSE_UNROLL
    for (int q = 0; q < kG; ++q) d[q] = lanes.load(grow + (ow + q) * C);
    if constexpr (kAct != Act::kNone) {
      Vec z[kG];
      conv_group<T, K, kG, decltype(border)::value, kFull>(rows, wp, bv, g, lanes, ow, z);
      MOBILEFUSE_UNROLL
      for (int q = 0; q < kG; ++q) {
        d[q] = act_backward(kAct, d[q], z[q]);
        if (store) lanes.store(d[q], dz_row + (ow + q) * C);
      }
    }
    if (own) {
      MOBILEFUSE_UNROLL
      for (int q = 0; q < kG; ++q) db = db + d[q];
    }
    if (!need_dw) return;
    for (int64_t i = 0; i < kh; ++i) {
      if (!rows[i]) continue;
      const T* xp = rows[i] + iw0 * C;
      if constexpr (K::sw > 0) {
        Vec cols[window_width<K, kG>()];
        load_window<T, K, kG, decltype(border)::value>(xp, iw0, g.width, g, lanes, cols);
        MOBILEFUSE_UNROLL
        for (int j = 0; j < K::kw; ++j) {
          Vec acc = dw[i * kw + j];
          MOBILEFUSE_UNROLL
          for (int q = 0; q < kG; ++q) acc = at::vec::fmadd(d[q], cols[q * K::sw + j], acc);
          dw[i * kw + j] = acc;
        }
        continue;
      }
      for (int64_t j = 0; j < kw; ++j) {
        Vec acc = dw[i * kw + j];
        MOBILEFUSE_UNROLL
        for (int q = 0; q < kG; ++q) {
          const T* src = xp + j * col + q * step;
          if constexpr (decltype(border)::value) {
            const int64_t iw = iw0 + q * g.sw + j * g.dw;
            if (iw < 0 || iw >= g.width) src = kZeroLanes<T>;
          }
          acc = at::vec::fmadd(d[q], lanes.load(src), acc);
        }
        dw[i * kw + j] = acc;
      }
    }
  });
  if (need_dw) {
    for (int64_t t = 0; t < taps; ++t) {
      lanes.store(lanes.load(part + t * C + c0) + dw[t], part + t * C + c0);
    }
  }
  if (own && mask.bias) lanes.store(lanes.load(part + taps * C + c0) + db, part + taps * C + c0);
}

// The dz columns that kG pairs of input pixels (2m + q, q < 2 * kG) read at stride 2 with
// padding pw = (kw - 1) / 2: tap column j of pixel 2m + q reads column m + (q + pw - j) / 2
// where q + pw - j is even, so m + lo ... m + hi.
template <typename K, int kG>
struct PairWindow {
  static constexpr int pw = (K::kw - 1) / 2;
  static constexpr int lo = -(pw / 2);
  static constexpr int hi = kG - 1 + (pw + 1) / 2;
  static constexpr int width = hi - lo + 1;
};

// The pairs m whose window lies inside dz and whose two pixels lie inside the row: [lo, hi).
template <typename K>
inline void interior_pairs(const Geometry& g, int64_t& lo, int64_t& hi) {
  const int64_t pairs = (g.width + 1) / 2;
  lo = std::min<int64_t>(pairs, -PairWindow<K, 1>::lo);
  hi = std::max(lo, std::min<int64_t>(g.out_w - PairWindow<K, 1>::hi, g.width / 2));
}

// grad_x of the kG pixel pairs from pair m (pixels 2m ... 2m + 2kG - 1) of one input row at
// stride 2 with that padding, one vector of channels: dz_rows[i] (null outside dz) and gx at
// that vector's channels, weight(t) the vector's weights of tap t. The group's dz columns are
// a window shared by its pixels and taps, loaded once per row.
template <typename T, typename K, int kG, bool kBorder, bool kFull, typename Weight>
MOBILEFUSE_ALWAYS_INLINE void gx_pair_group(const T* const* dz_rows, T* gx, int64_t m,
                                            const Geometry& g, Lanes<T, kFull> lanes,
                                            Weight weight) {
  using Vec = at::vec::Vectorized<T>;
  using W = PairWindow<K, kG>;
  constexpr int pw = W::pw;
  const int64_t C = g.channels, first = m + W::lo;
  Vec acc[2 * kG];
  MOBILEFUSE_UNROLL
  for (int q = 0; q < 2 * kG; ++q) acc[q] = Vec(0);
  MOBILEFUSE_UNROLL
  for (int i = 0; i < K::kh; ++i) {
    if (!dz_rows[i]) continue;
    Vec cols[W::width];
    load_columns<T, W::width, kBorder>(dz_rows[i] + first * C, first, g.out_w, C, lanes, cols);
    MOBILEFUSE_UNROLL
    for (int j = 0; j < K::kw; ++j) {
      const Vec w = weight(i * K::kw + j);
      MOBILEFUSE_UNROLL
      for (int q = 0; q < 2 * kG; ++q) {
        if ((q + pw - j) % 2 == 0) {
          acc[q] = at::vec::fmadd(w, cols[(q + pw - j) / 2 - W::lo], acc[q]);
        }
      }
    }
  }
  MOBILEFUSE_UNROLL
  for (int q = 0; q < 2 * kG; ++q) {
    if (!kBorder || 2 * m + q < g.width) lanes.store(acc[q], gx + (2 * m + q) * C);
  }
}

// grad_x of one input row at stride 2 with that padding (every network's), channels at c0
// (dz_rows at them too; wv: their tap weights): pixels in pairs (one of each column phase),
// kG pairs at a time. (Before, the pixels went one column phase at a time with a border
// check per tap, and the group's sums stayed on the stack: grad_x at stride 2 of C144 56x56
// took 1.2-2.4 ms on one thread, more than at stride 1 with 4x its taps; now 0.5 ms.)
template <typename T, typename K, bool kFull>
void backward_gx_row_pairs(const T* const* dz_rows, T* gx_row, const at::vec::Vectorized<T>* wv,
                           const Geometry& g, Lanes<T, kFull> lanes, int64_t c0) {
  int64_t m_lo, m_hi;
  interior_pairs<K>(g, m_lo, m_hi);
  for_pixel_groups((g.width + 1) / 2, m_lo, m_hi, [&](int64_t m, auto group, auto border)
                                                       MOBILEFUSE_LAMBDA_INLINE {
    gx_pair_group<T, K, decltype(group)::value, decltype(border)::value>(
        dz_rows, gx_row + c0, m, g, lanes, [&](int t) { return wv[t]; });
  });
}

// The same for the channels [c_lo, c_hi), dz_rows at channel 0: each group of pixel pairs
// through every channel vector in turn, so the row's stores run along memory (as the
// forward's; walking the row one vector at a time stores one line every C * 4 bytes).
template <typename T, typename K>
void backward_gx_row_pairs_all(const T* const* dz_rows, T* gx_row, const T* w_taps,
                               const Geometry& g, int64_t c_lo, int64_t c_hi) {
  const int64_t C = g.channels;
  int64_t m_lo, m_hi;
  interior_pairs<K>(g, m_lo, m_hi);
  for_pixel_groups((g.width + 1) / 2, m_lo, m_hi, [&](int64_t m, auto group, auto border)
                                                       MOBILEFUSE_LAMBDA_INLINE {
    for_channel_vectors<T>(c_lo, c_hi, [&](int64_t c0, int64_t cnt, auto full)
                                           MOBILEFUSE_LAMBDA_INLINE {
      const Lanes<T, decltype(full)::value> lanes{cnt};
      const T* rows[K::kh];
      MOBILEFUSE_UNROLL
      for (int i = 0; i < K::kh; ++i) rows[i] = dz_rows[i] ? dz_rows[i] + c0 : nullptr;
      gx_pair_group<T, K, decltype(group)::value, decltype(border)::value>(
          rows, gx_row + c0, m, g, lanes,
          [&](int t) { return lanes.load(w_taps + t * C + c0); });
    });
  });
}

// acc[q] += the taps of one weight row (kw vectors at wr) over the dz window cols of kG
// pixels at stride 1: tap column j of pixel q reads window column kw - 1 - j + q.
template <typename K, int kG, typename Vec>
MOBILEFUSE_ALWAYS_INLINE void add_gx_tap_row(const Vec* wr, const Vec* cols, Vec* acc) {
  MOBILEFUSE_UNROLL
  for (int j = 0; j < K::kw; ++j) {
    MOBILEFUSE_UNROLL
    for (int q = 0; q < kG; ++q) acc[q] = at::vec::fmadd(wr[j], cols[K::kw - 1 - j + q], acc[q]);
  }
}

// One input row of grad_x for the channels [c0, c0 + cnt): grad_x[iw] = sum over the taps
// (i, j) that reach it of w[i, j] * dz[ow], where ow*sw = iw + pw - j*dw. in_rows[i] is the dz
// row tap row i reads, or null when that tap row reaches no output row. The pixels are walked
// one column phase (iw mod sw) at a time, so each phase has a fixed set of taps; 4 pixels at a
// time with independent sums, border groups reading zeros for output columns outside dz.
template <typename T, typename K, bool kFull>
void backward_gx_row(const T* const* in_rows, T* gx_row, const T* w_taps, const Geometry& g,
                     int64_t c0, int64_t cnt, TapScratch<T>& scratch) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int kTaps = K::kh * K::kw;
  const Lanes<T, kFull> lanes{cnt};
  const int64_t kh = K::kh > 0 ? K::kh : g.kh, kw = K::kw > 0 ? K::kw : g.kw, taps = kh * kw;
  const int64_t C = g.channels;
  const T* rows_fixed[K::kh > 0 ? K::kh : 1];
  const T* const* dz_rows = rows_at<T, K::kh>(in_rows, kh, c0, rows_fixed, scratch);
  Vec wv_fixed[kTaps > 0 ? kTaps : 1];
  Vec* wv = kTaps > 0 ? wv_fixed : scratch.vecs.data();
  for (int64_t t = 0; t < taps; ++t) wv[t] = lanes.load(w_taps + t * C + c0);
  if constexpr (K::sw == 2) {
    if (g.pw == PairWindow<K, 1>::pw) {
      return backward_gx_row_pairs<T, K, kFull>(dz_rows, gx_row, wv, g, lanes, c0);
    }
  }
  // Pixels whose every tap column that matches their phase reads an output column.
  const int64_t in_lo = (kw - 1) * g.dw - g.pw, in_hi = (g.out_w - 1) * g.sw - g.pw + 1;
  for (int64_t p = 0; p < std::min(g.sw, g.width); ++p) {
    // Tap column j reaches pixel p + k*sw at output column first[j] + k, when phase-valid.
    constexpr int64_t kNone = INT64_MIN / 2;
    int64_t first_fixed[K::kw > 0 ? K::kw : 1];
    int64_t* first = K::kw > 0 ? first_fixed : scratch.cols.data();
    for (int64_t j = 0; j < kw; ++j) {
      const int64_t s = p + g.pw - j * g.dw;
      first[j] = (s % g.sw + g.sw) % g.sw == 0 ? s / g.sw : kNone;
    }
    auto k_of = [&](int64_t iw) { return std::max<int64_t>(0, (iw - p + g.sw - 1) / g.sw); };
    const int64_t count = k_of(g.width);
    for_pixel_groups(count, k_of(in_lo), k_of(in_hi), [&](int64_t k, auto group, auto border) {
      constexpr int kG = decltype(group)::value;
      Vec acc[kG];
      MOBILEFUSE_UNROLL
      for (int q = 0; q < kG; ++q) acc[q] = Vec(0);
      for (int64_t i = 0; i < kh; ++i) {
        if (!dz_rows[i]) continue;
        if constexpr (K::sw == 1) {
          // Tap column j of pixel k + q reads dz column k + pw - j + q: a window of columns
          // shared by the group's pixels and taps.
          const int64_t ow0 = k + g.pw - (K::kw - 1);
          Vec cols[window_width<K, kG>()];
          load_window<T, K, kG, decltype(border)::value>(dz_rows[i] + ow0 * C, ow0, g.out_w, g,
                                                          lanes, cols);
          add_gx_tap_row<K, kG>(wv + i * kw, cols, acc);
          continue;
        }
        for (int64_t j = 0; j < kw; ++j) {
          if (first[j] == kNone) continue;
          MOBILEFUSE_UNROLL
          for (int q = 0; q < kG; ++q) {
            const int64_t ow = first[j] + k + q;
            const T* src = dz_rows[i] + ow * C;
            if constexpr (decltype(border)::value) {
              if (ow < 0 || ow >= g.out_w) src = kZeroLanes<T>;
            }
            acc[q] = at::vec::fmadd(wv[i * kw + j], lanes.load(src), acc[q]);
          }
        }
      }
      MOBILEFUSE_UNROLL
      for (int q = 0; q < kG; ++q) lanes.store(acc[q], gx_row + (p + (k + q) * g.sw) * C + c0);
    });
  }
}

// The pixel group from k of both rows, one vector of channels: rows[r] (dz row ih + ph + 1 -
// r, null outside dz) and gx0, gx1 at that vector's channels, weight(t) its tap-t weights.
template <typename T, typename K, int kG, bool kBorder, bool kFull, typename Weight>
MOBILEFUSE_ALWAYS_INLINE void gx_row_pair_group(const T* const* rows, T* gx0, T* gx1, int64_t k,
                                                const Geometry& g, Lanes<T, kFull> lanes,
                                                Weight weight) {
  using Vec = at::vec::Vectorized<T>;
  const int64_t C = g.channels;
  Vec acc0[kG], acc1[kG];
  MOBILEFUSE_UNROLL
  for (int q = 0; q < kG; ++q) acc0[q] = acc1[q] = Vec(0);
  // Tap column j of pixel k + q reads dz column k + pw - j + q.
  const int64_t ow0 = k + g.pw - (K::kw - 1);
  MOBILEFUSE_UNROLL
  for (int r = 0; r <= K::kh; ++r) {
    if (!rows[r]) continue;
    Vec cols[window_width<K, kG>()];
    load_window<T, K, kG, kBorder>(rows[r] + ow0 * C, ow0, g.out_w, g, lanes, cols);
    Vec wr[K::kw];
    if (r >= 1) {
      MOBILEFUSE_UNROLL
      for (int j = 0; j < K::kw; ++j) wr[j] = weight((r - 1) * K::kw + j);
      add_gx_tap_row<K, kG>(wr, cols, acc0);
    }
    if (r < K::kh) {
      MOBILEFUSE_UNROLL
      for (int j = 0; j < K::kw; ++j) wr[j] = weight(r * K::kw + j);
      add_gx_tap_row<K, kG>(wr, cols, acc1);
    }
  }
  MOBILEFUSE_UNROLL
  for (int q = 0; q < kG; ++q) {
    lanes.store(acc0[q], gx0 + (k + q) * C);
    lanes.store(acc1[q], gx1 + (k + q) * C);
  }
}

// The pixels whose every tap column reads an output column, in a row pair: [lo, hi).
template <typename K>
inline void interior_row_pair_pixels(const Geometry& g, int64_t& lo, int64_t& hi) {
  lo = std::max<int64_t>(0, K::kw - 1 - g.pw);
  hi = std::max<int64_t>(0, g.out_w - g.pw);
}

// grad_x of two consecutive input rows ih and ih + 1 at stride 1 (rows and columns, dilation
// 1; K a compile-time kernel), channels at c0: the kh + 1 dz rows they read, dz_rows[k] =
// row ih + ph + 1 - k (null outside dz), are each loaded once for both, as in the forward's
// row pairs; tap row i of ih reads dz_rows[i + 1] and of ih + 1 dz_rows[i]. Each sum adds
// its taps in the order backward_gx_row does: the same numbers. (Forward+backward,
// interleaved on a 2-core Xeon at batch 8: 1.09-1.16x on the stride-1 5x5 layers, 0.97-1.12x
// on the 3x3 ones, in both layouts.)
template <typename K>
constexpr bool kGxRowPairs = K::sw == 1 && K::kh > 0;

template <typename T, typename K, bool kFull>
void backward_gx_row_pair(const T* const* dz_rows, T* gx_row0, T* gx_row1, const T* w_taps,
                          const Geometry& g, int64_t c0, int64_t cnt) {
  using Vec = at::vec::Vectorized<T>;
  const Lanes<T, kFull> lanes{cnt};
  const int64_t C = g.channels;
  const T* rows[K::kh + 1];
  MOBILEFUSE_UNROLL
  for (int k = 0; k <= K::kh; ++k) rows[k] = dz_rows[k] ? dz_rows[k] + c0 : nullptr;
  Vec wv[K::kh * K::kw];
  MOBILEFUSE_UNROLL
  for (int t = 0; t < K::kh * K::kw; ++t) wv[t] = lanes.load(w_taps + t * C + c0);
  int64_t in_lo, in_hi;
  interior_row_pair_pixels<K>(g, in_lo, in_hi);
  for_pixel_groups(g.width, in_lo, in_hi, [&](int64_t k, auto group, auto border)
                                              MOBILEFUSE_LAMBDA_INLINE {
    gx_row_pair_group<T, K, decltype(group)::value, decltype(border)::value>(
        rows, gx_row0 + c0, gx_row1 + c0, k, g, lanes, [&](int t) { return wv[t]; });
  });
}

// The same for the channels [c_lo, c_hi): each pixel group through every channel vector in
// turn, so the rows' stores run along memory.
template <typename T, typename K>
void backward_gx_row_pair_all(const T* const* dz_rows, T* gx_row0, T* gx_row1, const T* w_taps,
                              const Geometry& g, int64_t c_lo, int64_t c_hi) {
  const int64_t C = g.channels;
  int64_t in_lo, in_hi;
  interior_row_pair_pixels<K>(g, in_lo, in_hi);
  for_pixel_groups(g.width, in_lo, in_hi, [&](int64_t k, auto group, auto border)
                                              MOBILEFUSE_LAMBDA_INLINE {
    for_channel_vectors<T>(c_lo, c_hi, [&](int64_t c0, int64_t cnt, auto full)
                                           MOBILEFUSE_LAMBDA_INLINE {
      const Lanes<T, decltype(full)::value> lanes{cnt};
      const T* rows[K::kh + 1];
      MOBILEFUSE_UNROLL
      for (int r = 0; r <= K::kh; ++r) rows[r] = dz_rows[r] ? dz_rows[r] + c0 : nullptr;
      gx_row_pair_group<T, K, decltype(group)::value, decltype(border)::value>(
          rows, gx_row0 + c0, gx_row1 + c0, k, g, lanes,
          [&](int t) { return lanes.load(w_taps + t * C + c0); });
    });
  });
}

// dz rows one grad_x row reads span (kh-1)*dh/sh + 1; one more is being written.
inline int64_t dz_ring_rows(const Geometry& g) { return (g.kh - 1) * g.dh / g.sh + 2; }

// grad_x rows at least this wide take each pixel group through every channel vector
// (backward_gx_row_pair_all, backward_gx_row_pairs_all); narrower rows go one vector at a
// time, which keeps that vector's weights in registers for the whole row. (grad_x alone,
// interleaved on a 2-core Xeon at batch 8: C72 56x56 1.64 -> 0.92 ms, C32 112x112 2.35 ->
// 1.44, C144 56x56 stride 2 1.42 -> 0.83, C576 14x14 stride 2 0.27 -> 0.24; C384 14x14 alike;
// C960 7x7 0.20 -> 0.21, hence the limit.)
constexpr int64_t kGxWalkAllWidth = 14;

// Per-thread state of the NHWC backward: the row scratch and, with an activation and grad_x,
// the ring of dz rows.
template <typename T>
struct BandScratch {
  RowScratch<T> row;
  std::vector<T> dz_ring;
  BandScratch(const Geometry& g, bool ring)
      : row(g), dz_ring(ring ? dz_ring_rows(g) * g.out_w * g.channels : 0) {}
};

// Band `band` of `bands` of one NHWC image (grad gn, input xn, grad_x gxn): recomputes z for
// its output rows, turns grad into dz, sums its share of the weight and bias gradients into
// `part` ((taps + 1) x C, zeroed here; null when neither is asked for), and writes the grad_x
// rows of its part of the input as soon as the dz rows they read exist. dz lives in a ring of
// the last few rows (grad itself when there is no activation), so grad and x are read once
// and dz never goes to memory. A band's grad_x rows may read dz rows of the next or previous
// band: those are recomputed (not summed again). Only the channels [c_lo, c_hi) are touched
// (of `part` too, which the caller zeroes).
template <typename T, typename K, Act kAct>
void backward_nhwc_band(const T* gn, const T* xn, const T* w_taps, const T* bias, T* gxn,
                        T* part, const Geometry& g, GradMask mask, int64_t band, int64_t bands,
                        int64_t c_lo, int64_t c_hi, BandScratch<T>& s) {
  const int64_t C = g.channels;
  const bool sums = part != nullptr;
  const bool ring = !s.dz_ring.empty();
  const int64_t ring_rows = dz_ring_rows(g);
  int64_t ow_lo, ow_hi;
  interior_columns(g, ow_lo, ow_hi);
  const int64_t row_len = g.out_w * C;
  std::vector<const T*>& rows = s.row.rows;  // input rows (dz pass) or dz rows (grad_x pass)
  const int64_t o0 = band * g.out_h / bands, o1 = (band + 1) * g.out_h / bands;
  const int64_t i0 = band == 0 ? 0 : std::min(g.height, o0 * g.sh);
  const int64_t i1 = band == bands - 1 ? g.height : std::min(g.height, o1 * g.sh);
  // The last output row grad_x row ih reads.
  auto last_read = [&](int64_t ih) { return std::min(g.out_h - 1, (ih + g.ph) / g.sh); };
  // dz rows: the band's own, and those its grad_x rows read.
  int64_t r_lo = sums ? o0 : g.out_h, r_hi = sums ? o1 : 0;
  if (mask.input && i1 > i0) {
    const int64_t first = i0 + g.ph - (g.kh - 1) * g.dh;
    r_lo = std::min(r_lo, first <= 0 ? 0 : (first + g.sh - 1) / g.sh);
    r_hi = std::max(r_hi, last_read(i1 - 1) + 1);
  }
  auto dz_row = [&](int64_t oh) -> const T* {
    return ring ? s.dz_ring.data() + (oh % ring_rows) * row_len : gn + oh * row_len;
  };
  int64_t ih = i0;
  // Stride and dilation 1 with a compile-time kernel: grad_x rows in pairs, a row waiting for
  // the next dz row when its pair needs it (the ring's kh + 1 rows still hold all it reads).
  bool gx_pairs = false;
  if constexpr (kGxRowPairs<K>) gx_pairs = g.sh == 1 && g.dh == 1;
  auto emit_gx = [&](int64_t upto) {  // grad_x rows whose dz rows are all <= upto
    for (; ih < i1 && last_read(ih) <= upto; ++ih) {
      if constexpr (kGxRowPairs<K>) {
        if (gx_pairs && ih + 1 < i1) {
          if (last_read(ih + 1) > upto) return;  // its pair's last dz row comes next
          const T* pair_rows[K::kh + 1];
          for (int64_t k = 0; k <= K::kh; ++k) {
            const int64_t r = ih + g.ph + 1 - k;
            pair_rows[k] = r >= 0 && r < g.out_h ? dz_row(r) : nullptr;
          }
          T* gx_row = gxn + ih * g.width * C;
          if (g.width >= kGxWalkAllWidth) {
            backward_gx_row_pair_all<T, K>(pair_rows, gx_row, gx_row + g.width * C, w_taps, g,
                                           c_lo, c_hi);
          } else {
            for_channel_vectors<T>(c_lo, c_hi, [&](int64_t c0, int64_t cnt, auto full) {
              backward_gx_row_pair<T, K, decltype(full)::value>(
                  pair_rows, gx_row, gx_row + g.width * C, w_taps, g, c0, cnt);
            });
          }
          ++ih;
          continue;
        }
      }
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t r = ih + g.ph - i * g.dh;
        rows[i] = r >= 0 && r % g.sh == 0 && r / g.sh < g.out_h ? dz_row(r / g.sh) : nullptr;
      }
      T* gx_row = gxn + ih * g.width * C;
      if constexpr (K::sw == 2 && K::kh > 0) {
        if (g.pw == PairWindow<K, 1>::pw && g.width >= kGxWalkAllWidth) {
          backward_gx_row_pairs_all<T, K>(rows.data(), gx_row, w_taps, g, c_lo, c_hi);
          continue;
        }
      }
      for_channel_vectors<T>(c_lo, c_hi, [&](int64_t c0, int64_t cnt, auto full) {
        backward_gx_row<T, K, decltype(full)::value>(rows.data(), gx_row, w_taps, g, c0, cnt,
                                                     s.row.taps);
      });
    }
  };
  for (int64_t oh = r_lo; oh < r_hi; ++oh) {
    const bool own = sums && oh >= o0 && oh < o1;
    if (own || ring) {
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t ihx = oh * g.sh - g.ph + i * g.dh;
        rows[i] = ihx >= 0 && ihx < g.height ? xn + ihx * g.width * C : nullptr;
      }
      T* dzr = ring ? s.dz_ring.data() + (oh % ring_rows) * row_len : nullptr;
      const T* grow = gn + oh * row_len;
      for_channel_vectors<T>(c_lo, c_hi, [&](int64_t c0, int64_t cnt, auto full) {
        backward_dz_row<T, K, kAct, decltype(full)::value>(rows.data(), grow, dzr, w_taps, bias,
                                                           part, g, c0, cnt, own, mask, ring,
                                                           ow_lo, ow_hi, s.row.taps);
      });
    }
    if (mask.input) emit_gx(oh);
  }
  if (mask.input) emit_gx(g.out_h);  // rows no output row reads, or past the band's dz rows
}

// Adds block partial sums in a fixed order, in double, into gw (C, taps) and gb (C,) as
// `mask` asks. Block b's sum of tap t (t == taps: the bias) for channel c sits at
// b * block_stride + t * tap_stride + channel_at(c). Every element sums its blocks in block
// order from 0.0, walking the blocks along memory (vectorized, threads over the elements):
// the same numbers as the per-channel loop of chains of dependent scalar adds on one thread
// it replaced (channels_last backward at batch 8, 2 threads: C960 7x7 0.47-0.51 -> 0.30-0.44
// ms, C576 14x14 stride 2 0.35-0.41 -> 0.33-0.34 ms).
template <typename T, typename ChannelAt>
void reduce_partials(const std::vector<T>& part, int64_t blocks, int64_t block_stride,
                     int64_t tap_stride, ChannelAt channel_at, const Geometry& g, T* gw, T* gb,
                     GradMask mask) {
  const int64_t taps = g.taps();
  std::vector<double> total(block_stride, 0.0);
  at::parallel_for(0, block_stride, 2048, [&](int64_t begin, int64_t end) {
    double* __restrict acc = total.data();
    for (int64_t b = 0; b < blocks; ++b) {
      const T* __restrict src = part.data() + b * block_stride;
      for (int64_t i = begin; i < end; ++i) acc[i] += static_cast<double>(src[i]);
    }
  });
  for (int64_t c = 0; c < g.channels; ++c) {
    const double* base = total.data() + channel_at(c);
    if (mask.weight) {
      for (int64_t t = 0; t < taps; ++t) gw[c * taps + t] = static_cast<T>(base[t * tap_stride]);
    }
    if (mask.bias) gb[c] = static_cast<T>(base[taps * tap_stride]);
  }
}

// Bands of output rows over all images, one task per band and channel tile; the weight and
// bias partial sums of the bands are added in a fixed order.
template <typename T, typename K, Act kAct>
void backward_nhwc_fixed(const T* grad, const T* x, const T* w_taps, const T* bias, T* gx, T* gw,
                         T* gb, const Geometry& g, GradMask mask) {
  const int64_t C = g.channels, taps = g.taps();
  const int64_t bands = bands_per_image(g), blocks = g.batch * bands;
  const bool sums = mask.weight || mask.bias;
  const bool ring = kAct != Act::kNone && mask.input;
  // The ring counts toward a tile's rows: with tiles sized for L1, leaving it out took the
  // backward of C144 56x56 (stride 1, batch 8) to 2.3-2.6x the forward's time (1.7x with it).
  const int64_t tile = tile_channels<T>(g, ring ? dz_ring_rows(g) : 0);
  const int64_t tiles = (C + tile - 1) / tile;
  std::vector<T> dw_part(sums ? blocks * (taps + 1) * C : 0);  // [block][taps + bias][C]
  const int64_t image = g.height * g.width * C, out_image = g.out_h * g.out_w * C;
  at::parallel_for(0, blocks * tiles, 1, [&](int64_t begin, int64_t end) {
    BandScratch<T> scratch(g, ring);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / tiles, n = b / bands, t = task % tiles;
      backward_nhwc_band<T, K, kAct>(grad + n * out_image, x + n * image, w_taps, bias,
                                     gx ? gx + n * image : nullptr,
                                     sums ? dw_part.data() + b * (taps + 1) * C : nullptr, g,
                                     mask, b % bands, bands, t * tile,
                                     std::min(C, (t + 1) * tile), scratch);
    }
  });
  if (sums) {  // dw_part is [block][taps + bias][C]
    reduce_partials(dw_part, blocks, (taps + 1) * C, C, [](int64_t c) { return c; }, g, gw, gb,
                    mask);
  }
}

template <typename T>
void backward_nhwc(const T* grad, const T* x, const T* w_taps, const T* bias, T* gx, T* gw,
                   T* gb, const Geometry& g, Act act, GradMask mask) {
  with_fixed<T>(g, act, [&](auto k, auto a) {
    backward_nhwc_fixed<T, decltype(k), decltype(a)::value>(grad, x, w_taps, bias, gx, gw, gb, g,
                                                            mask);
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace depthwise
}  // namespace mobilefuse
