"""Shape-and-layout functions (fake kernels) shared by the C++ and Triton ops.

They mirror the kernels' output layout exactly: activations keep the input's layout
(``empty_like``); channel_shuffle writes channels_last for a channels_last input and
contiguous otherwise.
"""

from __future__ import annotations

import torch

from mobilefuse.kernels.layout import conv_output_hw, memory_format_of


def activation_fake(x: torch.Tensor) -> torch.Tensor:
    """Output of an elementwise activation of ``x``."""
    torch._check(x.is_floating_point(), lambda: f"x must be a floating tensor, got {x.dtype}")
    return torch.empty_like(x)


def activation_backward_fake(grad_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Input gradient of an elementwise activation of ``x``."""
    torch._check(grad_out.shape == x.shape,
                 lambda: f"grad_out shape {tuple(grad_out.shape)} != x shape {tuple(x.shape)}")
    torch._check(grad_out.dtype == x.dtype,
                 lambda: f"grad_out dtype {grad_out.dtype} != x dtype {x.dtype}")
    torch._check(grad_out.device == x.device,
                 lambda: f"grad_out is on {grad_out.device} but x is on {x.device}")
    return torch.empty_like(x)


def channel_shuffle_fake(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Output of ``channel_shuffle(x, groups)``."""
    torch._check(x.dim() >= 3, lambda: f"x must have rank >= 3, got {x.dim()}")
    torch._check(groups > 0, lambda: f"groups must be positive, got {groups}")
    torch._check(x.shape[1] % groups == 0,
                 lambda: f"groups ({groups}) must divide C={x.shape[1]}")
    return torch.empty_like(x, memory_format=memory_format_of(x))


def concat_shuffle_fake(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Output of ``concat_shuffle(a, b)``: channels_last when ``a`` is laid out that way (a
    channel slice of a channels_last tensor included), as the CPU kernel decides."""
    torch._check(a.dim() >= 3, lambda: f"a must have rank >= 3, got {a.dim()}")
    torch._check(a.shape == b.shape,
                 lambda: f"b must have the shape of a {tuple(a.shape)}, got {tuple(b.shape)}")
    torch._check(a.dtype == b.dtype, lambda: f"b must have the dtype of a, got {b.dtype}")
    channels_last = a.dim() == 4 and not a.is_contiguous() and torch.empty_like(a).is_contiguous(
        memory_format=torch.channels_last)
    shape = (a.shape[0], 2 * a.shape[1], *a.shape[2:])
    return torch.empty(shape, dtype=a.dtype, device=a.device, memory_format=(
        torch.channels_last if channels_last else torch.contiguous_format))


def concat_shuffle_chunks_fake(a: torch.Tensor, b: torch.Tensor
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs of ``concat_shuffle_chunks(a, b)``: two channels_last tensors shaped as ``a``."""
    torch._check(a.dim() == 4, lambda: f"a must have rank 4, got {a.dim()}")
    torch._check(a.shape == b.shape,
                 lambda: f"b must have the shape of a {tuple(a.shape)}, got {tuple(b.shape)}")
    torch._check(a.dtype == b.dtype, lambda: f"b must have the dtype of a, got {b.dtype}")
    return tuple(torch.empty(a.shape, dtype=a.dtype, device=a.device,
                             memory_format=torch.channels_last) for _ in range(2))


def max_pool2d_fake(x: torch.Tensor, kernel: list[int], stride: list[int],
                    padding: list[int]) -> torch.Tensor:
    """Output of ``max_pool2d``: floor-mode size, channels_last."""
    torch._check(x.dim() == 4, lambda: f"x must have rank 4, got {x.dim()}")
    h, w = ((x.shape[2 + d] + 2 * padding[d] - kernel[d]) // stride[d] + 1 for d in range(2))
    return torch.empty((x.shape[0], x.shape[1], h, w), dtype=x.dtype, device=x.device,
                       memory_format=torch.channels_last)


def _conv_out_shape(x: torch.Tensor, weight: torch.Tensor, stride: list[int],
                    padding: list[int], dilation: list[int]) -> tuple[int, ...]:
    kernel = (weight.shape[2], weight.shape[3])
    return (x.shape[0], weight.shape[0], *conv_output_hw(x, kernel, stride, padding, dilation))


def depthwise_conv2d_fake(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          stride: list[int], padding: list[int], dilation: list[int],
                          activation: str) -> torch.Tensor:
    """Output of ``depthwise_conv2d``: channels_last for channels_last x, else contiguous."""
    torch._check(x.dim() == 4, lambda: f"x must have rank 4, got {x.dim()}")
    torch._check(weight.shape[0] == x.shape[1] and weight.shape[1] == 1,
                 lambda: f"weight must be (C, 1, kh, kw) with C={x.shape[1]}, got "
                         f"{tuple(weight.shape)}")
    return torch.empty(_conv_out_shape(x, weight, stride, padding, dilation), dtype=x.dtype,
                       device=x.device, memory_format=memory_format_of(x))


def depthwise_conv2d_backward_fake(grad_out: torch.Tensor, x: torch.Tensor,
                                   weight: torch.Tensor, bias: torch.Tensor | None,
                                   stride: list[int], padding: list[int], dilation: list[int],
                                   activation: str, output_mask: list[bool]
                                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``depthwise_conv2d``; the ones not asked for are empty."""
    torch._check(tuple(grad_out.shape) == _conv_out_shape(x, weight, stride, padding, dilation),
                 lambda: f"grad_out has shape {tuple(grad_out.shape)}, expected the output's")
    empty = x.new_empty(0)
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device,
                         memory_format=memory_format_of(x)) if output_mask[0] else empty
    grad_w = torch.empty(weight.shape, dtype=x.dtype, device=x.device) if output_mask[1] else (
        x.new_empty(0))
    grad_b = x.new_empty(weight.shape[0]) if output_mask[2] and bias is not None else (
        x.new_empty(0))
    return grad_x, grad_w, grad_b


def se_channel_sum_fake(x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """``(N, C)`` per-channel sums over H×W, float32 (float64 for float64)."""
    torch._check(x.dim() == 4, lambda: f"x must have rank 4, got {x.dim()}")
    torch._check(y is None or y.shape == x.shape,
                 lambda: f"y must have x's shape {tuple(x.shape)}")
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return x.new_empty((x.shape[0], x.shape[1]), dtype=dtype)


def se_channel_affine_fake(x: torch.Tensor, scale: torch.Tensor,
                           shift: torch.Tensor | None) -> torch.Tensor:
    """``x * scale[n, c] (+ shift[n, c])`` in x's dtype and layout."""
    torch._check(x.dim() == 4, lambda: f"x must have rank 4, got {x.dim()}")
    torch._check(tuple(scale.shape) == (x.shape[0], x.shape[1]),
                 lambda: f"scale must be (N, C) = {(x.shape[0], x.shape[1])}, got "
                         f"{tuple(scale.shape)}")
    return torch.empty_like(x, memory_format=memory_format_of(x))


def se_inference_fake(x: torch.Tensor, w_reduce: torch.Tensor, b_reduce: torch.Tensor | None,
                      w_expand: torch.Tensor, b_expand: torch.Tensor | None, activation: str,
                      gate: str) -> torch.Tensor:
    """``squeeze_excite(x, ...)`` without autograd: x's shape, dtype and layout."""
    torch._check(x.dim() == 4, lambda: f"x must have rank 4, got {x.dim()}")
    torch._check(w_reduce.dim() == 2 and w_reduce.shape[1] == x.shape[1],
                 lambda: f"w_reduce must be (R, {x.shape[1]}), got {tuple(w_reduce.shape)}")
    torch._check(tuple(w_expand.shape) == (x.shape[1], w_reduce.shape[0]),
                 lambda: f"w_expand must be {(x.shape[1], w_reduce.shape[0])}, got "
                         f"{tuple(w_expand.shape)}")
    return torch.empty_like(x, memory_format=memory_format_of(x))


def depthwise_squeeze_excite_fake(x: torch.Tensor, weight: torch.Tensor,
                                  bias: torch.Tensor | None, stride: list[int],
                                  padding: list[int], dilation: list[int], activation: str,
                                  w_reduce: torch.Tensor, b_reduce: torch.Tensor | None,
                                  w_expand: torch.Tensor, b_expand: torch.Tensor | None,
                                  se_activation: str, gate: str) -> torch.Tensor:
    """Output of ``depthwise_squeeze_excite``: the depthwise convolution's."""
    torch._check(w_reduce.dim() == 2 and w_reduce.shape[1] == x.shape[1],
                 lambda: f"w_reduce must be (R, C) with C={x.shape[1]}")
    torch._check(tuple(w_expand.shape) == (x.shape[1], w_reduce.shape[0]),
                 lambda: f"w_expand must be (C, R) = {(x.shape[1], w_reduce.shape[0])}")
    return depthwise_conv2d_fake(x, weight, bias, stride, padding, dilation, activation)


def expand_depthwise_fake(x: torch.Tensor, expand_weight: torch.Tensor,
                          expand_bias: torch.Tensor | None, expand_activation: str,
                          weight: torch.Tensor, bias: torch.Tensor | None, stride: list[int],
                          padding: list[int], dilation: list[int], activation: str,
                          w_reduce: torch.Tensor | None, b_reduce: torch.Tensor | None,
                          w_expand: torch.Tensor | None, b_expand: torch.Tensor | None,
                          se_activation: str, gate: str) -> torch.Tensor:
    """Output of ``expand_depthwise``: the depthwise convolution's on the expanded map."""
    torch._check(x.dim() == 4, lambda: f"x must have rank 4, got {x.dim()}")
    torch._check(expand_weight.dim() in (2, 4) and expand_weight.shape[1] == x.shape[1],
                 lambda: f"expand_weight must be (C, {x.shape[1]}) or (C, {x.shape[1]}, 1, 1), "
                         f"got {tuple(expand_weight.shape)}")
    for name, t in (("expand_weight", expand_weight), ("expand_bias", expand_bias),
                    ("weight", weight), ("bias", bias), ("w_reduce", w_reduce),
                    ("b_reduce", b_reduce), ("w_expand", w_expand), ("b_expand", b_expand)):
        torch._check(t is None or (t.device == x.device and t.dtype == x.dtype),
                     lambda name=name, t=t: f"expand_depthwise: {name} must match x's dtype "
                                            f"and device ({x.dtype} on {x.device}), got "
                                            f"{t.dtype} on {t.device}")
    hidden = x.new_empty(()).expand(x.shape[0], expand_weight.shape[0], *x.shape[2:])
    if w_reduce is not None and w_expand is not None:
        out = depthwise_squeeze_excite_fake(hidden, weight, bias, stride, padding, dilation,
                                            activation, w_reduce, b_reduce, w_expand, b_expand,
                                            se_activation, gate)
    else:
        out = depthwise_conv2d_fake(hidden, weight, bias, stride, padding, dilation, activation)
    return torch.empty(out.shape, dtype=x.dtype, device=x.device,
                       memory_format=memory_format_of(x))


def batch_norm_activation_fake(x: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor,
                               weight: torch.Tensor | None, bias: torch.Tensor | None,
                               activation: str, out_scale: torch.Tensor | None = None
                               ) -> torch.Tensor:
    """``act(batch_norm(x))`` (times ``out_scale[n, c]``) in x's dtype and layout."""
    torch._check(x.dim() == 4, lambda: f"x must have rank 4, got {x.dim()}")
    for name, t in (("mean", mean), ("invstd", invstd), ("weight", weight), ("bias", bias)):
        torch._check(t is None or tuple(t.shape) == (x.shape[1],),
                     lambda name=name: f"{name} must have shape (C,) with C={x.shape[1]}")
    torch._check(out_scale is None or tuple(out_scale.shape) == tuple(x.shape[:2]),
                 lambda: f"out_scale must have shape (N, C) = {tuple(x.shape[:2])}")
    return torch.empty_like(x, memory_format=memory_format_of(x))


def batch_norm_statistics_fake(x: torch.Tensor, running_mean: torch.Tensor | None,
                               running_var: torch.Tensor | None, momentum: float, eps: float
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, invstd) per channel, float32 (float64 for float64 x)."""
    torch._check(x.dim() == 4, lambda: f"x must have rank 4, got {x.dim()}")
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return x.new_empty(x.shape[1], dtype=dtype), x.new_empty(x.shape[1], dtype=dtype)


def batch_norm_activation_backward_fake(grad_out: torch.Tensor, x: torch.Tensor,
                                        mean: torch.Tensor, invstd: torch.Tensor,
                                        weight: torch.Tensor | None, bias: torch.Tensor | None,
                                        activation: str, output_mask: list[bool],
                                        grad_scale: torch.Tensor | None = None,
                                        grad_shift: torch.Tensor | None = None
                                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``batch_norm_activation`` (x, weight, bias) for the incoming gradient
    ``grad_out * grad_scale + grad_shift``; the ones not asked for are empty."""
    for name, t in (("grad_scale", grad_scale), ("grad_shift", grad_shift)):
        torch._check(t is None or tuple(t.shape) == tuple(x.shape[:2]),
                     lambda name=name: f"{name} must have shape (N, C) = {tuple(x.shape[:2])}")
    torch._check(grad_out.shape == x.shape,
                 lambda: f"grad_out has shape {tuple(grad_out.shape)}, expected x's")
    grad_x = batch_norm_activation_fake(x, mean, invstd, weight, bias, activation) if (
        output_mask[0]) else x.new_empty(0)

    def per_channel(asked: bool, param: torch.Tensor | None) -> torch.Tensor:
        # In the parameter's dtype (x's when it is absent); (C,) when asked for, else empty.
        return x.new_empty(x.shape[1] if asked else 0,
                           dtype=x.dtype if param is None else param.dtype)

    return grad_x, per_channel(output_mask[1], weight), per_channel(output_mask[2], bias)
