"""The Triton kernels as torch.library custom ops (``mobilefuse::triton_*``).

They are ``custom_op``s whose bodies launch the kernels, with explicit fake kernels: that
shape passes ``opcheck`` and ``torch.compile(fullgraph=True)`` on GPUs and also on CPU
tensors under ``TRITON_INTERPRET=1``. Triton is imported only when a kernel first runs.
"""

from __future__ import annotations

import torch

from mobilefuse._autograd import (
    register_activation_autograd,
    register_depthwise_autograd,
    register_shuffle_autograd,
)
from mobilefuse._checks import (
    check_float_tensor,
    check_groups,
    check_min_rank,
    check_same_device,
    check_same_shape_dtype,
)
from mobilefuse._fake import (
    activation_backward_fake,
    activation_fake,
    channel_shuffle_fake,
    depthwise_conv2d_backward_fake,
    depthwise_conv2d_fake,
    se_channel_affine_fake,
    se_channel_sum_fake,
)


def _act_forward(x: torch.Tensor, act_name: str) -> torch.Tensor:
    from mobilefuse.kernels import activations

    check_float_tensor(f"triton_{act_name.lower()}", "x", x)
    return activations.activation_forward(x, getattr(activations, act_name))


def _act_backward(grad_out: torch.Tensor, x: torch.Tensor, act_name: str) -> torch.Tensor:
    from mobilefuse.kernels import activations

    op = f"triton_{act_name.lower()}_backward"
    check_float_tensor(op, "x", x)
    check_same_shape_dtype(op, "grad_out", grad_out, "x", x)
    check_same_device(op, grad_out=grad_out, x=x)
    return activations.activation_backward(grad_out, x, getattr(activations, act_name))


@torch.library.custom_op("mobilefuse::triton_hardswish", mutates_args=())
def triton_hardswish(x: torch.Tensor) -> torch.Tensor:
    """Hard-swish, Triton kernel."""
    return _act_forward(x, "HARDSWISH")


@torch.library.custom_op("mobilefuse::triton_hardswish_backward", mutates_args=())
def triton_hardswish_backward(grad_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Hard-swish input gradient, Triton kernel."""
    return _act_backward(grad_out, x, "HARDSWISH")


@torch.library.custom_op("mobilefuse::triton_hardsigmoid", mutates_args=())
def triton_hardsigmoid(x: torch.Tensor) -> torch.Tensor:
    """Hard-sigmoid, Triton kernel."""
    return _act_forward(x, "HARDSIGMOID")


@torch.library.custom_op("mobilefuse::triton_hardsigmoid_backward", mutates_args=())
def triton_hardsigmoid_backward(grad_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Hard-sigmoid input gradient, Triton kernel."""
    return _act_backward(grad_out, x, "HARDSIGMOID")


@torch.library.custom_op("mobilefuse::triton_channel_shuffle", mutates_args=())
def triton_channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Channel shuffle, Triton kernel."""
    from mobilefuse.kernels.channel_shuffle import channel_shuffle_forward

    check_min_rank("triton_channel_shuffle", "x", x, 3, "(N, C, *)")
    check_groups("triton_channel_shuffle", groups, x.shape[1])
    return channel_shuffle_forward(x, groups)


for _fwd, _bwd in ((triton_hardswish, triton_hardswish_backward),
                   (triton_hardsigmoid, triton_hardsigmoid_backward)):
    _fwd.register_fake(activation_fake)
    _bwd.register_fake(activation_backward_fake)
    register_activation_autograd(_fwd, _bwd)
triton_channel_shuffle.register_fake(channel_shuffle_fake)
register_shuffle_autograd(triton_channel_shuffle, triton_channel_shuffle)


@torch.library.custom_op("mobilefuse::triton_depthwise_conv2d", mutates_args=())
def triton_depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                            stride: list[int], padding: list[int], dilation: list[int],
                            activation: str) -> torch.Tensor:
    """Depthwise convolution with bias and activation, Triton kernel."""
    from mobilefuse.kernels.depthwise_conv import depthwise_conv2d_forward

    return depthwise_conv2d_forward(x, weight, bias, stride, padding, dilation, activation)


@torch.library.custom_op("mobilefuse::triton_depthwise_conv2d_backward", mutates_args=())
def triton_depthwise_conv2d_backward(grad_out: torch.Tensor, x: torch.Tensor,
                                     weight: torch.Tensor, bias: torch.Tensor | None,
                                     stride: list[int], padding: list[int], dilation: list[int],
                                     activation: str, output_mask: list[bool]
                                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Depthwise convolution gradients (input, weight, bias), Triton kernels."""
    from mobilefuse.kernels.depthwise_conv import depthwise_conv2d_backward

    return depthwise_conv2d_backward(grad_out, x, weight, bias, stride, padding, dilation,
                                     activation, output_mask)


triton_depthwise_conv2d.register_fake(depthwise_conv2d_fake)
triton_depthwise_conv2d_backward.register_fake(depthwise_conv2d_backward_fake)
register_depthwise_autograd(triton_depthwise_conv2d, triton_depthwise_conv2d_backward)


@torch.library.custom_op("mobilefuse::triton_se_channel_sum", mutates_args=())
def triton_se_channel_sum(x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """Per-(n, c) sums over H×W of x (times y), Triton kernel."""
    from mobilefuse.kernels.squeeze_excite import channel_sum

    return channel_sum(x, y)


@torch.library.custom_op("mobilefuse::triton_se_channel_affine", mutates_args=())
def triton_se_channel_affine(x: torch.Tensor, scale: torch.Tensor,
                             shift: torch.Tensor | None) -> torch.Tensor:
    """``x * scale[n, c] (+ shift[n, c])``, Triton kernel."""
    from mobilefuse.kernels.squeeze_excite import channel_affine

    return channel_affine(x, scale, shift)


triton_se_channel_sum.register_fake(se_channel_sum_fake)
triton_se_channel_affine.register_fake(se_channel_affine_fake)
