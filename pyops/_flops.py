"""FLOP formulas of mobilefuse's ops for ``torch.utils.flop_counter.FlopCounterMode``.

Counted as PyTorch counts its own ops: the multiply-adds of convolutions and matrix products
(two FLOPs each), none for elementwise work. So an accelerated model reports the FLOPs of its
eager original, and :mod:`mobilefuse.profile`'s roofline can place mobilefuse's kernels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.flop_counter import flop_registry, register_flop_formula

Shape = Sequence[int]


def depthwise_flops(out_shape: Shape, weight_shape: Shape) -> int:
    """Forward FLOPs of a depthwise convolution: 2 per tap per output element."""
    return 2 * math.prod(out_shape) * weight_shape[-2] * weight_shape[-1]


def _depthwise(x: Shape, weight: Shape, *_: Any, out_shape: Shape, **__: Any) -> int:
    return depthwise_flops(out_shape, weight)


def _depthwise_backward(grad_out: Shape, x: Shape, weight: Shape, bias: Any, stride: Any,
                        padding: Any, dilation: Any, activation: Any,
                        output_mask: Sequence[bool], *_: Any, **__: Any) -> int:
    # The input gradient and the weight gradient each cost one forward's multiply-adds.
    return depthwise_flops(grad_out, weight) * (int(output_mask[0]) + int(output_mask[1]))


def excitation_flops(x_shape: Shape, w_reduce_shape: Shape) -> int:
    """Forward FLOPs of squeeze-and-excitation's two 1x1 convolutions on the pooled (N, C)."""
    return 4 * x_shape[0] * w_reduce_shape[0] * w_reduce_shape[1]


def _squeeze_excite(x: Shape, w_reduce: Shape, *_: Any, **__: Any) -> int:
    return excitation_flops(x, w_reduce)


def _squeeze_excite_backward(grad_out: Shape, x: Shape, pooled: Shape, w_reduce: Shape,
                             *_: Any, **__: Any) -> int:
    return 2 * excitation_flops(x, w_reduce)


def _depthwise_squeeze_excite(x: Shape, weight: Shape, *args: Any, out_shape: Shape,
                              **__: Any) -> int:
    # (x, weight, bias, stride, padding, dilation, activation, w_reduce, ...)
    return depthwise_flops(out_shape, weight) + excitation_flops(x, args[5])


def _expand_depthwise(x: Shape, expand_weight: Shape, *args: Any, out_shape: Shape,
                      **__: Any) -> int:
    # (x, expand_weight, expand_bias, expand_activation, weight, bias, stride, padding,
    # dilation, activation, w_reduce, ...): the 1x1 expansion over every input pixel, the
    # depthwise convolution, and the excitation where w_reduce is given.
    expansion = 2 * x[0] * x[2] * x[3] * expand_weight[0] * expand_weight[1]
    se = 0 if args[8] is None else excitation_flops(out_shape, args[8])
    return expansion + depthwise_flops(out_shape, args[2]) + se


def _onednn_convolution(*args: Any, out_shape: Shape, **__: Any) -> int:
    # torch.ops.mkldnn._convolution_pointwise: (X, W, ...) has 10 arguments, its .binary
    # overload (X, other, W, ...) 13. Counted as aten.convolution counts a convolution.
    weight = args[2] if len(args) == 13 else args[1]
    return 2 * math.prod(out_shape) * math.prod(weight[1:])


def _onednn_linear(*args: Any, out_shape: Shape, **__: Any) -> int:
    # torch.ops.mkldnn._linear_pointwise: (X, W, B, attr, scalars, algorithm), its .binary
    # overload (X, other, W, B, attr); W is (C_out, C_in). The 1x1 convolutions of the CPU
    # inference route, counted as the convolution they compute.
    weight = args[2] if len(args) == 5 else args[1]
    return 2 * math.prod(out_shape) * weight[1]


_FORMULAS: dict[str, Callable[..., int]] = {
    "depthwise_conv2d": _depthwise,
    "triton_depthwise_conv2d": _depthwise,
    "depthwise_conv2d_backward": _depthwise_backward,
    "triton_depthwise_conv2d_backward": _depthwise_backward,
    "squeeze_excite": _squeeze_excite,
    "se_inference": _squeeze_excite,
    "squeeze_excite_backward": _squeeze_excite_backward,
    "depthwise_squeeze_excite": _depthwise_squeeze_excite,
    "expand_depthwise": _expand_depthwise,
}


def _register_onednn() -> None:
    # The CPU inference route runs its convolutions as oneDNN ops (mobilefuse._onednn), which
    # torch's counter does not know; counted so an accelerated model keeps its eager FLOPs.
    for name, formula in (("_convolution_pointwise", _onednn_convolution),
                          ("_linear_pointwise", _onednn_linear)):
        packet = getattr(torch.ops.mkldnn, name, None)
        if packet is not None and packet not in flop_registry:
            register_flop_formula(packet)(formula)


def register() -> list[str]:
    """Register the formulas of the ops this build has (once); returns their names."""
    _register_onednn()
    done = []
    for name, formula in _FORMULAS.items():
        try:
            packet = getattr(torch.ops.mobilefuse, name)
        except (AttributeError, RuntimeError):
            continue  # a kernel this build lacks
        if packet not in flop_registry:
            register_flop_formula(packet)(formula)
        done.append(name)
    return done
