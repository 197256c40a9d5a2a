"""``torch.autocast`` for mobilefuse's convolution ops.

PyTorch casts a convolution's float32 inputs to autocast's dtype and returns that dtype; the
ops that contain convolutions (depthwise, squeeze-and-excitation, the fused block) do the same
here, so a model under autocast meets no dtype mismatch between its activations and its float32
parameters. The kernels then run in the low-precision dtype with float32 accumulation. The
cast is an ordinary differentiable ``.to()``: gradients reach float32 parameters in float32.
Elementwise ops (activations, channel shuffle) keep their input's dtype, as PyTorch's do.
"""

from __future__ import annotations

import torch

# Device types with an autocast mode of their own.
_AUTOCAST_DEVICES = ("cpu", "cuda")


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast gives convolutions on ``device``, or None when autocast is off."""
    kind = device.type
    if kind not in _AUTOCAST_DEVICES or not torch.is_autocast_enabled(kind):
        return None
    return torch.get_autocast_dtype(kind)


def _cast(t: object, dtype: torch.dtype) -> object:
    # Autocast leaves float64 and non-float tensors alone; anything else is for the checks.
    if (not isinstance(t, torch.Tensor) or not t.is_floating_point()
            or t.dtype in (dtype, torch.float64)):
        return t
    return t.to(dtype)


def autocast_args(x: object, *others: object) -> tuple[object, ...]:
    """``(x, *others)`` with their float tensors cast as autocast casts a convolution's inputs
    on ``x``'s device; unchanged when autocast is off there (or ``x`` is no tensor, which the
    argument checks then report)."""
    if not isinstance(x, torch.Tensor):
        return (x, *others)
    dtype = autocast_dtype(x.device)
    if dtype is None:
        return (x, *others)
    return tuple(_cast(t, dtype) for t in (x, *others))
