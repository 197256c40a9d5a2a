"""Argument checks and normalization for depthwise_conv2d.

Every error names the argument and what was expected. A valid input that no kernel takes
(a channel multiplier, asymmetric ``"same"`` padding) is not an error: ``kernel_gap`` says why,
and the op runs the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mobilefuse._checks import check_float_tensor, check_like_x, check_tensor, check_vector

ACTIVATIONS: tuple[str, ...] = ("none", "relu", "relu6", "hardswish", "silu")
OP = "depthwise_conv2d"


@dataclass(frozen=True)
class DepthwiseArgs:
    """Normalized convolution settings (each a (height, width) pair) and the activation name."""

    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    activation: str
    # Why no kernel takes this call (the reference computes it), or None.
    kernel_gap: str | None = None
    # F.conv2d's own padding argument, kept for the reference ("same" may be asymmetric).
    reference_padding: tuple[int, int] | str = (0, 0)


def same_padding_gap(span: tuple[int, ...]) -> str | None:
    """Why no kernel takes ``padding="same"`` for these dilated kernel spans
    (``dilation * (k - 1)`` per dimension): an odd span needs more padding on one side."""
    if any(s % 2 for s in span):
        return "padding='same' with an even kernel span pads one side more"
    return None


def int_pair(op: str, name: str, value: object, minimum: int) -> tuple[int, int]:
    """``value`` (an int or a pair of ints, each >= ``minimum``) as a pair; errors name ``op``
    and the argument."""
    items = (value, value) if isinstance(value, int) else value
    if (not isinstance(items, (tuple, list)) or len(items) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) for v in items)):
        raise TypeError(f"mobilefuse.{op}: {name} must be an int or a pair of ints, got {value!r}")
    if min(items) < minimum:
        raise ValueError(f"mobilefuse.{op}: {name} must be >= {minimum}, got {value!r}")
    return int(items[0]), int(items[1])


def _activation(value: object) -> str:
    name = "none" if value is None else value
    if name not in ACTIVATIONS:
        allowed = ", ".join(repr(a) for a in (None,) + ACTIVATIONS[1:])
        raise ValueError(f"mobilefuse.{OP}: activation must be one of {allowed}, got {value!r}")
    return str(name)


# Settings of calls already checked, by everything the checks read: the tensors' shapes,
# dtypes and devices and the other arguments. A layer calls with the same ones every time, and
# the full check costs several microseconds, a tenth of a small layer.
_CHECKED: dict[tuple, DepthwiseArgs] = {}
_CHECKED_LIMIT = 1024


def _call_key(x: object, weight: object, bias: object, settings: tuple) -> tuple | None:
    """The cache key of a call, or None when it has no hashable one."""
    if not isinstance(x, torch.Tensor) or not isinstance(weight, torch.Tensor):
        return None
    if bias is None:
        bias_key: tuple | None = None
    elif isinstance(bias, torch.Tensor):
        bias_key = (bias.shape, bias.dtype, bias.device)
    else:
        return None
    if not all(_plain(v) for v in settings):
        return None
    return (x.shape, x.dtype, x.device, weight.shape, weight.dtype, weight.device, bias_key,
            settings)


def _plain(value: object) -> bool:
    """Whether ``value`` is None, a str, an int or a tuple of ints, of exactly those types:
    True == 1 and 1.0 == 1 as keys, and neither is a valid stride."""
    if value is None or type(value) in (int, str):
        return True
    return type(value) is tuple and all(type(v) is int for v in value)


def check_depthwise_args(x: object, weight: object, bias: object, stride: object,
                         padding: object, dilation: object, activation: object) -> DepthwiseArgs:
    """Validate a depthwise_conv2d call; return its normalized settings."""
    if torch.compiler.is_compiling():
        return _check_depthwise_args(x, weight, bias, stride, padding, dilation, activation)
    key = _call_key(x, weight, bias, (stride, padding, dilation, activation))
    args = _CHECKED.get(key) if key is not None else None
    if args is None:
        args = _check_depthwise_args(x, weight, bias, stride, padding, dilation, activation)
        if key is not None:
            if len(_CHECKED) >= _CHECKED_LIMIT:
                _CHECKED.clear()
            _CHECKED[key] = args
    return args


def _check_depthwise_args(x: object, weight: object, bias: object, stride: object,
                          padding: object, dilation: object, activation: object) -> DepthwiseArgs:
    x = check_float_tensor(OP, "x", x)
    weight = check_tensor(OP, "weight", weight)
    if x.dim() != 4:
        raise ValueError(f"mobilefuse.{OP}: x must have rank 4 (N, C, H, W), got shape "
                         f"{tuple(x.shape)}")
    channels = x.shape[1]
    if weight.dim() != 4 or weight.shape[1] != 1 or weight.shape[0] == 0 or (
            channels and weight.shape[0] % channels):
        raise ValueError(f"mobilefuse.{OP}: weight must have shape (C, 1, kh, kw) with C={channels}"
                         f" (or a multiple of C), got {tuple(weight.shape)}")
    tensors = {"x": x, "weight": weight}
    if bias is not None:
        tensors["bias"] = check_vector(OP, "bias", bias, weight.shape[0])
    check_like_x(OP, tensors)
    stride_hw = int_pair(OP, "stride", stride, 1)
    dilation_hw = int_pair(OP, "dilation", dilation, 1)
    kernel = (weight.shape[2], weight.shape[3])
    span = tuple(d * (k - 1) for d, k in zip(dilation_hw, kernel, strict=True))
    gap = None
    if isinstance(padding, str):
        if padding == "valid":
            pad_hw, reference_padding = (0, 0), (0, 0)
        elif padding == "same":
            if stride_hw != (1, 1):
                raise ValueError(f"mobilefuse.{OP}: padding='same' needs stride 1, got stride "
                                 f"{stride!r}")
            pad_hw, reference_padding = (span[0] // 2, span[1] // 2), "same"
            gap = same_padding_gap(span)
        else:
            raise ValueError(f"mobilefuse.{OP}: padding must be an int, a pair of ints, 'same' or "
                             f"'valid', got {padding!r}")
    else:
        pad_hw = int_pair(OP, "padding", padding, 0)
        reference_padding = pad_hw
    for dim, size, pad, extent in zip(("height", "width"), x.shape[2:], pad_hw, span, strict=True):
        if extent + 1 > size + 2 * pad:
            raise ValueError(f"mobilefuse.{OP}: the kernel (dilated extent {extent + 1}) is larger "
                             f"than the padded input {dim} {size + 2 * pad}")
    if weight.shape[0] != channels:
        gap = f"channel multiplier {weight.shape[0] // max(channels, 1)} (weight has " \
              f"{weight.shape[0]} filters for C={channels})"
    return DepthwiseArgs(stride_hw, pad_hw, dilation_hw, _activation(activation), gap,
                         reference_padding)


# Most taps the CPU forward runs well in its run-time-sized loop (each tap reloaded per
# pixel); square 3, 5 and 7 at column dilation 1 and column stride 1 or 2 have compile-time
# kernels instead (csrc/cpu/depthwise_kernels.h, with_kernel).
_RUNTIME_LOOP_TAPS = 25


def vendor_forward_faster(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          args: DepthwiseArgs) -> bool:
    """Whether oneDNN's depthwise forward (``F.conv2d``) beats the CPU kernel on this call: a
    float32 call that records no gradient, with a kernel of more than 25 taps that the kernel
    would run in its run-time-sized loop. Measured at batch 8 on 2 threads: 9x9 0.63-0.85x,
    11x11 0.59-1.00x, 7x7 at dilation 2 0.77-0.93x, 5x7 0.91-1.00x oneDNN's forward; their
    forward+backward stays 2-5.6x faster, so calls recording a gradient keep the kernel."""
    kh, kw = weight.shape[2], weight.shape[3]
    compile_time = kh == kw and kh in (3, 5, 7) and args.dilation[1] == 1 and args.stride[1] <= 2
    if (compile_time or kh * kw <= _RUNTIME_LOOP_TAPS or x.dtype != torch.float32
            or not torch.backends.mkldnn.is_available() or not torch.backends.mkldnn.enabled):
        return False
    return not (torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias)))
