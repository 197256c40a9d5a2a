// The activations the CPU kernels fuse, on at::vec vectors: act(z) and g * act'(z). Shared by
// the depthwise kernels and the BatchNorm + activation kernels. Compiled once per vector ISA
// (ATen's CPU_CAPABILITY names the namespace), like the kernels that include it.
#pragma once

#include <ATen/cpu/vec/vec.h>

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

// act(z), vectorized.
template <typename Vec>
MOBILEFUSE_ALWAYS_INLINE Vec act_forward(Act act, Vec z) {
  const Vec zero(0), three(3), six(6), one(1);
  switch (act) {
    case Act::kNone: return z;
    case Act::kRelu: return at::vec::maximum(z, zero);
    case Act::kRelu6: return at::vec::minimum(at::vec::maximum(z, zero), six);
    case Act::kHardSwish:
      return z * at::vec::minimum(at::vec::maximum(z + three, zero), six) * Vec(1.0 / 6.0);
    case Act::kSilu: return z / (one + z.neg().exp_u20());  // exp within 20 ulp, inlined
  }
  return z;
}

// g * act'(z), with PyTorch's choices at the kinks.
template <typename Vec>
MOBILEFUSE_ALWAYS_INLINE Vec act_backward(Act act, Vec g, Vec z) {
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
      Vec s = one / (one + z.neg().exp_u20());
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
