// Channel shuffle on CUDA as a gather over (outer, C, inner) units. When rows
// (inner * element_size bytes) split into 16-byte units the copy moves 16 bytes
// per thread; channels_last input (inner == 1) moves single elements.
#include <cstdint>

#include "launch_config.cuh"
#include "launchers.h"

namespace mobilefuse::cuda {
namespace {

template <typename unit_t>
__global__ void channel_shuffle_kernel(const unit_t* __restrict__ x, unit_t* __restrict__ out,
                                       int64_t total, int64_t channels, int64_t inner,
                                       int64_t groups) {
  const int64_t cpg = channels / groups;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t o = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; o < total; o += stride) {
    const int64_t i = o % inner;
    const int64_t row = o / inner;
    const int64_t oc = row % channels;
    const int64_t outer = row / channels;
    const int64_t ic = (oc % groups) * cpg + oc / groups;
    out[o] = x[(outer * channels + ic) * inner + i];
  }
}

template <typename unit_t>
cudaError_t launch(const void* x, void* out, int64_t outer, int64_t channels, int64_t inner,
                   int64_t groups, cudaStream_t stream) {
  const int64_t total = outer * channels * inner;
  channel_shuffle_kernel<unit_t><<<grid_for(total), kThreads, 0, stream>>>(
      static_cast<const unit_t*>(x), static_cast<unit_t*>(out), total, channels, inner, groups);
  return cudaGetLastError();
}

}  // namespace

cudaError_t channel_shuffle(const void* x, void* out, int64_t outer, int64_t channels,
                            int64_t inner, int64_t groups, int64_t element_size,
                            cudaStream_t stream) {
  if (outer * channels * inner == 0) return cudaSuccess;
  const int64_t row_bytes = inner * element_size;
  // Widest unit that tiles a row and keeps every access aligned.
  for (int64_t unit = 16; unit >= 1; unit /= 2) {
    const bool fits = row_bytes % unit == 0 &&
                      (reinterpret_cast<uintptr_t>(x) % unit) == 0 &&
                      (reinterpret_cast<uintptr_t>(out) % unit) == 0;
    if (!fits) continue;
    const int64_t units = row_bytes / unit;
    switch (unit) {
      case 16: return launch<uint4>(x, out, outer, channels, units, groups, stream);
      case 8: return launch<uint2>(x, out, outer, channels, units, groups, stream);
      case 4: return launch<uint32_t>(x, out, outer, channels, units, groups, stream);
      case 2: return launch<uint16_t>(x, out, outer, channels, units, groups, stream);
      case 1: return launch<uint8_t>(x, out, outer, channels, units, groups, stream);
    }
  }
  return cudaErrorInvalidValue;
}

}  // namespace mobilefuse::cuda
