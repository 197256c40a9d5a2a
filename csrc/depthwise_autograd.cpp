// Autograd for mobilefuse::depthwise_conv2d, in C++ so that a call pays no Python on the way
// to the kernel (registered from Python it cost about 5 us a call, a tenth of a 14x14 layer).
// Every device's kernel sits below it; the backward is one call of depthwise_conv2d_backward,
// which recomputes the pre-activation from x.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <string>
#include <vector>

namespace mobilefuse {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor forward_op(const at::Tensor& x, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                      at::IntArrayRef padding, at::IntArrayRef dilation,
                      c10::string_view activation) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("mobilefuse::depthwise_conv2d", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                               const std::optional<at::Tensor>&, at::IntArrayRef,
                                               at::IntArrayRef, at::IntArrayRef,
                                               c10::string_view)>();
  return op.call(x, weight, bias, stride, padding, dilation, activation);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_op(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, c10::string_view activation, std::array<bool, 3> mask) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("mobilefuse::depthwise_conv2d_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, const at::Tensor&,
              const std::optional<at::Tensor>&, at::IntArrayRef, at::IntArrayRef,
              at::IntArrayRef, c10::string_view, std::array<bool, 3>)>();
  return op.call(grad, x, weight, bias, stride, padding, dilation, activation, mask);
}

class DepthwiseConv2dFunction : public torch::autograd::Function<DepthwiseConv2dFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation,
                            c10::string_view activation) {
    at::AutoDispatchBelowADInplaceOrView below;
    const bool has_bias = bias.has_value() && bias->defined();
    // Only what the backward reads: x (to recompute the pre-activation), weight, bias.
    ctx->save_for_backward({x, weight, has_bias ? *bias : at::Tensor()});
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["activation"] = std::string(activation);
    return forward_op(x, weight, bias, stride, padding, dilation, activation);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    // The bias (saved undefined when absent) is the third differentiable input only when
    // it was given.
    const bool has_bias = saved[2].defined();
    const std::array<bool, 3> mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                   has_bias && ctx->needs_input_grad(2)};
    variable_list out(7);
    if (!mask[0] && !mask[1] && !mask[2]) return out;
    const std::vector<int64_t> stride = ctx->saved_data["stride"].toIntVector();
    const std::vector<int64_t> padding = ctx->saved_data["padding"].toIntVector();
    const std::vector<int64_t> dilation = ctx->saved_data["dilation"].toIntVector();
    const std::string activation = ctx->saved_data["activation"].toStringRef();
    const std::optional<at::Tensor> bias =
        has_bias ? std::optional<at::Tensor>(saved[2]) : std::nullopt;
    auto [gx, gw, gb] = backward_op(grads[0], saved[0], saved[1], bias, stride, padding,
                                    dilation, activation, mask);
    if (mask[0]) out[0] = gx;
    if (mask[1]) out[1] = gw;
    if (mask[2]) out[2] = gb;
    return out;
  }
};

at::Tensor depthwise_conv2d_autograd(const at::Tensor& x, const at::Tensor& weight,
                                     const std::optional<at::Tensor>& bias,
                                     at::IntArrayRef stride, at::IntArrayRef padding,
                                     at::IntArrayRef dilation, c10::string_view activation) {
  return DepthwiseConv2dFunction::apply(x, weight, bias, stride, padding, dilation, activation);
}

}  // namespace

TORCH_LIBRARY_IMPL(mobilefuse, Autograd, m) {
  m.impl("depthwise_conv2d", &depthwise_conv2d_autograd);
}

}  // namespace mobilefuse
