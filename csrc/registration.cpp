// Op schemas (defined once, here) and the pybind11 module that carries what the
// dispatcher cannot: build information.
#include <torch/library.h>
#include <pybind11/pybind11.h>

#include <string>

#include "build_config.h"

#ifdef MOBILEFUSE_WITH_CUDA
#include <cuda_runtime_api.h>

#include "cuda/launchers.h"
#endif

TORCH_LIBRARY(mobilefuse, m) {
  m.def("hardswish(Tensor x) -> Tensor");
  m.def("hardswish_backward(Tensor grad_out, Tensor x) -> Tensor");
  m.def("hardsigmoid(Tensor x) -> Tensor");
  m.def("hardsigmoid_backward(Tensor grad_out, Tensor x) -> Tensor");
  // The backward of channel_shuffle(x, g) is channel_shuffle(grad, C // g).
  m.def("channel_shuffle(Tensor x, int groups) -> Tensor");
  // channel_shuffle(cat((a, b), 1), 2) without the concatenation; a and b of one shape. Its
  // backward is channel_shuffle(grad, C // 2) split in halves.
  m.def("concat_shuffle(Tensor a, Tensor b) -> Tensor");
  // Inference only (no autograd): concat_shuffle(a, b).chunk(2, 1) with each chunk written as
  // a dense channels_last tensor (4-D a and b), so the next ShuffleNetV2 unit reads both halves
  // in place. CPU; mobilefuse.nn.ShuffleStage calls it when no gradient is recorded.
  m.def("concat_shuffle_chunks(Tensor a, Tensor b) -> (Tensor, Tensor)");
  // Inference only (no autograd): F.max_pool2d(x, kernel, stride, padding) with dilation 1,
  // floor mode and no indices, written channels_last; CPU. mobilefuse.nn.MaxPool2d calls it
  // when no gradient is recorded.
  m.def("max_pool2d(Tensor x, int[2] kernel, int[2] stride, int[2] padding) -> Tensor");
  // act(conv2d(x, weight, bias, groups=C)); activation is "none", "relu", "relu6",
  // "hardswish" or "silu". Padding is symmetric per dimension.
  m.def("depthwise_conv2d(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
        "int[2] dilation, str activation) -> Tensor");
  // Gradients (input, weight, bias) for the ones output_mask asks for; the others (and the bias
  // gradient when bias is None) come back empty. Recomputes the pre-activation from x.
  m.def("depthwise_conv2d_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor? bias, "
        "int[2] stride, int[2] padding, int[2] dilation, str activation, bool[3] output_mask) "
        "-> (Tensor, Tensor, Tensor)");
  // Squeeze-and-excitation's heavy passes (the excitation on (N, C) runs through torch):
  // per-(n, c) sums over H and W of x (of x * y when y is given), float32 (float64 for
  // float64); and x * scale[n, c] (+ shift[n, c]) in x's dtype and layout.
  m.def("se_channel_sum(Tensor x, Tensor? y) -> Tensor");
  m.def("se_channel_affine(Tensor x, Tensor scale, Tensor? shift) -> Tensor");
  // Inference only (no autograd): the whole squeeze_excite(x, w_reduce (R, C), b_reduce,
  // w_expand (C, R), b_expand, activation, gate) in one call, the excitation in C++; CPU.
  m.def("se_inference(Tensor x, Tensor w_reduce, Tensor? b_reduce, Tensor w_expand, "
        "Tensor? b_expand, str activation, str gate) -> Tensor");
  // act(batch_norm(x)) with given batch statistics (mean, invstd per channel; weight and bias
  // optional), x's dtype and layout; and its backward through the batch statistics (as
  // native_batch_norm_backward in training mode) with the activation's derivative recomputed
  // from x. Masked-out gradients come back empty. CPU; the fused block's training path.
  // out_scale (N, C) multiplies the output per image and channel (squeeze-and-excitation's
  // gate); grad_scale and grad_shift (N, C) map the incoming gradient first (grad * scale +
  // shift: the gate's and the pool's gradients), so neither mapped tensor is written.
  m.def("batch_norm_activation(Tensor x, Tensor mean, Tensor invstd, Tensor? weight, "
        "Tensor? bias, str activation, Tensor? out_scale=None) -> Tensor");
  m.def("batch_norm_activation_backward(Tensor grad_out, Tensor x, Tensor mean, Tensor invstd, "
        "Tensor? weight, Tensor? bias, str activation, bool[3] output_mask, "
        "Tensor? grad_scale=None, Tensor? grad_shift=None) -> (Tensor, Tensor, Tensor)");
  // BatchNorm's batch statistics: (mean, invstd = 1 / sqrt(biased var + eps)) per channel
  // over N, H and W, float32 (float64 for float64); updates running_mean and running_var
  // (unbiased) with momentum as nn.BatchNorm2d does in training, where given. CPU; the fused
  // block's training path.
  m.def("batch_norm_statistics(Tensor x, Tensor(a!)? running_mean, Tensor(b!)? running_var, "
        "float momentum, float eps) -> (Tensor, Tensor)");
  // Inference only (no autograd): squeeze_excite(depthwise_conv2d(x, ...), w_reduce (R, C),
  // b_reduce, w_expand (C, R), b_expand, se_activation, gate) with the pool taken in the
  // depthwise kernel's epilogue; CPU.
  m.def("depthwise_squeeze_excite(Tensor x, Tensor weight, Tensor? bias, int[2] stride, "
        "int[2] padding, int[2] dilation, str activation, Tensor w_reduce, Tensor? b_reduce, "
        "Tensor w_expand, Tensor? b_expand, str se_activation, str gate) -> Tensor");
  // Inference only (no autograd): depthwise_squeeze_excite's result on
  // act_e(conv1x1(x, expand_weight (C, C_in[, 1, 1]), expand_bias)) with the expanded map kept
  // in cache row by row, never written; the squeeze-and-excitation optional (no w_reduce and
  // w_expand: none). CPU.
  m.def("expand_depthwise(Tensor x, Tensor expand_weight, Tensor? expand_bias, "
        "str expand_activation, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
        "int[2] dilation, str activation, Tensor? w_reduce, Tensor? b_reduce, Tensor? w_expand, "
        "Tensor? b_expand, str se_activation, str gate) -> Tensor");
}

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
#if defined(__clang__)
  info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  info["compiler"] = std::string("gcc ") + __VERSION__;
#else
  info["compiler"] = std::string("unknown");
#endif
#ifdef _OPENMP
  info["openmp"] = static_cast<int>(_OPENMP);
#else
  info["openmp"] = pybind11::none();
#endif
  info["vector_isa"] = std::string(MOBILEFUSE_VECTOR_ISA);
  info["avx512_kernels"] = MOBILEFUSE_HAS_AVX512_KERNELS;
#ifdef MOBILEFUSE_WITH_CUDA
  info["cuda"] = true;
  info["cuda_version"] = std::to_string(CUDART_VERSION / 1000) + "." +
                         std::to_string((CUDART_VERSION % 1000) / 10);
  info["cuda_archs"] = std::string(mobilefuse::cuda::compiled_archs());
#else
  info["cuda"] = false;
  info["cuda_version"] = pybind11::none();
  info["cuda_archs"] = pybind11::none();
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "mobilefuse compiled kernels; the ops live under torch.ops.mobilefuse";
  m.def("build_info", &build_info,
        "Compiler, OpenMP, CPU vector ISA and CUDA settings this extension was built with.");
}
