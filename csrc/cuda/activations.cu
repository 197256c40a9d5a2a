// Hard-swish / hard-sigmoid forward and backward: 16-byte vector loads and
// stores, grid-stride loops, math in float (double for float64), multiplying by
// 1/6 and 1/3 instead of dividing.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "float_math.cuh"
#include "launch_config.cuh"
#include "launchers.h"

namespace mobilefuse::cuda {
namespace {

struct HardSwishOp {
  template <typename M> __device__ __forceinline__ static M forward(M x) {
    return x * clamp_nan(x + M(3), M(0), M(6)) * M(1.0 / 6.0);
  }
  template <typename M> __device__ __forceinline__ static M backward(M g, M x) {
    // torch's branches: 0 up to -3, g from 3 on.
    if (x <= M(-3)) return M(0);
    if (x >= M(3)) return g;
    return g * (x * M(1.0 / 3.0) + M(0.5));
  }
};

struct HardSigmoidOp {
  template <typename M> __device__ __forceinline__ static M forward(M x) {
    return clamp_nan(x + M(3), M(0), M(6)) * M(1.0 / 6.0);
  }
  template <typename M> __device__ __forceinline__ static M backward(M g, M x) {
    return (x > M(-3) && x < M(3)) ? g * M(1.0 / 6.0) : M(0);
  }
};

template <typename Op, typename T, int VEC>
__global__ void activation_forward_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n) {
  using M = accumulate_t<T>;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  const int64_t first = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  const int64_t packs = n / VEC;
  const auto* xv = reinterpret_cast<const Pack<T, VEC>*>(x);
  auto* yv = reinterpret_cast<Pack<T, VEC>*>(y);
  for (int64_t i = first; i < packs; i += stride) {
    Pack<T, VEC> in = xv[i];
    Pack<T, VEC> out;
#pragma unroll
    for (int k = 0; k < VEC; ++k) out.v[k] = narrow<T>(Op::forward(widen(in.v[k])));
    yv[i] = out;
  }
  for (int64_t i = packs * VEC + first; i < n; i += stride) {
    y[i] = narrow<T>(Op::forward(widen(x[i])));
  }
}

template <typename Op, typename T, int VEC>
__global__ void activation_backward_kernel(const T* __restrict__ g, const T* __restrict__ x,
                                           T* __restrict__ gx, int64_t n) {
  using M = accumulate_t<T>;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  const int64_t first = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  const int64_t packs = n / VEC;
  const auto* gv = reinterpret_cast<const Pack<T, VEC>*>(g);
  const auto* xv = reinterpret_cast<const Pack<T, VEC>*>(x);
  auto* ov = reinterpret_cast<Pack<T, VEC>*>(gx);
  for (int64_t i = first; i < packs; i += stride) {
    Pack<T, VEC> gi = gv[i];
    Pack<T, VEC> xi = xv[i];
    Pack<T, VEC> out;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      out.v[k] = narrow<T>(Op::backward(widen(gi.v[k]), widen(xi.v[k])));
    }
    ov[i] = out;
  }
  for (int64_t i = packs * VEC + first; i < n; i += stride) {
    gx[i] = narrow<T>(Op::backward(widen(g[i]), widen(x[i])));
  }
}

template <typename Op, typename T>
cudaError_t launch_forward(const void* x, void* y, int64_t n, cudaStream_t stream) {
  constexpr int VEC = 16 / sizeof(T);
  const T* xp = static_cast<const T*>(x);
  T* yp = static_cast<T*>(y);
  if (aligned16(x) && aligned16(y)) {
    activation_forward_kernel<Op, T, VEC><<<grid_for(n / VEC + 1), kThreads, 0, stream>>>(xp, yp, n);
  } else {
    activation_forward_kernel<Op, T, 1><<<grid_for(n), kThreads, 0, stream>>>(xp, yp, n);
  }
  return cudaGetLastError();
}

template <typename Op, typename T>
cudaError_t launch_backward(const void* g, const void* x, void* gx, int64_t n,
                            cudaStream_t stream) {
  constexpr int VEC = 16 / sizeof(T);
  const T* gp = static_cast<const T*>(g);
  const T* xp = static_cast<const T*>(x);
  T* op = static_cast<T*>(gx);
  if (aligned16(g) && aligned16(x) && aligned16(gx)) {
    activation_backward_kernel<Op, T, VEC><<<grid_for(n / VEC + 1), kThreads, 0, stream>>>(gp, xp, op, n);
  } else {
    activation_backward_kernel<Op, T, 1><<<grid_for(n), kThreads, 0, stream>>>(gp, xp, op, n);
  }
  return cudaGetLastError();
}

template <typename Op>
cudaError_t forward_for_type(FloatType type, const void* x, void* y, int64_t n, cudaStream_t s) {
  switch (type) {
    case FloatType::kFloat32: return launch_forward<Op, float>(x, y, n, s);
    case FloatType::kFloat64: return launch_forward<Op, double>(x, y, n, s);
    case FloatType::kFloat16: return launch_forward<Op, __half>(x, y, n, s);
    case FloatType::kBFloat16: return launch_forward<Op, __nv_bfloat16>(x, y, n, s);
  }
  return cudaErrorInvalidValue;
}

template <typename Op>
cudaError_t backward_for_type(FloatType type, const void* g, const void* x, void* gx, int64_t n,
                              cudaStream_t s) {
  switch (type) {
    case FloatType::kFloat32: return launch_backward<Op, float>(g, x, gx, n, s);
    case FloatType::kFloat64: return launch_backward<Op, double>(g, x, gx, n, s);
    case FloatType::kFloat16: return launch_backward<Op, __half>(g, x, gx, n, s);
    case FloatType::kBFloat16: return launch_backward<Op, __nv_bfloat16>(g, x, gx, n, s);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

#define MOBILEFUSE_STR2(...) #__VA_ARGS__
#define MOBILEFUSE_STR(...) MOBILEFUSE_STR2(__VA_ARGS__)
const char* compiled_archs() {
#ifdef __CUDA_ARCH_LIST__
  return MOBILEFUSE_STR(__CUDA_ARCH_LIST__);
#else
  return "unknown";
#endif
}

cudaError_t activation_forward(Activation act, FloatType type, const void* x, void* y, int64_t n,
                               cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  return act == Activation::kHardSwish ? forward_for_type<HardSwishOp>(type, x, y, n, stream)
                                       : forward_for_type<HardSigmoidOp>(type, x, y, n, stream);
}

cudaError_t activation_backward(Activation act, FloatType type, const void* grad_out,
                                const void* x, void* grad_in, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  return act == Activation::kHardSwish
             ? backward_for_type<HardSwishOp>(type, grad_out, x, grad_in, n, stream)
             : backward_for_type<HardSigmoidOp>(type, grad_out, x, grad_in, n, stream);
}

}  // namespace mobilefuse::cuda
