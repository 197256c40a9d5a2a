"""Shape-and-layout functions (fake kernels) shared by the C++ and Triton ops.

They mirror the kernels' output layout exactly: activations keep the input's layout
(``empty_like``); channel_shuffle writes channels_last for a channels_last input and
contiguous otherwise.
"""

from __future__ import annotations

import torch

from mobilefuse.kernels.layout import shuffle_uses_channels_last


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
    if shuffle_uses_channels_last(x):
        return torch.empty_like(x, memory_format=torch.channels_last)
    return torch.empty_like(x, memory_format=torch.contiguous_format)
