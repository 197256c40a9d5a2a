"""Strided 1x1 convolutions with a gradient, as stride-1 convolutions of the pixels they read.

A 1x1 convolution without padding at stride (sh, sw) reads only ``x[..., ::sh, ::sw]``, so it
equals the stride-1 convolution of those pixels. oneDNN runs the strided form by copying them
into a workspace first, and its weight gradient on channels_last inputs with fewer input
channels than its channel block writes past that workspace (uxlfoundation/oneDNN#6035, open):
the heap is corrupted and the process aborts or crashes later. With PyTorch 2.13 on a 2-core
AMD EPYC, a training step of timm's MobileOne-S0 in channels_last (its stem has a 3-channel
1x1 stride-2 branch) dies that way in eager PyTorch; a lone ``nn.Conv2d(c, 8, 1, stride=2)``
at 64x64 does for 2-7 input channels, not for 1 or 8 and more, nor at stride 1 or in NCHW.

The convolutions mobilefuse swaps in take the subsampled form where a gradient is recorded on
a CPU tensor with fewer than 16 input channels a group (oneDNN's widest block): the same
numbers, one small strided copy that oneDNN's workspace would have made anyway.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# oneDNN's largest input-channel block (AVX-512 kernels); the failing path is below it.
MAX_IN_CHANNELS = 16

_Pair = tuple[int, int]


def subsamples(x: torch.Tensor, weight: torch.Tensor, stride: _Pair, padding: _Pair | str
               ) -> bool:
    """Whether :func:`conv2d` runs this call on the subsampled input."""
    return (x.device.type == "cpu" and tuple(weight.shape[2:]) == (1, 1)
            and not isinstance(padding, str) and tuple(padding) == (0, 0)
            and tuple(stride) != (1, 1) and weight.shape[1] < MAX_IN_CHANNELS
            and torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: _Pair,
           padding: _Pair | str, dilation: _Pair, groups: int) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding, dilation, groups)``; where
    :func:`subsamples` says so, as the stride-1 convolution of ``x[..., ::sh, ::sw]``."""
    if subsamples(x, weight, stride, padding):
        return F.conv2d(x[:, :, ::stride[0], ::stride[1]], weight, bias, 1, 0, 1, groups)
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)
