// Depthwise convolution on CPU, with bias and activation fused into the forward and the
// activation's derivative fused into the backward (the pre-activation is recomputed).
//
// NCHW works plane by plane: each input plane is copied once into a zero-padded buffer split
// into `stride_w` column phases, so every tap of every output row reads a contiguous run and
// the inner loops are plain vector FMAs. NHWC vectorizes over channels. Float16/bfloat16 run
// through float32 copies (float32 accumulation); float64 is computed in float64.
//
// The backward walks each channel (NCHW) or 64-byte channel block (NHWC) on one thread, so
// the weight and bias gradients are sums in a fixed order: deterministic, no atomics.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../layout.h"

namespace mobilefuse {
namespace {

enum class Act { kNone, kRelu, kRelu6, kHardSwish, kSilu };

Act parse_activation(c10::string_view name) {
  if (name == "none") return Act::kNone;
  if (name == "relu") return Act::kRelu;
  if (name == "relu6") return Act::kRelu6;
  if (name == "hardswish") return Act::kHardSwish;
  if (name == "silu") return Act::kSilu;
  TORCH_CHECK(false, "depthwise_conv2d: activation must be none, relu, relu6, hardswish or silu, "
              "got ", name);
}

// act(z), vectorized.
template <typename Vec>
inline Vec act_forward(Act act, Vec z) {
  const Vec zero(0), three(3), six(6), one(1);
  switch (act) {
    case Act::kNone: return z;
    case Act::kRelu: return at::vec::maximum(z, zero);
    case Act::kRelu6: return at::vec::minimum(at::vec::maximum(z, zero), six);
    case Act::kHardSwish:
      return z * at::vec::minimum(at::vec::maximum(z + three, zero), six) * Vec(1.0 / 6.0);
    case Act::kSilu: return z / (one + z.neg().exp());
  }
  return z;
}

// g * act'(z), with PyTorch's choices at the kinks.
template <typename Vec>
inline Vec act_backward(Act act, Vec g, Vec z) {
  const Vec zero(0), three(3), neg_three(-3), six(6), one(1), half(0.5);
  switch (act) {
    case Act::kNone: return g;
    case Act::kRelu: return Vec::blendv(zero, g, z > zero);
    case Act::kRelu6: return Vec::blendv(zero, g, (z > zero) & (z < six));
    case Act::kHardSwish: {
      Vec inside = g * (z * Vec(1.0 / 3.0) + half);
      return Vec::blendv(Vec::blendv(inside, g, z >= three), zero, z <= neg_three);
    }
    case Act::kSilu: {
      Vec s = one / (one + z.neg().exp());
      return g * s * (one + z * (one - s));
    }
  }
  return g;
}

struct Geometry {
  int64_t batch, channels, height, width, out_h, out_w;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
  // NCHW padded plane: rows, column phases, and the stride of one phase row, which leaves
  // room for a full vector load past its last column (those lanes are never stored).
  int64_t padded_h() const { return height + 2 * ph; }
  int64_t phase_len() const { return (width + 2 * pw + sw - 1) / sw + 16; }
  int64_t plane_buffer() const { return padded_h() * sw * phase_len(); }
  int64_t taps() const { return kh * kw; }
};

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
template <typename T>
void load_padded_plane(const T* src, const Geometry& g, T* buf) {
  const int64_t len = g.phase_len();
  std::fill(buf, buf + g.plane_buffer(), T(0));
  for (int64_t r = 0; r < g.height; ++r) {
    T* row = buf + (r + g.ph) * g.sw * len;
    const T* in = src + r * g.width;
    if (g.sw == 1) {
      std::copy(in, in + g.width, row + g.pw);
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

std::vector<Chunk> plane_chunks(const Geometry& g, int64_t width) {
  std::vector<Chunk> chunks;
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    for (int64_t ow = 0; ow < g.out_w; ow += width) {
      chunks.push_back({oh * g.out_w + ow, oh * g.sh * g.sw * g.phase_len() + ow,
                        std::min(width, g.out_w - ow)});
    }
  }
  return chunks;
}

// Where each tap reads in the phased padded plane, relative to a chunk's in_at. Computed
// once: the divisions stay out of the inner loops.
std::vector<int64_t> plane_tap_offsets(const Geometry& g) {
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

// Calls f(chunk pointer, group size) over the chunks in groups of 4, then singly.
template <typename F>
inline void for_chunk_groups(const std::vector<Chunk>& chunks, F f) {
  size_t c = 0;
  for (; c + 4 <= chunks.size(); c += 4) f(chunks.data() + c, std::integral_constant<int, 4>());
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
          act_forward(act, acc[q]).store(dst + group[q].out_at, group[q].count);
        }
      });
    }
  });
}

struct GradMask {
  bool input, weight, bias;
};

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
  void spread(const T* dz, const Geometry& g, T* z) const {
    std::fill(z, z + size(), T(0));
    for (int64_t oh = 0; oh < g.out_h; ++oh) {
      const int64_t r = oh * g.sh + row_shift;
      if (r < 0 || r >= rows) continue;
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        const int64_t col = ow * g.sw + col_shift;
        if (col >= 0 && col < stride - 16) z[r * stride + col] = dz[oh * g.out_w + ow];
      }
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
              const int64_t at = group[q].out_at;
              act_backward(act, Vec::loadu(gp + at, group[q].count), z[q])
                  .store(dz.data() + at, group[q].count);
            }
          });
          dzp = dz.data();
        }
        if (mask.weight || mask.bias) {
          Vec db_lanes(0);
          std::fill(dw_lanes.begin(), dw_lanes.end(), Vec(0));
          for (const Chunk& ch : chunks) {
            // Lanes past the row's end load as zero, so they add nothing.
            const Vec d = Vec::loadu(dzp + ch.out_at, ch.count);
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
            for (int q = 0; q < kGroup; ++q) acc[q].store(dst + group[q].out_at, group[q].count);
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

// Taps k in [lo, hi) whose input index start + k*d falls inside [0, size).
inline void tap_range(int64_t start, int64_t k, int64_t d, int64_t size, int64_t& lo,
                      int64_t& hi) {
  lo = start < 0 ? (-start + d - 1) / d : 0;
  hi = start > size - 1 ? 0 : std::min(k, (size - 1 - start) / d + 1);
  lo = std::min(lo, hi);
}

// Output columns whose every tap column lies inside the input: [lo, hi).
inline void interior_columns(const Geometry& g, int64_t& lo, int64_t& hi) {
  lo = std::min(g.out_w, (g.pw + g.sw - 1) / g.sw);
  const int64_t last = g.width - 1 + g.pw - (g.kw - 1) * g.dw;  // largest ow * sw allowed
  hi = last < 0 ? lo : std::max(lo, std::min(g.out_w, last / g.sw + 1));
}

// Pre-activation of one output pixel for one vector of channels at c0 (cnt of them valid),
// any position: taps outside the input are skipped. w_taps is (kh*kw, C).
template <typename T>
inline at::vec::Vectorized<T> conv_pixel(const T* x, const T* w_taps, at::vec::Vectorized<T> acc,
                                         const Geometry& g, int64_t n, int64_t oh, int64_t ow,
                                         int64_t c0, int64_t cnt) {
  using Vec = at::vec::Vectorized<T>;
  const int64_t C = g.channels;
  const int64_t ih0 = oh * g.sh - g.ph, iw0 = ow * g.sw - g.pw;
  int64_t i_lo, i_hi, j_lo, j_hi;
  tap_range(ih0, g.kh, g.dh, g.height, i_lo, i_hi);
  tap_range(iw0, g.kw, g.dw, g.width, j_lo, j_hi);
  for (int64_t i = i_lo; i < i_hi; ++i) {
    const T* xrow = x + ((n * g.height + ih0 + i * g.dh) * g.width) * C + c0;
    for (int64_t j = j_lo; j < j_hi; ++j) {
      acc = at::vec::fmadd(Vec::loadu(xrow + (iw0 + j * g.dw) * C, cnt),
                           Vec::loadu(w_taps + (i * g.kw + j) * C + c0, cnt), acc);
    }
  }
  return acc;
}

// kGroup horizontally adjacent interior output pixels (every tap inside the input), all
// channels. Pixel-outer, channel-inner order keeps the few input pixels they read in L1;
// independent accumulators hide the FMA latency and share each weight load.
template <typename T, int kGroup, int kKW>
inline void forward_pixels(const T* x, const T* w_taps, const T* bias, T* orow, const Geometry& g,
                           Act act, int64_t n, int64_t oh, int64_t ow) {
  // kKW > 0: the kernel width is known at compile time, so the tap loop unrolls.
  const int64_t kw = kKW > 0 ? kKW : g.kw;
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  const int64_t C = g.channels;
  const int64_t ih0 = oh * g.sh - g.ph, iw0 = ow * g.sw - g.pw;
  int64_t i_lo, i_hi;
  tap_range(ih0, g.kh, g.dh, g.height, i_lo, i_hi);
  for (int64_t c0 = 0; c0 < C; c0 += V) {
    const int64_t cnt = std::min(V, C - c0);
    const Vec bv = bias ? Vec::loadu(bias + c0, cnt) : Vec(0);
    Vec acc[kGroup];
    for (int q = 0; q < kGroup; ++q) acc[q] = bv;
    for (int64_t i = i_lo; i < i_hi; ++i) {
      const T* xr = x + ((n * g.height + ih0 + i * g.dh) * g.width + iw0) * C + c0;
      const T* wr = w_taps + i * kw * C + c0;
      for (int64_t j = 0; j < kw; ++j) {
        const Vec w = Vec::loadu(wr + j * C, cnt);
        const T* xp = xr + j * g.dw * C;
        for (int q = 0; q < kGroup; ++q) {
          acc[q] = at::vec::fmadd(Vec::loadu(xp + q * g.sw * C, cnt), w, acc[q]);
        }
      }
    }
    for (int q = 0; q < kGroup; ++q) act_forward(act, acc[q]).store(orow + (ow + q) * C + c0, cnt);
  }
}

// kGroup output pixels from ow (the first `valid` of them stored), for dilation 1 with kernel
// width and stride known at compile time: each input column of the window is loaded once per
// kernel row and reused by every pixel and tap. Columns outside the input read from `zeros`
// (C zero channels), so border pixels take the same path as interior ones.
template <typename T, int kGroup, int kKW, int kSW>
inline void forward_pixels_window(const T* x, const T* w_taps, const T* bias, const T* zeros,
                                  T* orow, const Geometry& g, Act act, int64_t n, int64_t oh,
                                  int64_t ow, int64_t valid) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  constexpr int kWindow = (kGroup - 1) * kSW + kKW;
  const int64_t C = g.channels;
  const int64_t ih0 = oh * g.sh - g.ph, iw0 = ow * kSW - g.pw;
  int64_t i_lo, i_hi;
  tap_range(ih0, g.kh, g.dh, g.height, i_lo, i_hi);
  const T* cols[7][kWindow];  // per kernel row (kh <= 7 here), the window's column pointers
  for (int64_t i = i_lo; i < i_hi; ++i) {
    const T* xr = x + (n * g.height + ih0 + i * g.dh) * g.width * C;
    for (int k = 0; k < kWindow; ++k) {
      const int64_t iw = iw0 + k;
      cols[i][k] = iw >= 0 && iw < g.width ? xr + iw * C : zeros;
    }
  }
  for (int64_t c0 = 0; c0 < C; c0 += V) {
    const int64_t cnt = std::min(V, C - c0);
    const Vec bv = bias ? Vec::loadu(bias + c0, cnt) : Vec(0);
    Vec acc[kGroup];
    for (int q = 0; q < kGroup; ++q) acc[q] = bv;
    for (int64_t i = i_lo; i < i_hi; ++i) {
      const T* wr = w_taps + i * kKW * C + c0;
      Vec column[kWindow];
      for (int k = 0; k < kWindow; ++k) column[k] = Vec::loadu(cols[i][k] + c0, cnt);
      for (int j = 0; j < kKW; ++j) {
        const Vec w = Vec::loadu(wr + j * C, cnt);
        for (int q = 0; q < kGroup; ++q) acc[q] = at::vec::fmadd(column[q * kSW + j], w, acc[q]);
      }
    }
    for (int q = 0; q < kGroup; ++q) {
      if (q < valid) act_forward(act, acc[q]).store(orow + (ow + q) * C + c0, cnt);
    }
  }
}

// The window path for a whole output row, when the geometry has one (else false).
template <typename T, int kGroup>
inline bool forward_row_window(const T* x, const T* w_taps, const T* bias, const T* zeros,
                               T* orow, const Geometry& g, Act act, int64_t n, int64_t oh) {
  if (g.dw != 1 || g.kh > 7) return false;
#define MOBILEFUSE_WINDOW(KW, SW)                                                            \
  if (g.kw == KW && g.sw == SW) {                                                            \
    for (int64_t ow = 0; ow < g.out_w; ow += kGroup) {                                       \
      forward_pixels_window<T, kGroup, KW, SW>(x, w_taps, bias, zeros, orow, g, act, n, oh, ow, \
                                               std::min<int64_t>(kGroup, g.out_w - ow));     \
    }                                                                                        \
    return true;                                                                             \
  }
  MOBILEFUSE_WINDOW(3, 1)
  MOBILEFUSE_WINDOW(3, 2)
  MOBILEFUSE_WINDOW(5, 1)
  MOBILEFUSE_WINDOW(5, 2)
  MOBILEFUSE_WINDOW(7, 1)
  MOBILEFUSE_WINDOW(7, 2)
#undef MOBILEFUSE_WINDOW
  return false;
}

// kGroup interior pixels at ow through the compile-time kernel width when there is one.
template <typename T, int kGroup>
inline void forward_group(const T* x, const T* w_taps, const T* bias, T* orow, const Geometry& g,
                          Act act, int64_t n, int64_t oh, int64_t ow) {
  switch (g.kw) {
    case 3: return forward_pixels<T, kGroup, 3>(x, w_taps, bias, orow, g, act, n, oh, ow);
    case 5: return forward_pixels<T, kGroup, 5>(x, w_taps, bias, orow, g, act, n, oh, ow);
    case 7: return forward_pixels<T, kGroup, 7>(x, w_taps, bias, orow, g, act, n, oh, ow);
    default: return forward_pixels<T, kGroup, 0>(x, w_taps, bias, orow, g, act, n, oh, ow);
  }
}

// w_taps is the weight transposed to (kh*kw, C), so a tap's channels are contiguous. Each
// task is one output row.
template <typename T>
void forward_nhwc(const T* x, const T* w_taps, const T* bias, T* out, const Geometry& g,
                  Act act) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  constexpr int kGroup = 4;
  const int64_t C = g.channels;
  int64_t ow_lo, ow_hi;
  interior_columns(g, ow_lo, ow_hi);
  at::parallel_for(0, g.batch * g.out_h, 1, [&](int64_t begin, int64_t end) {
    const std::vector<T> zeros(C + V, T(0));
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / g.out_h, oh = r % g.out_h;
      T* orow = out + r * g.out_w * C;
      if (forward_row_window<T, kGroup>(x, w_taps, bias, zeros.data(), orow, g, act, n, oh)) {
        continue;
      }
      auto border = [&](int64_t ow) {
        for (int64_t c0 = 0; c0 < C; c0 += V) {
          const int64_t cnt = std::min(V, C - c0);
          const Vec bv = bias ? Vec::loadu(bias + c0, cnt) : Vec(0);
          act_forward(act, conv_pixel(x, w_taps, bv, g, n, oh, ow, c0, cnt))
              .store(orow + ow * C + c0, cnt);
        }
      };
      int64_t ow = 0;
      for (; ow < ow_lo; ++ow) border(ow);
      for (; ow + kGroup <= ow_hi; ow += kGroup) {
        forward_group<T, kGroup>(x, w_taps, bias, orow, g, act, n, oh, ow);
      }
      for (; ow < ow_hi; ++ow) forward_pixels<T, 1, 0>(x, w_taps, bias, orow, g, act, n, oh, ow);
      for (; ow < g.out_w; ++ow) border(ow);
    }
  });
}

// Rows of output per block of the NHWC weight-gradient sums: fixed by the shape alone, so the
// blocked partial sums and their final fixed-order reduction give the same bits every run.
inline int64_t rows_per_block(const Geometry& g) {
  const int64_t rows = g.batch * g.out_h;
  return std::max<int64_t>(1, (rows + 63) / 64);
}

// Adds kGroup pixels' contribution to every weight-gradient tap: part[t][c] += sum_q d_q * x.
// The kGroup dz vectors stay in registers, so each tap costs one read-modify-write per group.
template <typename T, int kGroup>
inline void weight_grad_pixels(const T* x, const T* drow, T* part, const Geometry& g, int64_t n,
                               int64_t ih0, int64_t i_lo, int64_t i_hi, int64_t ow, int64_t j_lo,
                               int64_t j_hi) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  const int64_t C = g.channels;
  const int64_t iw0 = ow * g.sw - g.pw;
  for (int64_t c0 = 0; c0 < C; c0 += V) {
    const int64_t cnt = std::min(V, C - c0);
    Vec d[kGroup];
    for (int q = 0; q < kGroup; ++q) d[q] = Vec::loadu(drow + (ow + q) * C + c0, cnt);
    for (int64_t i = i_lo; i < i_hi; ++i) {
      const T* xr = x + ((n * g.height + ih0 + i * g.dh) * g.width + iw0) * C + c0;
      for (int64_t j = j_lo; j < j_hi; ++j) {
        T* pw = part + (i * g.kw + j) * C + c0;
        Vec acc = Vec::loadu(pw, cnt);
        const T* xp = xr + j * g.dw * C;
        for (int q = 0; q < kGroup; ++q) {
          acc = at::vec::fmadd(d[q], Vec::loadu(xp + q * g.sw * C, cnt), acc);
        }
        acc.store(pw, cnt);
      }
    }
  }
}

// Pass 1 over row blocks: dz = grad * act'(z) (into dz_out when there is an activation) and
// per-block partial sums of the weight and bias gradients. Pass 2 over input rows: grad_x
// gathered from the taps that reach each input pixel, every element written once.
template <typename T>
void backward_nhwc(const T* grad, const T* x, const T* w_taps, const T* bias, T* dz_out, T* gx,
                   T* gw, T* gb, const Geometry& g, Act act, GradMask mask) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  constexpr int kGroup = 4;
  const int64_t C = g.channels, taps = g.taps();
  const int64_t rows = g.batch * g.out_h, per_block = rows_per_block(g);
  const int64_t blocks = (rows + per_block - 1) / per_block;
  const bool sums = mask.weight || mask.bias;
  std::vector<T> dw_part(sums ? blocks * (taps + 1) * C : 0);  // [block][taps + bias][C]
  int64_t ow_lo, ow_hi;
  interior_columns(g, ow_lo, ow_hi);
  if (act != Act::kNone || sums) {
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        T* part = sums ? dw_part.data() + b * (taps + 1) * C : nullptr;
        if (sums) std::fill(part, part + (taps + 1) * C, T(0));
        for (int64_t r = b * per_block; r < std::min(rows, (b + 1) * per_block); ++r) {
          const int64_t n = r / g.out_h, oh = r % g.out_h;
          const int64_t ih0 = oh * g.sh - g.ph;
          int64_t i_lo, i_hi;
          tap_range(ih0, g.kh, g.dh, g.height, i_lo, i_hi);
          const T* grow = grad + r * g.out_w * C;
          const T* drow = grow;
          if (act != Act::kNone) {
            T* dst = dz_out + r * g.out_w * C;
            for (int64_t ow = 0; ow < g.out_w; ++ow) {
              for (int64_t c0 = 0; c0 < C; c0 += V) {
                const int64_t cnt = std::min(V, C - c0);
                const Vec bv = bias ? Vec::loadu(bias + c0, cnt) : Vec(0);
                const Vec z = conv_pixel(x, w_taps, bv, g, n, oh, ow, c0, cnt);
                act_backward(act, Vec::loadu(grow + ow * C + c0, cnt), z)
                    .store(dst + ow * C + c0, cnt);
              }
            }
            drow = dst;
          }
          if (mask.bias) {
            for (int64_t c0 = 0; c0 < C; c0 += V) {
              const int64_t cnt = std::min(V, C - c0);
              Vec acc = Vec::loadu(part + taps * C + c0, cnt);
              for (int64_t ow = 0; ow < g.out_w; ++ow) acc = acc + Vec::loadu(drow + ow * C + c0, cnt);
              acc.store(part + taps * C + c0, cnt);
            }
          }
          if (!mask.weight) continue;
          auto border = [&](int64_t ow) {
            int64_t j_lo, j_hi;
            tap_range(ow * g.sw - g.pw, g.kw, g.dw, g.width, j_lo, j_hi);
            weight_grad_pixels<T, 1>(x, drow, part, g, n, ih0, i_lo, i_hi, ow, j_lo, j_hi);
          };
          int64_t ow = 0;
          for (; ow < ow_lo; ++ow) border(ow);
          for (; ow + kGroup <= ow_hi; ow += kGroup) {
            weight_grad_pixels<T, kGroup>(x, drow, part, g, n, ih0, i_lo, i_hi, ow, 0, g.kw);
          }
          for (; ow < g.out_w; ++ow) border(ow);
        }
      }
    });
  }
  // Fixed-order reduction of the block partials, in double.
  if (sums) {
    for (int64_t c = 0; c < C; ++c) {
      for (int64_t t = 0; t <= taps; ++t) {
        double total = 0.0;
        for (int64_t b = 0; b < blocks; ++b) {
          total += static_cast<double>(dw_part[(b * (taps + 1) + t) * C + c]);
        }
        if (t < taps && mask.weight) gw[c * taps + t] = static_cast<T>(total);
        if (t == taps && mask.bias) gb[c] = static_cast<T>(total);
      }
    }
  }
  if (!mask.input) return;
  const T* dz = act != Act::kNone ? dz_out : grad;
  at::parallel_for(0, g.batch * g.height, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> tap_of(taps), dz_at(taps);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / g.height, ih = r % g.height;
      for (int64_t iw = 0; iw < g.width; ++iw) {
        // The taps that reach (ih, iw), found once per pixel rather than per channel vector.
        int64_t count = 0;
        for (int64_t i = 0; i < g.kh; ++i) {
          const int64_t oh_s = ih + g.ph - i * g.dh;  // oh * sh when tap row i reaches ih
          if (oh_s < 0 || oh_s % g.sh || oh_s / g.sh >= g.out_h) continue;
          for (int64_t j = 0; j < g.kw; ++j) {
            const int64_t ow_s = iw + g.pw - j * g.dw;
            if (ow_s < 0 || ow_s % g.sw || ow_s / g.sw >= g.out_w) continue;
            tap_of[count] = (i * g.kw + j) * C;
            dz_at[count] = ((n * g.out_h + oh_s / g.sh) * g.out_w + ow_s / g.sw) * C;
            ++count;
          }
        }
        T* dst = gx + (r * g.width + iw) * C;
        for (int64_t c0 = 0; c0 < C; c0 += V) {
          const int64_t cnt = std::min(V, C - c0);
          Vec acc(0);
          for (int64_t k = 0; k < count; ++k) {
            acc = at::vec::fmadd(Vec::loadu(w_taps + tap_of[k] + c0, cnt),
                                 Vec::loadu(dz + dz_at[k] + c0, cnt), acc);
          }
          acc.store(dst + c0, cnt);
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------
// Op entry points

void check_args(const char* op, const at::Tensor& x, const at::Tensor& weight,
                const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                at::IntArrayRef padding, at::IntArrayRef dilation) {
  TORCH_CHECK(x.dim() == 4, op, ": x must have rank 4 (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op,
              ": x must be float16, bfloat16, float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == x.size(1) && weight.size(1) == 1, op,
              ": weight must have shape (C, 1, kh, kw) with C=", x.size(1), ", got ",
              weight.sizes());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), op, ": weight dtype ",
              weight.scalar_type(), " differs from x dtype ", x.scalar_type());
  TORCH_CHECK(weight.device() == x.device(), op, ": weight is on ", weight.device(),
              " but x is on ", x.device());
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == x.size(1), op,
                ": bias must have shape (C,), got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == x.scalar_type() && bias->device() == x.device(), op,
                ": bias must match x's dtype and device");
  }
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, op,
              ": stride, padding and dilation must have 2 entries");
  TORCH_CHECK(stride[0] >= 1 && stride[1] >= 1, op, ": stride must be >= 1, got ", stride);
  TORCH_CHECK(dilation[0] >= 1 && dilation[1] >= 1, op, ": dilation must be >= 1, got ",
              dilation);
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0, op, ": padding must be >= 0, got ", padding);
  for (int d = 0; d < 2; ++d) {
    TORCH_CHECK(dilation[d] * (weight.size(2 + d) - 1) + 1 <= x.size(2 + d) + 2 * padding[d], op,
                ": the kernel is larger than the padded input");
  }
}

Geometry make_geometry(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation) {
  Geometry g{};
  g.batch = x.size(0);
  g.channels = x.size(1);
  g.height = x.size(2);
  g.width = x.size(3);
  g.kh = weight.size(2);
  g.kw = weight.size(3);
  g.sh = stride[0];
  g.sw = stride[1];
  g.ph = padding[0];
  g.pw = padding[1];
  g.dh = dilation[0];
  g.dw = dilation[1];
  g.out_h = (g.height + 2 * g.ph - g.dh * (g.kh - 1) - 1) / g.sh + 1;
  g.out_w = (g.width + 2 * g.pw - g.dw * (g.kw - 1) - 1) / g.sw + 1;
  return g;
}

// Float16/bfloat16 compute in float32; float32/float64 as they are.
at::ScalarType compute_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

at::MemoryFormat kernel_format(const at::Tensor& x) {
  return uses_channels_last(x) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// The weight as (kh*kw, C): each tap's channels contiguous, for the NHWC kernels.
at::Tensor weight_by_tap(const at::Tensor& w) {
  return w.reshape({w.size(0), w.size(2) * w.size(3)}).t().contiguous();
}

at::Tensor depthwise_conv2d_cpu(const at::Tensor& x, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation,
                                c10::string_view activation) {
  check_args("depthwise_conv2d", x, weight, bias, stride, padding, dilation);
  TORCH_CHECK(x.device().is_cpu(), "depthwise_conv2d: expected CPU tensors, got ", x.device());
  const Act act = parse_activation(activation);
  const Geometry g = make_geometry(x, weight, stride, padding, dilation);
  const at::MemoryFormat fmt = kernel_format(x);
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast;
  const at::ScalarType ct = compute_type(x);
  const at::Tensor xc = x.to(ct).contiguous(fmt);
  const at::Tensor w = nhwc ? weight_by_tap(weight.to(ct)) : weight.to(ct).contiguous();
  const at::Tensor b = bias.has_value() ? bias->to(ct).contiguous() : at::Tensor();
  at::Tensor out = at::empty({g.batch, g.channels, g.out_h, g.out_w}, xc.options(), fmt);
  if (out.numel() == 0) return out.to(x.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(ct, "mobilefuse_depthwise_conv2d", [&] {
    const scalar_t* bp = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
    if (nhwc) {
      forward_nhwc(xc.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), bp,
                   out.mutable_data_ptr<scalar_t>(), g, act);
    } else {
      forward_nchw(xc.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), bp,
                   out.mutable_data_ptr<scalar_t>(), g, act);
    }
  });
  return out.to(x.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> depthwise_conv2d_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, c10::string_view activation, std::array<bool, 3> output_mask) {
  const char* op = "depthwise_conv2d_backward";
  check_args(op, x, weight, bias, stride, padding, dilation);
  TORCH_CHECK(x.device().is_cpu() && grad_out.device().is_cpu(), op, ": expected CPU tensors");
  const Act act = parse_activation(activation);
  const Geometry g = make_geometry(x, weight, stride, padding, dilation);
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({g.batch, g.channels, g.out_h, g.out_w}), op,
              ": grad_out has shape ", grad_out.sizes(), ", expected the output's");
  TORCH_CHECK(grad_out.scalar_type() == x.scalar_type(), op, ": grad_out dtype ",
              grad_out.scalar_type(), " differs from x dtype ", x.scalar_type());
  const GradMask mask{output_mask[0], output_mask[1], output_mask[2] && bias.has_value()};
  const at::MemoryFormat fmt = kernel_format(x);
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast;
  const at::ScalarType ct = compute_type(x);
  const at::TensorOptions opts = x.options().dtype(ct);
  const at::Tensor xc = x.to(ct).contiguous(fmt);
  const at::Tensor gc = grad_out.to(ct).contiguous(fmt);
  const at::Tensor w = nhwc ? weight_by_tap(weight.to(ct)) : weight.to(ct).contiguous();
  const at::Tensor b = bias.has_value() ? bias->to(ct).contiguous() : at::Tensor();
  at::Tensor gx = mask.input ? at::empty(x.sizes(), opts.memory_format(fmt)) : at::empty({0}, opts);
  at::Tensor gw = mask.weight ? at::zeros(weight.sizes(), opts) : at::empty({0}, opts);
  at::Tensor gb = mask.bias ? at::zeros({g.channels}, opts) : at::empty({0}, opts);
  const bool work = mask.input || mask.weight || mask.bias;
  if (work && g.batch * g.channels * g.out_h * g.out_w > 0) {
    AT_DISPATCH_FLOATING_TYPES(ct, "mobilefuse_depthwise_conv2d_backward", [&] {
      const scalar_t* bp = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
      scalar_t* gxp = mask.input ? gx.mutable_data_ptr<scalar_t>() : nullptr;
      scalar_t* gwp = mask.weight ? gw.mutable_data_ptr<scalar_t>() : nullptr;
      scalar_t* gbp = mask.bias ? gb.mutable_data_ptr<scalar_t>() : nullptr;
      if (nhwc) {
        // With an activation dz differs from grad: pass 1 writes it for the grad_x pass.
        at::Tensor dz = act != Act::kNone ? at::empty_like(gc) : at::Tensor();
        scalar_t* dzp = dz.defined() ? dz.mutable_data_ptr<scalar_t>() : nullptr;
        backward_nhwc(gc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(),
                      w.const_data_ptr<scalar_t>(), bp, dzp, gxp, gwp, gbp, g, act, mask);
      } else {
        backward_nchw(gc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(),
                      w.const_data_ptr<scalar_t>(), bp, gxp, gwp, gbp, g, act, mask);
      }
    });
  } else if (mask.input) {
    gx.zero_();  // an empty output: no pixel receives gradient
  }
  const at::ScalarType out_type = x.scalar_type();
  return {gx.to(out_type), gw.to(out_type), gb.to(out_type)};
}

}  // namespace

TORCH_LIBRARY_IMPL(mobilefuse, CPU, m) {
  m.impl("depthwise_conv2d", &depthwise_conv2d_cpu);
  m.impl("depthwise_conv2d_backward", &depthwise_conv2d_backward_cpu);
}

}  // namespace mobilefuse
