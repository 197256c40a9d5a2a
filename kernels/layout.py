"""Layout helpers for the Triton launchers (mirrors csrc/layout.h)."""

from __future__ import annotations

import torch


def dense_like(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` itself when it has ``like``'s strides, else a copy laid out like ``like``."""
    if t.stride() == like.stride():
        return t
    return torch.empty_like(like, dtype=t.dtype).copy_(t)


def conv_output_hw(x: torch.Tensor, kernel: tuple[int, int], stride: list[int],
                   padding: list[int], dilation: list[int]) -> tuple[int, int]:
    """Output (height, width) of a 2-D convolution of ``x`` (N, C, H, W) with symmetric padding."""
    h, w = (
        (x.shape[2 + d] + 2 * padding[d] - dilation[d] * (kernel[d] - 1) - 1) // stride[d] + 1
        for d in range(2))
    return h, w


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """The layout the kernels write ``x``'s results in (see :func:`uses_channels_last`)."""
    return torch.channels_last if uses_channels_last(x) else torch.contiguous_format


def uses_channels_last(x: torch.Tensor) -> bool:
    """Whether the NCHW kernels (channel_shuffle, depthwise_conv2d) work on ``x`` in channels_last
    layout (a 4-D channels_last-contiguous tensor that is not also contiguous), else contiguous."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
        memory_format=torch.channels_last)
