"""When an inverted residual block's CPU inference runs its 1x1 expansion inside the depthwise
op (``mobilefuse::expand_depthwise``), the expanded map kept in cache a few rows at a time.

Fused, the expanded activation, the block's largest tensor, is never written to memory and
read back; the expansion then runs on the op's own small GEMM (weights read from L1) instead
of oneDNN's. Block by block against the unfused route (oneDNN expansion, then the depthwise
op) on a 2-core AMD EPYC (Zen 5, AVX-512), float32, channels_last, eval
(``benchmarks/expand_fusion_blocks.py``; ``benchmarks/results/blocks/expand-fusion-*``), over
the blocks of EfficientNet-B0, MobileNetV2 and MobileNetV3-Large at batch 8:

- expanded maps of 1.8-4.8 MB per image (96 and 144 channels at 112x112 and 56x56, 64 at
  112x112): 1.52-2.27x (at batch 1, 1.07-1.43x);
- 0.6-0.9 MB (192 and 240 channels at 28x28): 1.07-1.38x; but MobileNetV3's 72 channels at
  56x56 (0.9 MB): 0.95-0.96x;
- 14x14 maps (0.15-0.5 MB): 0.88-1.10x; 7x7 maps with 160-192 input channels, whose expansion
  weights no longer fit L1: 0.49-0.76x.
"""

from __future__ import annotations

# Expanded map per image, float32 bytes, from which the fused op runs.
MIN_EXPANDED_BYTES = 1 << 19
# Input channels up to which it runs: the blocks it takes have 16-40; with 160-192 it lost.
MAX_IN_CHANNELS = 64
# expand_depthwise's squeeze-and-excitation arguments for a block without one (the two
# option strings are valid names the op checks, then ignores).
NO_SE_ARGS = (None, None, None, None, "relu", "sigmoid")


def expansion_fuses(x_shape: tuple[int, ...], mid: int) -> bool:
    """Whether a block on float32 inputs of ``x_shape`` (N, C_in, H, W) expanding to ``mid``
    channels runs its expansion inside the depthwise op."""
    _, c_in, height, width = x_shape
    return c_in <= MAX_IN_CHANNELS and 4 * mid * height * width >= MIN_EXPANDED_BYTES
