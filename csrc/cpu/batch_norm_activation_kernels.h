// The passes of BatchNorm + activation (see batch_norm_activation.cpp) on raw pointers, float
// or double. channels_last walks rows of C channels, vectorized over C; NCHW walks planes, one
// scalar per plane. Compiled once per vector ISA (ATen's CPU_CAPABILITY names the namespace):
// silu's exponential makes these passes compute-bound at AVX2 width.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <type_traits>
#include <utility>
#include <vector>

#include "activation_vec.h"

namespace mobilefuse {
namespace batch_norm {

using depthwise::Act;

struct Shape {
  int64_t batch, channels, spatial;
  bool channels_last;
  // Runs of values that share their per-channel constants' layout: channels_last rows (C
  // values, one per channel) or NCHW planes (H*W values of one channel).
  int64_t runs() const { return channels_last ? batch * spatial : batch * channels; }
  int64_t run_length() const { return channels_last ? channels : spatial; }
};

// An optional per-(n, c) affine map v * scale[n, c] + shift[n, c] ((N, C) arrays; scale null:
// none; shift may be null): squeeze-and-excitation's gate on the forward's output, and on
// the backward's incoming gradient with the pool's gradient as the shift.
template <typename T>
struct ImageAffine {
  const T* scale = nullptr;
  const T* shift = nullptr;
  explicit operator bool() const { return scale != nullptr; }
};

// Values in one chunk of channels_last rows: a chunk is summed by one thread, and chunks are
// added in order, so the sums do not depend on the thread count.
constexpr int64_t kChunkValues = 16384;

inline namespace CPU_CAPABILITY {

// Calls body(offset, lanes) over [0, count) one vector at a time, the last one partial.
template <typename T, typename F>
MOBILEFUSE_ALWAYS_INLINE void for_vectors(int64_t count, F body) {
  constexpr int64_t kStep = at::vec::Vectorized<T>::size();
  int64_t j = 0;
  for (; j + kStep <= count; j += kStep) body(j, kStep);
  if (j < count) body(j, count - j);
}

// A per-channel constant along one run: loaded per lane (channels_last row) or broadcast
// (NCHW plane).
template <typename T>
struct Constant {
  using Vec = at::vec::Vectorized<T>;
  const T* base;
  bool per_lane;
  MOBILEFUSE_ALWAYS_INLINE Vec at(int64_t j, int64_t lanes) const {
    return per_lane ? Vec::loadu(base + j, lanes) : Vec(base[0]);
  }
};

// ImageAffine's constants along run r (see Shape::runs).
template <typename T>
std::pair<Constant<T>, Constant<T>> along(const ImageAffine<T>& a, const Shape& s, int64_t r) {
  const int64_t at = s.channels_last ? (r / s.spatial) * s.channels : r;
  return {Constant<T>{a.scale + at, s.channels_last},
          Constant<T>{a.shift == nullptr ? nullptr : a.shift + at, s.channels_last}};
}

// v * k + b, b absent when its base is null.
template <typename T>
MOBILEFUSE_ALWAYS_INLINE at::vec::Vectorized<T> apply_affine(
    at::vec::Vectorized<T> v, const std::pair<Constant<T>, Constant<T>>& kb, int64_t j,
    int64_t lanes) {
  v = v * kb.first.at(j, lanes);
  return kb.second.base == nullptr ? v : v + kb.second.at(j, lanes);
}

// g = grad * act'(x * scale + shift), the gradient reaching the normalized values.
template <typename T, Act kAct>
MOBILEFUSE_ALWAYS_INLINE at::vec::Vectorized<T> activation_gradient(
    at::vec::Vectorized<T> g, at::vec::Vectorized<T> x, Constant<T> scale, Constant<T> shift,
    int64_t j, int64_t lanes) {
  if constexpr (kAct == Act::kNone) {
    return g;
  } else {
    return depthwise::act_backward(kAct, g, x * scale.at(j, lanes) + shift.at(j, lanes));
  }
}

// Calls body(act as a compile-time constant, run r, channel offset c of r's constants) for
// every run, the runs split over threads.
template <typename F>
void for_each_run(const Shape& s, Act act, F body) {
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(s.run_length(), 1));
  depthwise::with_act(act, [&](auto a) {
    at::parallel_for(0, s.runs(), grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) body(a, r, s.channels_last ? 0 : r % s.channels);
    });
  });
}

// out = act(x * scale + shift), then times out_scale[n, c] where given.
template <typename T>
void forward(const T* x, const T* scale, const T* shift, T* out, const Shape& s, Act act,
             ImageAffine<T> out_scale) {
  using Vec = at::vec::Vectorized<T>;
  const int64_t length = s.run_length();
  for_each_run(s, act, [&](auto a, int64_t r, int64_t c) {
    constexpr Act kAct = decltype(a)::value;
    const Constant<T> k{scale + c, s.channels_last}, b{shift + c, s.channels_last};
    const T* xr = x + r * length;
    T* yr = out + r * length;
    if (out_scale) {
      const auto o = along(out_scale, s, r);
      for_vectors<T>(length, [&](int64_t j, int64_t lanes) {
        const Vec z = Vec::loadu(xr + j, lanes) * k.at(j, lanes) + b.at(j, lanes);
        apply_affine(depthwise::act_forward(kAct, z), o, j, lanes).store(yr + j, lanes);
      });
      return;
    }
    for_vectors<T>(length, [&](int64_t j, int64_t lanes) {
      const Vec z = Vec::loadu(xr + j, lanes) * k.at(j, lanes) + b.at(j, lanes);
      depthwise::act_forward(kAct, z).store(yr + j, lanes);
    });
  });
}

// Channel blocks of up to this many vectors keep both sums in registers (32 registers with
// AVX-512, 16 with AVX2).
#ifdef CPU_CAPABILITY_AVX512
constexpr int64_t kBlockVecs = 8;
#else
constexpr int64_t kBlockVecs = 4;
#endif

// Calls f(std::integral_constant<int64_t, n>) for n in 1..kBlockVecs.
template <typename F>
MOBILEFUSE_ALWAYS_INLINE void with_vector_count(int64_t n, F f) {
  switch (n) {
    case 1: return f(std::integral_constant<int64_t, 1>());
    case 2: return f(std::integral_constant<int64_t, 2>());
    case 3: return f(std::integral_constant<int64_t, 3>());
#ifdef CPU_CAPABILITY_AVX512
    case 4: return f(std::integral_constant<int64_t, 4>());
    case 5: return f(std::integral_constant<int64_t, 5>());
    case 6: return f(std::integral_constant<int64_t, 6>());
    case 7: return f(std::integral_constant<int64_t, 7>());
#endif
    default: return f(std::integral_constant<int64_t, kBlockVecs>());
  }
}

// channels_last rows are cut into chunks whose size depends on the shape only: per-chunk
// results combined in chunk order do not depend on the thread count.
inline int64_t rows_per_chunk(const Shape& s) {
  return std::max<int64_t>(1, kChunkValues / std::max<int64_t>(s.channels, 1));
}
inline int64_t chunk_count(const Shape& s) {
  return (s.batch * s.spatial + rows_per_chunk(s) - 1) / rows_per_chunk(s);
}
// The rows [r0, r1) of chunk q.
inline std::pair<int64_t, int64_t> chunk_bounds(const Shape& s, int64_t q) {
  const int64_t chunk = rows_per_chunk(s);
  return {q * chunk, std::min(s.batch * s.spatial, (q + 1) * chunk)};
}

// Calls block(q, r0, r1, c0, count, nv) for each chunk q of channels_last rows ([r0, r1)) and
// each block of `count` channels from c0 (nv vectors, a compile-time constant), the chunks
// split over threads. A block sweeps the chunk's rows with its sums in registers (kept in
// memory, they would stall on stores the streaming loads alias) while the chunk stays in L2.
template <typename T, typename F>
void for_each_chunk_block(const Shape& s, F block) {
  using Vec = at::vec::Vectorized<T>;
  const int64_t C = s.channels;
  at::parallel_for(0, chunk_count(s), 1, [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q) {
      const auto [r0, r1] = chunk_bounds(s, q);
      for (int64_t c0 = 0; c0 < C; c0 += kBlockVecs * Vec::size()) {
        const int64_t count = std::min<int64_t>(kBlockVecs * Vec::size(), C - c0);
        with_vector_count((count + Vec::size() - 1) / Vec::size(),
                          [&](auto nv) { block(q, r0, r1, c0, count, nv); });
      }
    }
  });
}

// Sums of g and g * (x - mean) over rows [r0, r1) of `count` channels (kNV vectors, the last
// one partial) starting at grad, x, ... (row stride C), written to out_g and out_gx. With
// kPrologue the incoming gradient is first mapped by pre (its arrays offset to these
// channels; rows of `spatial` pixels per image).
template <typename T, Act kAct, int64_t kNV, bool kPrologue>
void sum_block(const T* grad, const T* x, const T* scale, const T* shift, const T* mean,
               int64_t C, int64_t r0, int64_t r1, int64_t count, T* out_g, T* out_gx,
               ImageAffine<T> pre, int64_t spatial) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t kStep = Vec::size();
  const int64_t last = count - (kNV - 1) * kStep;  // lanes of the last vector
  Vec k[kNV], b[kNV], m[kNV], acc_g[kNV], acc_gx[kNV];
  for (int64_t v = 0; v < kNV; ++v) {
    const int64_t lanes = v + 1 < kNV ? kStep : last;
    k[v] = Vec::loadu(scale + v * kStep, lanes);
    b[v] = Vec::loadu(shift + v * kStep, lanes);
    m[v] = Vec::loadu(mean + v * kStep, lanes);
    acc_g[v] = acc_gx[v] = Vec(0);
  }
  for (int64_t r = r0; r < r1; ++r) {
    const T* gr = grad + r * C;
    const T* xr = x + r * C;
    for (int64_t v = 0; v < kNV; ++v) {
      const int64_t lanes = v + 1 < kNV ? kStep : last;
      const Vec xv = Vec::loadu(xr + v * kStep, lanes);
      Vec g = Vec::loadu(gr + v * kStep, lanes);
      if constexpr (kPrologue) {
        const int64_t at = (r / spatial) * C + v * kStep;
        g = g * Vec::loadu(pre.scale + at, lanes);
        if (pre.shift != nullptr) g = g + Vec::loadu(pre.shift + at, lanes);
      }
      if constexpr (kAct != Act::kNone) {
        g = depthwise::act_backward(kAct, g, xv * k[v] + b[v]);
      }
      // Lanes past `lanes` load as zero and add nothing.
      acc_g[v] += g;
      acc_gx[v] += g * (xv - m[v]);
    }
  }
  for (int64_t v = 0; v < kNV; ++v) {
    const int64_t lanes = v + 1 < kNV ? kStep : last;
    acc_g[v].store(out_g + v * kStep, lanes);
    acc_gx[v].store(out_gx + v * kStep, lanes);
  }
}

// Per channel: sum_g = sum of g and sum_gx = sum of g * (x - mean) (C values each), g the
// incoming gradient mapped by pre (where given) and through the activation.
template <typename T>
void gradient_sums(const T* grad, const T* x, const T* scale, const T* shift, const T* mean,
                   double* sum_g, double* sum_gx, const Shape& s, Act act,
                   ImageAffine<T> pre) {
  using Vec = at::vec::Vectorized<T>;
  const int64_t C = s.channels;
  std::fill(sum_g, sum_g + C, 0.0);
  std::fill(sum_gx, sum_gx + C, 0.0);
  depthwise::with_act(act, [&](auto a) {
    constexpr Act kAct = decltype(a)::value;
    if (s.channels_last) {
      // Chunk q's sums of g (C values), then of g * (x - mean) (C values).
      const int64_t chunks = chunk_count(s);
      std::vector<T> partial(chunks * 2 * C, T(0));
      for_each_chunk_block<T>(s, [&](int64_t q, int64_t r0, int64_t r1, int64_t c0,
                                     int64_t count, auto nv) {
        T* out = partial.data() + q * 2 * C;
        if (pre) {
          const ImageAffine<T> at{pre.scale + c0, pre.shift == nullptr ? nullptr : pre.shift + c0};
          sum_block<T, kAct, decltype(nv)::value, true>(
              grad + c0, x + c0, scale + c0, shift + c0, mean + c0, C, r0, r1, count, out + c0,
              out + C + c0, at, s.spatial);
        } else {
          sum_block<T, kAct, decltype(nv)::value, false>(
              grad + c0, x + c0, scale + c0, shift + c0, mean + c0, C, r0, r1, count, out + c0,
              out + C + c0, pre, s.spatial);
        }
      });
      for (int64_t q = 0; q < chunks; ++q) {
        for (int64_t c = 0; c < C; ++c) {
          sum_g[c] += partial[q * 2 * C + c];
          sum_gx[c] += partial[q * 2 * C + C + c];
        }
      }
      return;
    }
    const int64_t P = s.spatial;
    at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        const Constant<T> k{scale + c, false}, b{shift + c, false}, m{mean + c, false};
        for (int64_t n = 0; n < s.batch; ++n) {
          const T* gp = grad + (n * C + c) * P;
          const T* xp = x + (n * C + c) * P;
          const T gs = pre ? pre.scale[n * C + c] : T(1);
          const T gt = pre && pre.shift != nullptr ? pre.shift[n * C + c] : T(0);
          Vec acc_g(0), acc_gx(0);
          for_vectors<T>(P, [&](int64_t j, int64_t lanes) {
            const Vec xv = Vec::loadu(xp + j, lanes);
            // Masked-off lanes must stay zero: the shift would make them nonzero.
            Vec g = Vec::loadu(gp + j, lanes);
            if (pre) g = Vec::set(Vec(0), g * Vec(gs) + Vec(gt), lanes);
            g = activation_gradient<T, kAct>(g, xv, k, b, j, lanes);
            // Lanes past `lanes` load as zero and add nothing.
            acc_g += g;
            acc_gx += g * (xv - m.at(j, lanes));
          });
          auto add = [](Vec u, Vec v) { return u + v; };
          sum_g[c] += at::vec::vec_reduce_all<T>(add, acc_g);
          sum_gx[c] += at::vec::vec_reduce_all<T>(add, acc_gx);
        }
      }
    });
  });
}

// Rows [r0, r1) of `count` channels (kNV vectors, the last one partial) at x (row stride C):
// their mean per channel, then the sum of squared deviations from it, both with the sums in
// registers; the second sweep reads the rows from cache. Written to out_mean and out_m2.
template <typename T, int64_t kNV>
void statistics_block(const T* x, int64_t C, int64_t r0, int64_t r1, int64_t count,
                      T* out_mean, T* out_m2) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t kStep = Vec::size();
  const int64_t last = count - (kNV - 1) * kStep;  // lanes of the last vector
  Vec acc[kNV];
  for (int64_t v = 0; v < kNV; ++v) acc[v] = Vec(0);
  for (int64_t r = r0; r < r1; ++r) {
    const T* xr = x + r * C;
    for (int64_t v = 0; v < kNV; ++v) {
      // Lanes past `lanes` load as zero and add nothing.
      acc[v] += Vec::loadu(xr + v * kStep, v + 1 < kNV ? kStep : last);
    }
  }
  const Vec rows(static_cast<T>(r1 - r0));
  Vec mean[kNV];
  for (int64_t v = 0; v < kNV; ++v) {
    mean[v] = acc[v] / rows;
    acc[v] = Vec(0);
  }
  for (int64_t r = r0; r < r1; ++r) {
    const T* xr = x + r * C;
    for (int64_t v = 0; v < kNV; ++v) {
      const Vec d = Vec::loadu(xr + v * kStep, v + 1 < kNV ? kStep : last) - mean[v];
      acc[v] += d * d;
    }
  }
  for (int64_t v = 0; v < kNV; ++v) {
    const int64_t lanes = v + 1 < kNV ? kStep : last;
    mean[v].store(out_mean + v * kStep, lanes);
    acc[v].store(out_m2 + v * kStep, lanes);
  }
}

// Per channel over the batch and the image: the mean and M2, the sum of squared deviations
// from it (C values each). Each chunk of channels_last rows (NCHW plane) gets its own mean
// and M2 in two sweeps, the second from cache; the parts are combined in double in a fixed
// order (M2 = sum of M2_q + n_q (mean_q - mean)^2), so the result does not depend on the
// thread count and has no cancellation of large sums of squares.
template <typename T>
void statistics(const T* x, double* mean, double* m2, const Shape& s) {
  using Vec = at::vec::Vectorized<T>;
  const int64_t C = s.channels;
  std::fill(mean, mean + C, 0.0);
  std::fill(m2, m2 + C, 0.0);
  if (s.channels_last) {
    const int64_t rows = s.batch * s.spatial;
    if (rows == 0) return;
    // Chunk q's means (C values), then its M2 (C values).
    const int64_t chunks = chunk_count(s);
    std::vector<T> partial(chunks * 2 * C, T(0));
    for_each_chunk_block<T>(s, [&](int64_t q, int64_t r0, int64_t r1, int64_t c0, int64_t count,
                                   auto nv) {
      statistics_block<T, decltype(nv)::value>(x + c0, C, r0, r1, count,
                                               partial.data() + q * 2 * C + c0,
                                               partial.data() + q * 2 * C + C + c0);
    });
    auto rows_of = [&](int64_t q) {
      const auto [r0, r1] = chunk_bounds(s, q);
      return static_cast<double>(r1 - r0);
    };
    for (int64_t q = 0; q < chunks; ++q) {
      for (int64_t c = 0; c < C; ++c) mean[c] += rows_of(q) * partial[q * 2 * C + c];
    }
    for (int64_t c = 0; c < C; ++c) mean[c] /= static_cast<double>(rows);
    for (int64_t q = 0; q < chunks; ++q) {
      for (int64_t c = 0; c < C; ++c) {
        const double d = static_cast<double>(partial[q * 2 * C + c]) - mean[c];
        m2[c] += partial[q * 2 * C + C + c] + rows_of(q) * d * d;
      }
    }
    return;
  }
  const int64_t P = s.spatial;
  if (P == 0 || s.batch == 0) return;
  auto add = [](Vec u, Vec v) { return u + v; };
  at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> plane_mean(s.batch), plane_m2(s.batch);
    for (int64_t c = begin; c < end; ++c) {
      for (int64_t n = 0; n < s.batch; ++n) {
        const T* xp = x + (n * C + c) * P;
        Vec acc(0);
        // Lanes past `lanes` load as zero and add nothing.
        for_vectors<T>(P, [&](int64_t j, int64_t lanes) { acc += Vec::loadu(xp + j, lanes); });
        const T mu = at::vec::vec_reduce_all<T>(add, acc) / static_cast<T>(P);
        Vec dev(0);
        for_vectors<T>(P, [&](int64_t j, int64_t lanes) {
          // Masked-off lanes would contribute mu^2: keep them zero.
          const Vec d = Vec::set(Vec(0), Vec::loadu(xp + j, lanes) - Vec(mu), lanes);
          dev += d * d;
        });
        plane_mean[n] = mu;
        plane_m2[n] = at::vec::vec_reduce_all<T>(add, dev);
      }
      double m = 0.0;
      for (int64_t n = 0; n < s.batch; ++n) m += plane_mean[n];
      m /= static_cast<double>(s.batch);
      double q = 0.0;
      for (int64_t n = 0; n < s.batch; ++n) {
        const double d = plane_mean[n] - m;
        q += plane_m2[n] + static_cast<double>(P) * d * d;
      }
      mean[c] = m;
      m2[c] = q;
    }
  });
}

// out = g * alpha + (x - mean) * beta + gamma per channel: BatchNorm's input gradient, the
// batch statistics' terms in beta and gamma. The mean comes off x first: where it is large
// against the spread, x * beta and mean * beta are both far larger than their difference, and
// folding mean * beta into gamma would leave the result float rounding of those terms.
template <typename T>
void input_gradient(const T* grad, const T* x, const T* scale, const T* shift, const T* alpha,
                    const T* beta, const T* mean, const T* gamma, T* out, const Shape& s,
                    Act act, ImageAffine<T> pre) {
  using Vec = at::vec::Vectorized<T>;
  const int64_t length = s.run_length();
  const bool pl = s.channels_last;
  for_each_run(s, act, [&](auto a, int64_t r, int64_t c) {
    constexpr Act kAct = decltype(a)::value;
    const Constant<T> k{scale + c, pl}, b{shift + c, pl}, al{alpha + c, pl}, be{beta + c, pl},
        mu{mean + c, pl}, ga{gamma + c, pl};
    const T* xr = x + r * length;
    const T* gr = grad + r * length;
    T* outr = out + r * length;
    auto row = [&](auto mapped) {
      for_vectors<T>(length, [&](int64_t j, int64_t lanes) {
        const Vec xv = Vec::loadu(xr + j, lanes);
        const Vec g = activation_gradient<T, kAct>(mapped(Vec::loadu(gr + j, lanes), j, lanes),
                                                   xv, k, b, j, lanes);
        (g * al.at(j, lanes) + (xv - mu.at(j, lanes)) * be.at(j, lanes) + ga.at(j, lanes))
            .store(outr + j, lanes);
      });
    };
    if (pre) {
      const auto kb = along(pre, s, r);
      row([&](Vec g, int64_t j, int64_t lanes) { return apply_affine(g, kb, j, lanes); });
    } else {
      row([](Vec g, int64_t, int64_t) { return g; });
    }
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace batch_norm
}  // namespace mobilefuse
