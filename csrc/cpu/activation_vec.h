// The activations the CPU kernels fuse, on at::vec vectors: act(z) and g * act'(z). Shared by
// the depthwise kernels and the BatchNorm + activation kernels. Compiled once per vector ISA
// (ATen's CPU_CAPABILITY names the namespace), like the kernels that include it.
#pragma once

#include <ATen/cpu/vec/vec.h>

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

#include <type_traits>

#include "depthwise_types.h"

// The per-group helpers must inline into the pixel loops: called, their arrays of vectors
// go through memory. GCC stops inlining them once the unrolled loops grow large.
#define MOBILEFUSE_ALWAYS_INLINE inline __attribute__((always_inline))
// The same for a lambda (after its parameter list): the pixel-group bodies.
#define MOBILEFUSE_LAMBDA_INLINE __attribute__((always_inline))

namespace mobilefuse {
namespace depthwise {
inline namespace CPU_CAPABILITY {

// 1 + exp(-z): the denominator of sigmoid and SiLU, where these kernels spend most of their
// time when the activation is SiLU. For float lanes on AVX2 / AVX-512, exp(x) = 2^n * p(f) with
// x * log2(e) = n + f, |f| <= 1/2, and p a degree-5 fit of 2^f (relative error 1.6e-7): 1.6x
// (AVX-512) and 1.4x (AVX2) faster than exp_u20 on a Zen 5 core. SiLU comes out within
// 1.5e-7 * max(1, |value|) of float64. Rounding x * log2(e) to float costs up to |x| * 4e-8
// of relative error in exp(x), which only values below 1e-6 (SiLU of z < -16) notice: up to
// 5e-6 relative there. Infinities and NaN come out as exp_u20's do: exp(+inf) = inf,
// exp(-inf) = 0, NaN stays NaN.
template <typename Vec>
MOBILEFUSE_ALWAYS_INLINE Vec one_plus_exp_neg(Vec z) {
  return Vec(1) + z.neg().exp_u20();
}

// 2^f for |f| <= 1/2 as a polynomial in f, highest power first (a relative-error fit).
constexpr float kExp2Fit[6] = {1.327816397e-03f, 9.675555862e-03f, 5.550707877e-02f,
                               2.402211875e-01f, 6.931469440e-01f, 1.000000119e+00f};

#if defined(CPU_CAPABILITY_AVX512)
MOBILEFUSE_ALWAYS_INLINE at::vec::Vectorized<float> one_plus_exp_neg(
    at::vec::Vectorized<float> z) {
  constexpr int kNearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  const __m512 t = _mm512_mul_ps(__m512(z), _mm512_set1_ps(-1.44269504088896341f));
  const __m512 n = _mm512_roundscale_ps(t, kNearest);
  // t - n without the inf - inf of a subtraction: vreduceps gives 0 for an infinite t.
  const __m512 f = _mm512_reduce_ps(t, kNearest);
  __m512 p = _mm512_set1_ps(kExp2Fit[0]);
  for (int i = 1; i < 6; ++i) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2Fit[i]));
  // vscalefps: p * 2^n, going to 0 or inf past the float range as exp does.
  return _mm512_add_ps(_mm512_set1_ps(1.f), _mm512_scalef_ps(p, n));
}
#elif defined(CPU_CAPABILITY_AVX2)
MOBILEFUSE_ALWAYS_INLINE at::vec::Vectorized<float> one_plus_exp_neg(
    at::vec::Vectorized<float> z) {
  __m256 t = _mm256_mul_ps(__m256(z), _mm256_set1_ps(-1.44269504088896341f));
  // n in [-127, 128], so the exponent bits of 2^n are 0 (the value 0) at the bottom and 255
  // (inf) at the top: exp's underflow and overflow. The constant goes first so NaN passes.
  t = _mm256_min_ps(_mm256_set1_ps(128.f), _mm256_max_ps(_mm256_set1_ps(-127.f), t));
  const __m256 n = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(t, n);
  __m256 p = _mm256_set1_ps(kExp2Fit[0]);
  for (int i = 1; i < 6; ++i) p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2Fit[i]));
  const __m256i biased = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
  const __m256 two_n = _mm256_castsi256_ps(_mm256_slli_epi32(biased, 23));
  return _mm256_fmadd_ps(p, two_n, _mm256_set1_ps(1.f));
}
#endif

// max(c, v) and min(c, v), NaN in v passing through as at::vec::maximum / minimum pass it.
// For float lanes one instruction, which returns its second operand where either is NaN,
// in place of at::vec's four (the compare for unordered lanes and the merge). (Channels_last
// depthwise forward, batch 8, 2 threads on a 2-core Zen 5, two builds alternating: 1.02-1.11x
// on the ReLU, ReLU6 and hardswish layers, e.g. C672 14x14 3x3 hardswish 0.129 -> 0.116 ms;
// the 28-layer geomean over eager 1.49-1.52x -> 1.55-1.58x.)
template <typename Vec>
MOBILEFUSE_ALWAYS_INLINE Vec max_of(Vec c, Vec v) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<Vec, at::vec::Vectorized<float>>) return _mm512_max_ps(c, v);
#elif defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<Vec, at::vec::Vectorized<float>>) return _mm256_max_ps(c, v);
#endif
  return at::vec::maximum(c, v);
}

template <typename Vec>
MOBILEFUSE_ALWAYS_INLINE Vec min_of(Vec c, Vec v) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<Vec, at::vec::Vectorized<float>>) return _mm512_min_ps(c, v);
#elif defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<Vec, at::vec::Vectorized<float>>) return _mm256_min_ps(c, v);
#endif
  return at::vec::minimum(c, v);
}

// act(z), vectorized.
template <typename Vec>
MOBILEFUSE_ALWAYS_INLINE Vec act_forward(Act act, Vec z) {
  const Vec zero(0), three(3), six(6);
  switch (act) {
    case Act::kNone: return z;
    case Act::kRelu: return max_of(zero, z);
    case Act::kRelu6: return min_of(six, max_of(zero, z));
    case Act::kHardSwish: return z * min_of(six, max_of(zero, z + three)) * Vec(1.0 / 6.0);
    case Act::kSilu: return z / one_plus_exp_neg(z);
  }
  return z;
}

// g * act'(z), with PyTorch's choices at the kinks.
template <typename Vec>
MOBILEFUSE_ALWAYS_INLINE Vec act_backward(Act act, Vec g, Vec z) {
  const Vec zero(0), three(3), neg_three(-3), six(6), one(1), half(0.5);
  switch (act) {
    case Act::kNone: return g;
    // A bitwise and, not a blend: GCC turns blendv(0, g, mask) with g fresh from memory into
    // a zero-masking load, which made BatchNorm + ReLU's backward 1.5x slower on Zen 5.
    case Act::kRelu: return g & (z > zero);
    case Act::kRelu6: return g & ((z > zero) & (z < six));
    case Act::kHardSwish: {
      Vec inside = g * (z * Vec(1.0 / 3.0) + half);
      return Vec::blendv(Vec::blendv(inside, g, z >= three), zero, z <= neg_three);
    }
    case Act::kSilu: {
      Vec s = one / one_plus_exp_neg(z);
      return g * s * (one + z * (one - s));
    }
  }
  return g;
}

// Calls f(std::integral_constant<Act, act>): the activation as a compile-time constant.
template <typename F>
inline void with_act(Act act, F f) {
  switch (act) {
    case Act::kNone: return f(std::integral_constant<Act, Act::kNone>());
    case Act::kRelu: return f(std::integral_constant<Act, Act::kRelu>());
    case Act::kRelu6: return f(std::integral_constant<Act, Act::kRelu6>());
    case Act::kHardSwish: return f(std::integral_constant<Act, Act::kHardSwish>());
    case Act::kSilu: return f(std::integral_constant<Act, Act::kSilu>());
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace depthwise
}  // namespace mobilefuse
