"""Hard-swish and hard-sigmoid in Triton: one flat pass over dense storage."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mobilefuse.kernels.layout import dense_like

HARDSWISH: int = 0
HARDSIGMOID: int = 1
_BLOCK = 2048


@triton.jit
def _activation_forward_kernel(x_ptr, y_ptr, n, ACT: tl.constexpr, COMPUTE: tl.constexpr,
                               BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask).to(COMPUTE)
    # relu6(x + 3) / 6 (multiply: no divide); NaN must come through, as in torch.
    gate = tl.minimum(tl.maximum(x + 3.0, 0.0, propagate_nan=tl.PropagateNan.ALL), 6.0,
                      propagate_nan=tl.PropagateNan.ALL) * (1.0 / 6.0)
    if ACT == 0:
        y = x * gate
    else:
        y = gate
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _activation_backward_kernel(g_ptr, x_ptr, gx_ptr, n, ACT: tl.constexpr,
                                COMPUTE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask).to(COMPUTE)
    g = tl.load(g_ptr + offs, mask=mask).to(COMPUTE)
    if ACT == 0:
        # torch's branches: 0 up to -3, g*(x/3 + 1/2) strictly inside, g from 3 on.
        gx = tl.where(x <= -3.0, 0.0, tl.where(x >= 3.0, g, g * (x * (1.0 / 3.0) + 0.5)))
    else:
        gx = tl.where((x > -3.0) & (x < 3.0), g * (1.0 / 6.0), 0.0)
    tl.store(gx_ptr + offs, gx.to(gx_ptr.dtype.element_ty), mask=mask)


def _compute_dtype(dtype: torch.dtype) -> tl.dtype:
    return tl.float64 if dtype == torch.float64 else tl.float32


def _grid(n: int) -> tuple[int]:
    return (triton.cdiv(n, _BLOCK),)


def activation_forward(x: torch.Tensor, act: int) -> torch.Tensor:
    """``act(x)`` (``HARDSWISH`` or ``HARDSIGMOID``), output in ``x``'s memory format."""
    out = torch.empty_like(x)
    src = dense_like(x, out)
    n = src.numel()
    if n:
        _activation_forward_kernel[_grid(n)](src, out, n, ACT=act,
                                             COMPUTE=_compute_dtype(x.dtype), BLOCK=_BLOCK)
    return out


def activation_backward(grad_out: torch.Tensor, x: torch.Tensor, act: int) -> torch.Tensor:
    """Gradient of ``act`` at ``x`` times ``grad_out``, laid out like ``x``."""
    grad_in = torch.empty_like(x)
    src = dense_like(x, grad_in)
    g = dense_like(grad_out, grad_in)
    n = src.numel()
    if n:
        _activation_backward_kernel[_grid(n)](g, src, grad_in, n, ACT=act,
                                              COMPUTE=_compute_dtype(x.dtype), BLOCK=_BLOCK)
    return grad_in
