"""When an inverted residual block's CPU inference runs its 1x1 expansion inside the
depthwise op (``mobilefuse::expand_depthwise``), the expanded map kept in cache a few rows at a
time.

Fused, the expanded activation, the block's largest tensor, is never written to memory and
read back; the expansion then runs on the op's own small GEMM instead of oneDNN's. Block by
block against the unfused route (oneDNN expansion, then the depthwise op) on a 2-core AMD EPYC
(Zen 5, AVX-512), float32, channels_last, eval, over the blocks of EfficientNet-B0,
MobileNetV2, MobileNetV3-Large and -Small at 224x224 (``benchmarks/expand_fusion_blocks.py``;
``benchmarks/results/blocks/expand-fusion-groups-*``):

- 16-80 input channels, every map size from 112x112 down to 14x14: 0.94-2.05x at batch 8
  (the one block below 0.97x read 1.05x in another run) and 1.03-1.43x at batch 1;
- 96-192 input channels (14x14 and 7x7 maps): 0.91-1.06x at batch 8 and 0.78-1.04x at batch
  1. There oneDNN's GEMM, blocked over many more pixels, outruns the op's, and the expanded
  map (0.2-0.5 MB an image) stays in cache on the unfused route too.
"""

from __future__ import annotations

# Input channels up to which the fused op runs.
MAX_IN_CHANNELS = 80
# expand_depthwise's squeeze-and-excitation arguments for a block without one (the two
# option strings are valid names the op checks, then ignores).
NO_SE_ARGS = (None, None, None, None, "relu", "sigmoid")


def expansion_fuses(x_shape: tuple[int, ...]) -> bool:
    """Whether a block on float32 inputs of ``x_shape`` (N, C_in, H, W) runs its expansion
    inside the depthwise op."""
    return x_shape[1] <= MAX_IN_CHANNELS
