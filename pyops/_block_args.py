"""Argument checks for inverted_residual: every error names the argument and what was expected."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mobilefuse._checks import (
    check_float_tensor,
    check_like_x,
    check_pointwise_weight,
    check_tensor,
    check_vector,
)
from mobilefuse._conv_args import ACTIVATIONS, int_pair
from mobilefuse._se_args import check_squeeze_excite_args

OP = "inverted_residual"
SEWeights = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]


@dataclass(frozen=True)
class BlockArgs:
    """Normalized settings of one inverted_residual call."""

    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    # After the expansion and after the depthwise convolution.
    activations: tuple[str | None, str | None]
    project_activation: str | None
    residual: bool


def _activation(name: str, value: object) -> str | None:
    if value is not None and value not in ACTIVATIONS[1:]:
        allowed = ", ".join(repr(a) for a in (None,) + ACTIVATIONS[1:])
        raise ValueError(f"mobilefuse.{OP}: {name} must be one of {allowed}, got {value!r}")
    return value


def check_block_args(x: object, expand_weight: object, expand_bias: object, dw_weight: object,
                     dw_bias: object, project_weight: object, project_bias: object,
                     se_weights: object, stride: object, padding: object, dilation: object,
                     activation: object, se_activation: object, se_gate: object,
                     project_activation: object, residual: object) -> BlockArgs:
    """Validate an inverted_residual call; return its normalized settings."""
    x = check_float_tensor(OP, "x", x)
    if x.dim() != 4:
        raise ValueError(f"mobilefuse.{OP}: x must have rank 4 (N, C, H, W), got shape "
                         f"{tuple(x.shape)}")
    channels = x.shape[1]
    tensors: dict[str, torch.Tensor] = {"x": x}
    mid = channels
    if expand_weight is not None:
        mid = check_pointwise_weight(OP, "expand_weight", expand_weight, None, channels,
                                     f"(M, {channels})").shape[0]
        tensors["expand_weight"] = expand_weight
    elif expand_bias is not None:
        raise ValueError(f"mobilefuse.{OP}: expand_bias is given without expand_weight")
    dw_weight = check_tensor(OP, "dw_weight", dw_weight)
    if dw_weight.dim() != 4 or tuple(dw_weight.shape[:2]) != (mid, 1):
        raise ValueError(f"mobilefuse.{OP}: dw_weight must have shape ({mid}, 1, kh, kw) for the "
                         f"{mid} expanded channels, got {tuple(dw_weight.shape)}")
    tensors["dw_weight"] = dw_weight
    out_channels = check_pointwise_weight(OP, "project_weight", project_weight, None, mid,
                                          f"(O, {mid})").shape[0]
    tensors["project_weight"] = project_weight
    for name, bias, size in (("expand_bias", expand_bias, mid), ("dw_bias", dw_bias, mid),
                             ("project_bias", project_bias, out_channels)):
        if bias is not None:
            tensors[name] = check_vector(OP, name, bias, size)
    if se_weights is not None:
        if not isinstance(se_weights, (tuple, list)) or len(se_weights) != 4:
            raise TypeError(f"mobilefuse.{OP}: se_weights must be None or a tuple (w_reduce, "
                            f"b_reduce, w_expand, b_expand), got {type(se_weights).__name__}")
        # The SE runs on the depthwise output: check its weights against that channel count.
        check_squeeze_excite_args(x.new_empty((0, mid, 1, 1)), *se_weights, se_activation,
                                  se_gate)
        tensors.update({f"se_weights[{i}]": t for i, t in enumerate(se_weights)
                        if t is not None})
    check_like_x(OP, tensors)
    stride_hw = int_pair(OP, "stride", stride, 1)
    dilation_hw = int_pair(OP, "dilation", dilation, 1)
    span = tuple(d * (k - 1) for d, k in zip(dilation_hw, dw_weight.shape[2:], strict=True))
    pad_hw = ((span[0] // 2, span[1] // 2) if padding is None
              else int_pair(OP, "padding", padding, 0))
    for dim, size, pad, extent in zip(("height", "width"), x.shape[2:], pad_hw, span, strict=True):
        if extent + 1 > size + 2 * pad:
            raise ValueError(f"mobilefuse.{OP}: the depthwise kernel (dilated extent {extent + 1})"
                             f" is larger than the padded input {dim} {size + 2 * pad}")
    same_shape = out_channels == channels and stride_hw == (1, 1) and all(
        2 * p == s for p, s in zip(pad_hw, span, strict=True))
    if residual is None:
        residual = same_shape
    elif not isinstance(residual, bool):
        raise TypeError(f"mobilefuse.{OP}: residual must be None, True or False, got {residual!r}")
    elif residual and not same_shape:
        raise ValueError(f"mobilefuse.{OP}: residual=True needs the output shape to equal x's "
                         f"(stride 1, 'same' padding, {channels} output channels); got "
                         f"{out_channels} channels, stride {stride_hw}, padding {pad_hw}")
    pair = activation if isinstance(activation, (tuple, list)) and len(activation) == 2 else (
        activation, activation)
    activations = (_activation("activation", pair[0]), _activation("activation", pair[1]))
    return BlockArgs(stride_hw, pad_hw, dilation_hw, activations,
                     _activation("project_activation", project_activation), residual)
