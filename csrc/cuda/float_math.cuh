// Float types of the CUDA kernels: the accumulation type of each storage type (float, double
// for double) and the conversions to and from it (round to nearest even on the way back).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace mobilefuse::cuda {

template <typename T> struct AccumulateOf { using type = float; };
template <> struct AccumulateOf<double> { using type = double; };
template <typename T> using accumulate_t = typename AccumulateOf<T>::type;

__device__ __forceinline__ float widen(float v) { return v; }
__device__ __forceinline__ double widen(double v) { return v; }
__device__ __forceinline__ float widen(__half v) { return __half2float(v); }
__device__ __forceinline__ float widen(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T narrow(accumulate_t<T> v);
template <> __device__ __forceinline__ float narrow<float>(float v) { return v; }
template <> __device__ __forceinline__ double narrow<double>(double v) { return v; }
template <> __device__ __forceinline__ __half narrow<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 narrow<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// A clamp that lets NaN through, as torch's clamp does (fmin/fmax would drop it).
template <typename A> __device__ __forceinline__ A clamp_nan(A v, A lo, A hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

}  // namespace mobilefuse::cuda
