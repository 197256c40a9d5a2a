"""Channel shuffle in Triton: a flat gather over (outer, C, inner) elements.

Contiguous input is (N, C, H*W); channels_last input is (N*H*W, C, 1). Values move as
integers of the same width, so the permutation is bit-exact for every dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mobilefuse.kernels.layout import uses_channels_last

_BLOCK = 2048
_BITS_AS_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@triton.jit
def _channel_shuffle_forward_kernel(x_ptr, out_ptr, total, channels, inner, groups,
                                    BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    i = offs % inner
    row = offs // inner
    oc = row % channels
    outer = row // channels
    cpg = channels // groups
    ic = (oc % groups) * cpg + oc // groups
    vals = tl.load(x_ptr + (outer * channels + ic) * inner + i, mask=mask)
    tl.store(out_ptr + offs, vals, mask=mask)


def channel_shuffle_forward(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``x.view(N, g, C//g, *).transpose(1, 2)`` flattened back, keeping channels_last."""
    channels_last = uses_channels_last(x)
    src = x if channels_last else x.contiguous()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty_like(src, memory_format=fmt)
    total = src.numel()
    if total == 0:
        return out
    batch, channels = src.shape[0], src.shape[1]
    spatial = total // (batch * channels)
    outer, inner = (batch * spatial, 1) if channels_last else (batch, spatial)
    as_int = _BITS_AS_INT[src.element_size()]
    _channel_shuffle_forward_kernel[(triton.cdiv(total, _BLOCK),)](
        src.view(as_int), out.view(as_int), total, channels, inner, groups, BLOCK=_BLOCK)
    return out
