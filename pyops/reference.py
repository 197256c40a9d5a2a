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
    """Gradient of hard-swish at ``x`` times ``grad_out``, with PyTorch's choice at the kinks
    (0 for ``x <= -3``, ``grad_out`` for ``x >= 3``), exact in ``x``'s dtype."""
    inside = grad_out * (x / 3 + 0.5)
    return torch.where(x <= -3, torch.zeros_like(inside), torch.where(x >= 3, grad_out, inside))


def hardsigmoid(x: torch.Tensor) -> torch.Tensor:
    """``relu6(x + 3) / 6`` (``F.hardsigmoid``)."""
    return F.hardsigmoid(x)


def hardsigmoid_backward(grad_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Gradient of hard-sigmoid at ``x`` times ``grad_out`` (0 outside ``-3 < x < 3``), exact in
    ``x``'s dtype (``aten.hardsigmoid_backward`` rounds 1/6 to float32 even for float64)."""
    inside = grad_out / 6
    return torch.where((x > -3) & (x < 3), inside, torch.zeros_like(inside))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """The ShuffleNet idiom: split C into ``groups``, transpose, flatten back."""
    n, c = x.shape[:2]
    rest = x.shape[2:]
    return x.reshape(n, groups, c // groups, *rest).transpose(1, 2).reshape(x.shape)
