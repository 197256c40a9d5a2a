"""The functional API: ``mobilefuse.ops.<op>(...)``.

Each op checks its arguments, asks :mod:`mobilefuse.backends` which implementation takes the
input, and calls it: ``torch.ops.mobilefuse.<op>`` (C++/CUDA kernels), the Triton custom op
``torch.ops.mobilefuse.triton_<op>``, or the pure-PyTorch reference. All are differentiable.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mobilefuse import _native_ops, _triton_ops, reference  # noqa: F401  (registers the ops)
from mobilefuse._checks import check_float_tensor, check_groups, check_min_rank, check_tensor
from mobilefuse._conv_args import OP as DEPTHWISE
from mobilefuse._conv_args import check_depthwise_args
from mobilefuse._se_args import OP as SQUEEZE_EXCITE
from mobilefuse._se_args import check_squeeze_excite_args
from mobilefuse._squeeze_excite import squeeze_excite_op
from mobilefuse.backends import FLOAT_DTYPES, select_backend

__all__ = ["hardswish", "hardsigmoid", "channel_shuffle", "depthwise_conv2d", "squeeze_excite"]

# channel_shuffle only moves bits, so its kernels take every dtype 1, 2, 4 or 8 bytes wide.
SHUFFLE_DTYPES: tuple[torch.dtype, ...] = FLOAT_DTYPES + (
    torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool)

_Impl = Callable[..., torch.Tensor]

_HARDSWISH: dict[str, _Impl] = {
    "cpu": lambda x: torch.ops.mobilefuse.hardswish(x),
    "cuda": lambda x: torch.ops.mobilefuse.hardswish(x),
    "triton": lambda x: torch.ops.mobilefuse.triton_hardswish(x),
    "reference": reference.hardswish,
}
_HARDSIGMOID: dict[str, _Impl] = {
    "cpu": lambda x: torch.ops.mobilefuse.hardsigmoid(x),
    "cuda": lambda x: torch.ops.mobilefuse.hardsigmoid(x),
    "triton": lambda x: torch.ops.mobilefuse.triton_hardsigmoid(x),
    "reference": reference.hardsigmoid,
}
_CHANNEL_SHUFFLE: dict[str, _Impl] = {
    "cpu": lambda x, g: torch.ops.mobilefuse.channel_shuffle(x, g),
    "cuda": lambda x, g: torch.ops.mobilefuse.channel_shuffle(x, g),
    "triton": lambda x, g: torch.ops.mobilefuse.triton_channel_shuffle(x, g),
    "reference": reference.channel_shuffle,
}


def hardswish(x: torch.Tensor) -> torch.Tensor:
    """Hard-swish, ``x * relu6(x + 3) / 6``, as ``F.hardswish``.

    Args:
        x: a float16, bfloat16, float32 or float64 tensor of any shape and strides.

    Returns:
        A new tensor in ``x``'s memory format. Its backward saves only ``x``.
    """
    check_float_tensor("hardswish", "x", x)
    return _HARDSWISH[select_backend("hardswish", x.device, x.dtype)](x)


def hardsigmoid(x: torch.Tensor) -> torch.Tensor:
    """Hard-sigmoid, ``relu6(x + 3) / 6``, as ``F.hardsigmoid``.

    Args:
        x: a float16, bfloat16, float32 or float64 tensor of any shape and strides.

    Returns:
        A new tensor in ``x``'s memory format. Its backward saves only ``x``.
    """
    check_float_tensor("hardsigmoid", "x", x)
    return _HARDSIGMOID[select_backend("hardsigmoid", x.device, x.dtype)](x)


def _kernel_layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` when contiguous or channels_last-contiguous, else a copy in its suggested format."""
    if x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)):
        return x
    # A meta tensor answers which layout empty_like (suggest_memory_format) picks, for free.
    probe = torch.empty_like(x, device="meta")
    channels_last = x.dim() == 4 and probe.is_contiguous(memory_format=torch.channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.contiguous(memory_format=fmt)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle, as ``x.view(N, g, C//g, *).transpose(1, 2).reshape(x.shape)``.

    Args:
        x: a tensor of shape ``(N, C, *)``, any dtype; contiguous or channels_last
            (other strides are made contiguous in their suggested format first).
        groups: a positive int dividing ``C``.

    Returns:
        A new tensor (never ``x`` or a view of it), channels_last when ``x`` is. The values
        are moved bit for bit; the backward is the inverse shuffle (``C // groups`` groups).
    """
    check_tensor("channel_shuffle", "x", x)
    check_min_rank("channel_shuffle", "x", x, 3, "(N, C, *)")
    check_groups("channel_shuffle", groups, x.shape[1])
    backend = select_backend("channel_shuffle", x.device, x.dtype, SHUFFLE_DTYPES)
    return _CHANNEL_SHUFFLE[backend](_kernel_layout(x), groups)


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     stride: int | tuple[int, int] = 1,
                     padding: int | tuple[int, int] | str = 0,
                     dilation: int | tuple[int, int] = 1,
                     activation: str | None = None) -> torch.Tensor:
    """Depthwise convolution with bias and activation fused into one kernel.

    Same result as ``act(F.conv2d(x, weight, bias, stride, padding, dilation, groups=C))``.

    Args:
        x: ``(N, C, H, W)``, float16/bfloat16/float32/float64, contiguous or channels_last
            (other strides are made dense first); the output keeps its memory format.
        weight: ``(C, 1, kh, kw)``. A channel multiplier (``(m*C, 1, kh, kw)``) is computed by
            the reference, with a one-time warning.
        bias: ``(C,)`` or None.
        stride, dilation: an int or a pair, >= 1.
        padding: an int or a pair (>= 0), ``"valid"``, or ``"same"`` (stride 1 only).
        activation: None, ``"relu"``, ``"relu6"``, ``"hardswish"`` or ``"silu"``, applied in
            the kernel; its derivative is fused into the backward, which recomputes the
            pre-activation rather than storing it.
    """
    args = check_depthwise_args(x, weight, bias, stride, padding, dilation, activation)
    backend = select_backend(DEPTHWISE, x.device, x.dtype, op_reason=args.kernel_gap)
    if backend == "reference":
        return reference.depthwise_conv2d(x, weight, bias, args.stride, args.reference_padding,
                                          args.dilation, args.activation)
    op = (torch.ops.mobilefuse.triton_depthwise_conv2d if backend == "triton"
          else torch.ops.mobilefuse.depthwise_conv2d)
    return op(_kernel_layout(x), weight, bias, list(args.stride), list(args.padding),
              list(args.dilation), args.activation)


def squeeze_excite(x: torch.Tensor, w_reduce: torch.Tensor, b_reduce: torch.Tensor | None,
                   w_expand: torch.Tensor, b_expand: torch.Tensor | None,
                   activation: str = "relu", gate: str = "hardsigmoid") -> torch.Tensor:
    """Squeeze-and-excitation: ``x * gate(conv1x1(act(conv1x1(x.mean((2, 3), keepdim=True)))))``.

    The pool is one read of ``x`` with float32 accumulation, the excitation runs on the
    ``(N, C)`` means, the gating is one read and one write. The backward keeps only ``x`` and
    the per-(n, c) means, and makes two passes: one reduction, one write of the input gradient.

    Args:
        x: ``(N, C, H, W)``, float16/bfloat16/float32/float64, contiguous or channels_last
            (other strides are made dense first); the output keeps its memory format.
        w_reduce: ``(R, C)`` or ``(R, C, 1, 1)``; b_reduce: ``(R,)`` or None.
        w_expand: ``(C, R)`` or ``(C, R, 1, 1)``; b_expand: ``(C,)`` or None.
        activation: ``"relu"`` or ``"silu"``, after the reduction.
        gate: ``"sigmoid"`` or ``"hardsigmoid"``.
    """
    args = check_squeeze_excite_args(x, w_reduce, b_reduce, w_expand, b_expand, activation,
                                     gate)
    backend = select_backend(SQUEEZE_EXCITE, x.device, x.dtype)
    if backend == "reference":
        return reference.squeeze_excite(x, w_reduce, b_reduce, w_expand, b_expand,
                                        args.activation, args.gate)
    out, _ = squeeze_excite_op(_kernel_layout(x), args.w_reduce, b_reduce, args.w_expand,
                               b_expand, args.activation, args.gate, backend)
    return out
