// Host entry points of the CUDA kernels. This header (and the .cu files behind it)
// includes no torch header, so `nvcc -c` can check the kernels on any machine with
// a CUDA toolkit, with or without a CUDA build of torch.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
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

// ---- depthwise_conv2d: act(conv2d(x, weight, bias, groups=C)).

enum class ConvActivation { kNone, kReLU, kReLU6, kHardSwish, kSiLU };

// x (n, c, h, w), weight (c, 1, kh, kw) contiguous, bias (c,) or null, output
// (n, c, out_h, out_w). x, the output, grad_out and grad_x are dense NCHW, or dense NHWC
// when channels_last. Every size must fit in an int (the binding checks).
struct DepthwiseGeometry {
  int64_t n, c, h, w;
  int64_t out_h, out_w;
  int64_t kh, kw;
  int64_t stride_h, stride_w;
  int64_t pad_h, pad_w;  // symmetric
  int64_t dil_h, dil_w;
  bool channels_last;
};

cudaError_t depthwise_conv2d_forward(FloatType type, ConvActivation act,
                                     const DepthwiseGeometry& geometry, const void* x,
                                     const void* weight, const void* bias, void* out,
                                     cudaStream_t stream);

// Bytes of device workspace (256-byte aligned) depthwise_conv2d_backward needs for the
// gradients asked for: dz = grad_out * act'(z) when act != kNone, and the per-block
// partial sums of grad_w / grad_b. Depends on the shapes only.
size_t depthwise_conv2d_backward_workspace(FloatType type, ConvActivation act,
                                           const DepthwiseGeometry& geometry, bool need_grad_x,
                                           bool need_grad_w, bool need_grad_b);

// Writes each non-null gradient: grad_x like x, grad_w (c, kh, kw), grad_b (c,). A null
// grad_x / grad_w / grad_b is not computed; pass grad_b only when bias is given. The
// workspace must hold depthwise_conv2d_backward_workspace(...) bytes for the same
// non-null set. grad_w and grad_b are summed in a fixed order (reproducible bits).
cudaError_t depthwise_conv2d_backward(FloatType type, ConvActivation act,
                                      const DepthwiseGeometry& geometry, const void* grad_out,
                                      const void* x, const void* weight, const void* bias,
                                      void* grad_x, void* grad_w, void* grad_b, void* workspace,
                                      size_t workspace_bytes, cudaStream_t stream);

// ---- squeeze-and-excitation's heavy passes. x, y and out are dense NCHW, or dense NHWC
// when channels_last; p = H*W. Per-(n, c) values (sums, scale, shift) are (n, c) arrays of
// float (double for kFloat64).

// sums[n*c + k] = sum over the p positions of x (times y when y is non-null), reduced in a
// fixed order.
cudaError_t se_channel_sum(FloatType type, const void* x, const void* y, void* sums, int64_t n,
                           int64_t c, int64_t p, bool channels_last, cudaStream_t stream);

// out = x * scale[n, c] + shift[n, c] (shift may be null).
cudaError_t se_channel_affine(FloatType type, const void* x, const void* scale,
                              const void* shift, void* out, int64_t n, int64_t c, int64_t p,
                              bool channels_last, cudaStream_t stream);

// The SM archs the kernels were compiled for, e.g. "900" or "800,900".
const char* compiled_archs();

}  // namespace mobilefuse::cuda
