// Squeeze-and-excitation's heavy passes on CUDA: per-(n, c) sums over H×W (of x, or of x*y)
// reduced in a fixed tree (reproducible bits), and the per-(n, c) affine map x*scale + shift
// over a grid-stride loop.
#include "float_math.cuh"
#include "launch_config.cuh"
#include "launchers.h"

namespace mobilefuse::cuda {
namespace {

constexpr int kSumThreads = 256;
// channels_last: a block covers 32 consecutive channels (coalesced) x 8 rows of pixels.
constexpr int kChannelTile = 32;
constexpr int kPixelRows = 8;

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// One block per (n, c) plane of an NCHW tensor.
template <typename T>
__global__ void sum_planes_kernel(const T* __restrict__ x, const T* __restrict__ y,
                                  accumulate_t<T>* __restrict__ out, int64_t p) {
  using A = accumulate_t<T>;
  __shared__ A partial[kSumThreads / 32];
  const int64_t base = int64_t{blockIdx.x} * p;
  A acc = 0;
  for (int64_t j = threadIdx.x; j < p; j += blockDim.x) {
    const A v = widen(x[base + j]);
    acc += y == nullptr ? v : v * widen(y[base + j]);
  }
  acc = warp_sum(acc);
  if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = acc;
  __syncthreads();
  if (threadIdx.x < 32) {
    acc = threadIdx.x < (blockDim.x >> 5) ? partial[threadIdx.x] : A(0);
    acc = warp_sum(acc);
    if (threadIdx.x == 0) out[blockIdx.x] = acc;
  }
}

// grid (channel tiles, n); block (kChannelTile, kPixelRows) over an NHWC tensor.
template <typename T>
__global__ void sum_pixels_kernel(const T* __restrict__ x, const T* __restrict__ y,
                                  accumulate_t<T>* __restrict__ out, int64_t c, int64_t p) {
  using A = accumulate_t<T>;
  __shared__ A partial[kPixelRows][kChannelTile];
  const int64_t n = blockIdx.y;
  const int64_t ch = int64_t{blockIdx.x} * kChannelTile + threadIdx.x;
  A acc = 0;
  if (ch < c) {
    for (int64_t q = threadIdx.y; q < p; q += kPixelRows) {
      const int64_t i = (n * p + q) * c + ch;
      const A v = widen(x[i]);
      acc += y == nullptr ? v : v * widen(y[i]);
    }
  }
  partial[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && ch < c) {
    A sum = 0;
#pragma unroll
    for (int r = 0; r < kPixelRows; ++r) sum += partial[r][threadIdx.x];
    out[n * c + ch] = sum;
  }
}

template <typename T>
__global__ void affine_kernel(const T* __restrict__ x, const accumulate_t<T>* __restrict__ scale,
                              const accumulate_t<T>* __restrict__ shift, T* __restrict__ out,
                              int64_t total, int64_t c, int64_t p, bool channels_last) {
  using A = accumulate_t<T>;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t n = i / (p * c);
    const int64_t ch = channels_last ? i % c : (i / p) % c;
    const int64_t nc = n * c + ch;
    A v = widen(x[i]) * scale[nc];
    if (shift != nullptr) v += shift[nc];
    out[i] = narrow<T>(v);
  }
}

template <typename T>
cudaError_t launch_sum(const void* x, const void* y, void* out, int64_t n, int64_t c, int64_t p,
                       bool channels_last, cudaStream_t stream) {
  const T* xp = static_cast<const T*>(x);
  const T* yp = static_cast<const T*>(y);
  auto* op = static_cast<accumulate_t<T>*>(out);
  if (channels_last) {
    const dim3 grid(static_cast<unsigned>((c + kChannelTile - 1) / kChannelTile),
                    static_cast<unsigned>(n));
    sum_pixels_kernel<T><<<grid, dim3(kChannelTile, kPixelRows), 0, stream>>>(xp, yp, op, c, p);
  } else {
    sum_planes_kernel<T><<<static_cast<unsigned>(n * c), kSumThreads, 0, stream>>>(xp, yp, op, p);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_affine(const void* x, const void* scale, const void* shift, void* out,
                          int64_t n, int64_t c, int64_t p, bool channels_last,
                          cudaStream_t stream) {
  const int64_t total = n * c * p;
  affine_kernel<T><<<grid_for(total), kThreads, 0, stream>>>(
      static_cast<const T*>(x), static_cast<const accumulate_t<T>*>(scale),
      static_cast<const accumulate_t<T>*>(shift), static_cast<T*>(out), total, c, p,
      channels_last);
  return cudaGetLastError();
}

}  // namespace

cudaError_t se_channel_sum(FloatType type, const void* x, const void* y, void* out, int64_t n,
                           int64_t c, int64_t p, bool channels_last, cudaStream_t stream) {
  if (n * c == 0) return cudaSuccess;
  switch (type) {
    case FloatType::kFloat32: return launch_sum<float>(x, y, out, n, c, p, channels_last, stream);
    case FloatType::kFloat64: return launch_sum<double>(x, y, out, n, c, p, channels_last, stream);
    case FloatType::kFloat16: return launch_sum<__half>(x, y, out, n, c, p, channels_last, stream);
    case FloatType::kBFloat16:
      return launch_sum<__nv_bfloat16>(x, y, out, n, c, p, channels_last, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t se_channel_affine(FloatType type, const void* x, const void* scale,
                              const void* shift, void* out, int64_t n, int64_t c, int64_t p,
                              bool channels_last, cudaStream_t stream) {
  if (n * c * p == 0) return cudaSuccess;
  switch (type) {
    case FloatType::kFloat32:
      return launch_affine<float>(x, scale, shift, out, n, c, p, channels_last, stream);
    case FloatType::kFloat64:
      return launch_affine<double>(x, scale, shift, out, n, c, p, channels_last, stream);
    case FloatType::kFloat16:
      return launch_affine<__half>(x, scale, shift, out, n, c, p, channels_last, stream);
    case FloatType::kBFloat16:
      return launch_affine<__nv_bfloat16>(x, scale, shift, out, n, c, p, channels_last, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace mobilefuse::cuda
