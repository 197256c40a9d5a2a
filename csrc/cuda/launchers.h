// Host entry points of the CUDA kernels. This header (and the .cu files behind it)
// includes no torch header, so `nvcc -c` can check the kernels on any machine with
// a CUDA toolkit, with or without a CUDA build of torch.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace mobilefuse::cuda {

enum class FloatType { kFloat32, kFloat64, kFloat16, kBFloat16 };
enum class Activation { kHardSwish, kHardSigmoid };

// y[i] = act(x[i]) for i < n; x and y are dense arrays of `type`.
cudaError_t activation_forward(Activation act, FloatType type, const void* x, void* y,
                               int64_t n, cudaStream_t stream);

// grad_in[i] = act'(x[i]) * grad_out[i].
cudaError_t activation_backward(Activation act, FloatType type, const void* grad_out,
                                const void* x, void* grad_in, int64_t n, cudaStream_t stream);

// out viewed as (outer, C, inner) with out[o, j*g + i, :] = x[o, i*cpg + j, :];
// contiguous input is (N, C, H*W), channels_last input is (N*H*W, C, 1).
cudaError_t channel_shuffle(const void* x, void* out, int64_t outer, int64_t channels,
                            int64_t inner, int64_t groups, int64_t element_size,
                            cudaStream_t stream);

// The SM archs the kernels were compiled for, e.g. "900" or "800,900".
const char* compiled_archs();

}  // namespace mobilefuse::cuda
