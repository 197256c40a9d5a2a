"""Squeeze-and-excitation's heavy passes in Triton: per-(n, c) sums over H×W, and the
per-(n, c) affine map ``x * scale + shift``. NCHW and channels_last run through the same
kernels with the layout's strides."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mobilefuse.kernels.layout import memory_format_of

_AFFINE_BLOCK = 1024


@triton.jit
def _channel_sum_kernel(x_ptr, y_ptr, out_ptr, C, P, stride_n, stride_c, stride_p,
                        HAS_Y: tl.constexpr, COMPUTE: tl.constexpr, BLOCK_C: tl.constexpr,
                        BLOCK_P: tl.constexpr):
    # One program: BLOCK_C channels of one sample, summed over all P = H*W positions in tiles.
    n = tl.program_id(0).to(tl.int64)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = cs < C
    base = n * stride_n + cs.to(tl.int64)[:, None] * stride_c
    acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=COMPUTE)
    for p0 in range(0, P, BLOCK_P):
        ps = p0 + tl.arange(0, BLOCK_P)
        mask = c_mask[:, None] & (ps < P)[None, :]
        offs = base + ps.to(tl.int64)[None, :] * stride_p
        v = tl.load(x_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
        if HAS_Y:
            v = v * tl.load(y_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
        acc += v
    tl.store(out_ptr + n * C + cs, tl.sum(acc, axis=1), mask=c_mask)


@triton.jit
def _channel_affine_kernel(x_ptr, scale_ptr, shift_ptr, out_ptr, total, C, P,
                           CHANNELS_LAST: tl.constexpr, HAS_SHIFT: tl.constexpr,
                           COMPUTE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    if CHANNELS_LAST:
        c = offs % C
        n = offs // (P * C)
    else:
        c = (offs // P) % C
        n = offs // (P * C)
    nc = n * C + c
    v = tl.load(x_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    v = v * tl.load(scale_ptr + nc, mask=mask, other=0.0).to(COMPUTE)
    if HAS_SHIFT:
        v = v + tl.load(shift_ptr + nc, mask=mask, other=0.0).to(COMPUTE)
    tl.store(out_ptr + offs, v.to(out_ptr.dtype.element_ty), mask=mask)


def _compute(dtype: torch.dtype) -> tl.dtype:
    return tl.float64 if dtype == torch.float64 else tl.float32


def channel_sum(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """``(x * y).sum((2, 3))`` (``x.sum((2, 3))`` without ``y``) as an ``(N, C)`` float32
    (float64 for float64) tensor. ``x`` is contiguous or channels_last; ``y`` is made alike."""
    n, c, h, w = x.shape
    fmt = memory_format_of(x)
    x = x.contiguous(memory_format=fmt)
    if y is not None:
        y = y.contiguous(memory_format=fmt)
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    out = torch.empty((n, c), dtype=dtype, device=x.device)
    p = h * w
    if out.numel() == 0:
        return out
    if p == 0:
        return out.zero_()
    if fmt == torch.channels_last:
        strides, block_c, block_p = (p * c, 1, c), min(64, triton.next_power_of_2(c)), 16
    else:
        strides, block_c, block_p = (c * p, p, 1), 4, min(512, triton.next_power_of_2(p))
    grid = (n, triton.cdiv(c, block_c))
    _channel_sum_kernel[grid](x, x if y is None else y, out, c, p, *strides, HAS_Y=y is not None,
                              COMPUTE=_compute(x.dtype), BLOCK_C=block_c, BLOCK_P=block_p)
    return out


def channel_affine(x: torch.Tensor, scale: torch.Tensor,
                   shift: torch.Tensor | None = None) -> torch.Tensor:
    """``x * scale[n, c] (+ shift[n, c])`` in ``x``'s dtype and layout (contiguous or
    channels_last); ``scale``/``shift`` are ``(N, C)``, computed in float32 (float64)."""
    n, c, h, w = x.shape
    fmt = memory_format_of(x)
    x = x.contiguous(memory_format=fmt)
    out = torch.empty_like(x, memory_format=fmt)
    total = x.numel()
    if total == 0:
        return out
    scale = scale.contiguous()
    shift = None if shift is None else shift.contiguous()
    grid = (triton.cdiv(total, _AFFINE_BLOCK),)
    _channel_affine_kernel[grid](x, scale, scale if shift is None else shift, out, total, c,
                                 h * w, CHANNELS_LAST=fmt == torch.channels_last,
                                 HAS_SHIFT=shift is not None, COMPUTE=_compute(x.dtype),
                                 BLOCK=_AFFINE_BLOCK)
    return out
