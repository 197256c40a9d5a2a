// Hard-swish and hard-sigmoid on CPU: one flat pass over dense storage,
// vectorized with at::vec (half/bfloat16 computed in float), split over threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include "../layout.h"

namespace mobilefuse {
namespace {

// Kernels are math on Vectorized<opmath>; each struct is one activation. They multiply by
// 1/6 and 1/3 rather than divide: a vector divide costs more than the memory traffic here,
// and the result stays within one rounding of the quotient.
struct HardSwish {
  template <typename Vec>
  static Vec forward(Vec x) {
    const Vec zero(0), three(3), six(6), sixth(1.0 / 6.0);
    return x * at::vec::minimum(at::vec::maximum(x + three, zero), six) * sixth;
  }
  // Same branches as torch's hardswish_backward: 0 up to -3, g*(x/3+1/2) inside, g from 3.
  template <typename Vec>
  static Vec backward(Vec g, Vec x) {
    const Vec zero(0), half(0.5), three(3), neg_three(-3), third(1.0 / 3.0);
    Vec inside = g * (x * third + half);
    Vec r = Vec::blendv(inside, g, x >= three);
    return Vec::blendv(r, zero, x <= neg_three);
  }
};

struct HardSigmoid {
  template <typename Vec>
  static Vec forward(Vec x) {
    const Vec zero(0), three(3), six(6), sixth(1.0 / 6.0);
    return at::vec::minimum(at::vec::maximum(x + three, zero), six) * sixth;
  }
  template <typename Vec>
  static Vec backward(Vec g, Vec x) {
    const Vec zero(0), three(3), neg_three(-3), sixth(1.0 / 6.0);
    return Vec::blendv(zero, g * sixth, (x > neg_three) & (x < three));
  }
};

template <typename Act>
at::Tensor forward_cpu(const at::Tensor& x, const char* op) {
  check_activation_input(op, x);
  TORCH_CHECK(x.device().is_cpu(), op, ": expected a CPU tensor, got ", x.device());
  at::Tensor out = at::empty_like(x);
  const at::Tensor in = dense_like(x, out);
  const int64_t n = in.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "mobilefuse_activation_forward", [&] {
    using Vec = at::vec::Vectorized<at::opmath_type<scalar_t>>;
    const scalar_t* src = in.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, at::internal::GRAIN_SIZE, [&](int64_t begin, int64_t end) {
      at::vec::map([](Vec v) { return Act::forward(v); }, dst + begin, src + begin,
                   end - begin);
    });
  });
  return out;
}

template <typename Act>
at::Tensor backward_cpu(const at::Tensor& grad_out, const at::Tensor& x, const char* op) {
  check_activation_input(op, x);
  check_same_device_dtype_shape(op, grad_out, x);
  TORCH_CHECK(x.device().is_cpu(), op, ": expected CPU tensors, got ", x.device());
  at::Tensor grad_in = at::empty_like(x);
  const at::Tensor in = dense_like(x, grad_in);
  const at::Tensor g = dense_like(grad_out, grad_in);
  const int64_t n = in.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "mobilefuse_activation_backward", [&] {
    using Vec = at::vec::Vectorized<at::opmath_type<scalar_t>>;
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* xp = in.const_data_ptr<scalar_t>();
    scalar_t* dst = grad_in.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, at::internal::GRAIN_SIZE, [&](int64_t begin, int64_t end) {
      at::vec::map2([](Vec gv, Vec xv) { return Act::backward(gv, xv); }, dst + begin,
                    gp + begin, xp + begin, end - begin);
    });
  });
  return grad_in;
}

at::Tensor hardswish_cpu(const at::Tensor& x) {
  return forward_cpu<HardSwish>(x, "hardswish");
}
at::Tensor hardswish_backward_cpu(const at::Tensor& g, const at::Tensor& x) {
  return backward_cpu<HardSwish>(g, x, "hardswish_backward");
}
at::Tensor hardsigmoid_cpu(const at::Tensor& x) {
  return forward_cpu<HardSigmoid>(x, "hardsigmoid");
}
at::Tensor hardsigmoid_backward_cpu(const at::Tensor& g, const at::Tensor& x) {
  return backward_cpu<HardSigmoid>(g, x, "hardsigmoid_backward");
}

}  // namespace

TORCH_LIBRARY_IMPL(mobilefuse, CPU, m) {
  m.impl("hardswish", &hardswish_cpu);
  m.impl("hardswish_backward", &hardswish_backward_cpu);
  m.impl("hardsigmoid", &hardsigmoid_cpu);
  m.impl("hardsigmoid_backward", &hardsigmoid_backward_cpu);
}

}  // namespace mobilefuse
