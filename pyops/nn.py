"""Modules, drop-in replacements for their ``torch.nn`` namesakes (same names, same state)."""

from __future__ import annotations

import torch
from torch import nn

from mobilefuse import ops

__all__ = ["HardSwish", "HardSigmoid", "ChannelShuffle"]


class HardSwish(nn.Module):
    """Drop-in for ``nn.Hardswish``, running :func:`mobilefuse.ops.hardswish`.

    ``inplace`` is accepted for signature compatibility; the result is always a new tensor
    (the fused backward needs the unmodified input).
    """

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply hard-swish."""
        return ops.hardswish(x)


class HardSigmoid(nn.Module):
    """Drop-in for ``nn.Hardsigmoid``, running :func:`mobilefuse.ops.hardsigmoid`.

    ``inplace`` is accepted for signature compatibility; the result is always a new tensor.
    """

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply hard-sigmoid."""
        return ops.hardsigmoid(x)


class ChannelShuffle(nn.Module):
    """Drop-in for ``nn.ChannelShuffle(groups)``, running :func:`mobilefuse.ops.channel_shuffle`."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        if isinstance(groups, bool) or not isinstance(groups, int) or groups <= 0:
            raise ValueError(f"mobilefuse.nn.ChannelShuffle: groups must be a positive int, "
                             f"got {groups!r}")
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shuffle the channels of ``x`` (N, C, *) across ``groups`` groups."""
        return ops.channel_shuffle(x, self.groups)

    def extra_repr(self) -> str:
        """The group count, as ``nn.ChannelShuffle`` shows it."""
        return f"groups={self.groups}"
