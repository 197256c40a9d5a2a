// Registers the CUDA kernels with the dispatcher: checks inputs, allocates
// outputs and launches on the current stream (never the default stream).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../layout.h"
#include "launchers.h"

namespace mobilefuse {
namespace {

cuda::FloatType float_type(const at::Tensor& t, const char* op) {
  switch (t.scalar_type()) {
    case at::kFloat: return cuda::FloatType::kFloat32;
    case at::kDouble: return cuda::FloatType::kFloat64;
    case at::kHalf: return cuda::FloatType::kFloat16;
    case at::kBFloat16: return cuda::FloatType::kBFloat16;
    default:
      TORCH_CHECK(false, op, ": x must be float16, bfloat16, float32 or float64, got ",
                  t.scalar_type());
  }
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

at::Tensor activation_forward_cuda(const at::Tensor& x, cuda::Activation act, const char* op) {
  check_activation_input(op, x);
  TORCH_CHECK(x.is_cuda(), op, ": expected a CUDA tensor, got ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty_like(x);
  const at::Tensor in = dense_like(x, out);
  check_launch(cuda::activation_forward(act, float_type(in, op), in.const_data_ptr(),
                                        out.mutable_data_ptr(), in.numel(),
                                        c10::cuda::getCurrentCUDAStream().stream()),
               op);
  return out;
}

at::Tensor activation_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                    cuda::Activation act, const char* op) {
  check_activation_input(op, x);
  check_same_device_dtype_shape(op, grad_out, x);
  TORCH_CHECK(x.is_cuda(), op, ": expected CUDA tensors, got ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor grad_in = at::empty_like(x);
  const at::Tensor in = dense_like(x, grad_in);
  const at::Tensor g = dense_like(grad_out, grad_in);
  check_launch(cuda::activation_backward(act, float_type(in, op), g.const_data_ptr(),
                                         in.const_data_ptr(), grad_in.mutable_data_ptr(),
                                         in.numel(), c10::cuda::getCurrentCUDAStream().stream()),
               op);
  return grad_in;
}

at::Tensor hardswish_cuda(const at::Tensor& x) {
  return activation_forward_cuda(x, cuda::Activation::kHardSwish, "hardswish");
}
at::Tensor hardswish_backward_cuda(const at::Tensor& g, const at::Tensor& x) {
  return activation_backward_cuda(g, x, cuda::Activation::kHardSwish, "hardswish_backward");
}
at::Tensor hardsigmoid_cuda(const at::Tensor& x) {
  return activation_forward_cuda(x, cuda::Activation::kHardSigmoid, "hardsigmoid");
}
at::Tensor hardsigmoid_backward_cuda(const at::Tensor& g, const at::Tensor& x) {
  return activation_backward_cuda(g, x, cuda::Activation::kHardSigmoid, "hardsigmoid_backward");
}

at::Tensor channel_shuffle_cuda(const at::Tensor& x, int64_t groups) {
  TORCH_CHECK(x.is_cuda(), "channel_shuffle: expected a CUDA tensor, got ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  ShuffleProblem p = prepare_channel_shuffle(x, groups);
  if (p.in.numel() == 0) {
    return p.out;
  }
  const int64_t outer = p.channels_last ? p.batch * p.spatial : p.batch;
  const int64_t inner = p.channels_last ? 1 : p.spatial;
  check_launch(cuda::channel_shuffle(p.in.const_data_ptr(), p.out.mutable_data_ptr(), outer,
                                     p.channels, inner, groups,
                                     static_cast<int64_t>(p.in.element_size()),
                                     c10::cuda::getCurrentCUDAStream().stream()),
               "channel_shuffle");
  return p.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mobilefuse, CUDA, m) {
  m.impl("hardswish", &hardswish_cuda);
  m.impl("hardswish_backward", &hardswish_backward_cuda);
  m.impl("hardsigmoid", &hardsigmoid_cuda);
  m.impl("hardsigmoid_backward", &hardsigmoid_backward_cuda);
  m.impl("channel_shuffle", &channel_shuffle_cuda);
}

}  // namespace mobilefuse
