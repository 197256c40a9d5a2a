"""Pure-PyTorch reference implementations: the oracle every kernel is tested against.

Tests call these on float64 copies of the inputs; ops fall back to them when no fused
backend can take an input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hardswish(x: torch.Tensor) -> torch.Tensor:
    """``x * relu6(x + 3) / 6`` (``F.hardswish``)."""
    return F.hardswish(x)


def hardswish_backward(grad_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Gradient of hard-swish at ``x`` times ``grad_out``, as PyTorch computes it."""
    return torch.ops.aten.hardswish_backward(grad_out, x)


def hardsigmoid(x: torch.Tensor) -> torch.Tensor:
    """``relu6(x + 3) / 6`` (``F.hardsigmoid``)."""
    return F.hardsigmoid(x)


def hardsigmoid_backward(grad_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Gradient of hard-sigmoid at ``x`` times ``grad_out``, as PyTorch computes it."""
    return torch.ops.aten.hardsigmoid_backward(grad_out, x)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """The ShuffleNet idiom: split C into ``groups``, transpose, flatten back."""
    n, c = x.shape[:2]
    rest = x.shape[2:]
    return x.reshape(n, groups, c // groups, *rest).transpose(1, 2).reshape(x.shape)
