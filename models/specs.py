"""Block spec tables of MobileNetV1/V2/V3 and EfficientNet-B0…B7, and their walker.

Each network is one :class:`ModelSpec`: a stem, a table of :class:`BlockSpec` rows (timm's
``"ir_r2_k3_s2_e6_c24_se0.25"`` strings as typed fields) and a head, plus the width rule
(:func:`make_divisible`) and depth rule (:func:`scale_repeats`) that turn a row into blocks.
:func:`expand_blocks` walks a table into one :class:`BlockArgs` per block, with the channel
counts and feature-map sizes each block sees; :func:`depthwise_layers` lists the depthwise
convolutions of a network, named by torchvision's module paths.

The tables follow torchvision's definitions (``mobilenet_v2``, ``mobilenet_v3_large``,
``mobilenet_v3_small``, ``efficientnet_b0``), which at multiplier 1.0 equal timm's
``mobilenetv2_100``, ``mobilenetv3_large_100``, ``mobilenetv3_small_100`` and
``efficientnet_b0``; MobileNetV1 follows its paper (Howard et al. 2017, Table 1), and
EfficientNet-B1…B7 are B0's table under the compound-scaling coefficients of
:data:`EFFICIENTNET_SCALING` (:func:`efficientnet_spec`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

__all__ = [
    "BlockArgs", "BlockSpec", "DepthwiseLayer", "EFFICIENTNET_SCALING", "HeadSpec", "MODEL_SPECS",
    "ModelSpec", "StemSpec", "conv_output_size", "depthwise_layers", "efficientnet_spec",
    "expand_blocks", "get_spec", "list_specs",
    "make_divisible", "same_padding", "scale_repeats", "unique_depthwise_layers",
    "unique_layers",
]


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """``value`` rounded to the nearest multiple of ``divisor``, never below 90% of ``value``.

    The channel rule of torchvision's ``_make_divisible`` and timm's ``make_divisible``.
    """
    floor = divisor if min_value is None else min_value
    rounded = max(floor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:  # rounding down must not drop more than 10% of the channels
        rounded += divisor
    return rounded


def scale_repeats(repeats: int, depth_mult: float) -> int:
    """Blocks in a row after the depth multiplier (EfficientNet's ``ceil(n * d)``)."""
    return int(math.ceil(repeats * depth_mult))


def same_padding(kernel: int, dilation: int = 1) -> int:
    """torchvision's symmetric padding, ``(kernel - 1) // 2 * dilation`` (``k // 2`` for odd k)."""
    return (kernel - 1) // 2 * dilation


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution along one dimension (dilation 1)."""
    return (size + 2 * padding - kernel) // stride + 1


@dataclass(frozen=True)
class StemSpec:
    """The first, full convolution: 3 -> ``out_channels`` (scaled by the width multiplier)."""

    out_channels: int
    kernel: int = 3
    stride: int = 2
    activation: str = "relu6"


@dataclass(frozen=True)
class BlockSpec:
    """One row of a table: ``repeats`` blocks of one kind; only the first has ``stride``.

    Attributes:
        stage: timm's stage index (rows of one stage are listed together).
        block: ``"ds"`` (depthwise-separable: no expansion conv) or ``"ir"`` (inverted
            residual / MBConv: 1x1 expand, depthwise, optional SE, 1x1 project).
        expansion: hidden width / input width (1 for ``"ds"``).
        kernel: depthwise kernel size (square).
        stride: stride of the first block of the row (the others use 1).
        out_channels: output width before the width multiplier.
        repeats: blocks in the row before the depth multiplier.
        se_ratio: squeeze-excite reduction ratio, or None for no SE (see
            :attr:`ModelSpec.se_from_expanded` for what it is a ratio of).
        activation: the activation after the expansion and the depthwise convolutions.
    """

    stage: int
    block: str
    expansion: float
    kernel: int
    stride: int
    out_channels: int
    repeats: int
    se_ratio: float | None
    activation: str


@dataclass(frozen=True)
class HeadSpec:
    """The 1x1 convolution after the last block and the classifier's optional hidden layer."""

    out_channels: int
    activation: str
    hidden: int | None = None  # MobileNetV3: Linear(out_channels, hidden) before the classifier


@dataclass(frozen=True)
class ModelSpec:
    """A whole network: stem, block table, head and the rules that scale and name them.

    Attributes:
        name: torchvision's function name of the network.
        family: ``"mobilenet_v1"``, ``"mobilenet_v2"``, ``"mobilenet_v3"`` or
            ``"efficientnet"``: selects the module naming and the depth rule.
        stem, blocks, head: the layers, before scaling (MobileNetV1 has no head).
        width_mult, depth_mult: the multipliers applied to channels and repeats.
        round_expanded: whether the hidden width ``in * expansion`` is rounded with
            :func:`make_divisible` (MobileNetV3, EfficientNet) or with ``round`` (MobileNetV2).
        se_from_expanded: whether ``se_ratio`` is a fraction of the hidden width
            (MobileNetV3) or of the block's input width (EfficientNet).
        se_round: whether the SE width is rounded with :func:`make_divisible` (MobileNetV3).
        se_gate: the SE gate, ``"hardsigmoid"`` or ``"sigmoid"``.
        se_activation: the SE squeeze activation.
        resolution: the default input height = width.
        dropout: the classifier's dropout probability.
        bn_eps, bn_momentum: the BatchNorm settings the published weights were trained with.
    """

    name: str
    family: str
    stem: StemSpec
    blocks: tuple[BlockSpec, ...]
    head: HeadSpec | None
    width_mult: float = 1.0
    depth_mult: float = 1.0
    round_expanded: bool = True
    se_from_expanded: bool = False
    se_round: bool = False
    se_gate: str = "sigmoid"
    se_activation: str = "relu"
    resolution: int = 224
    dropout: float = 0.2
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1

    def channels(self, value: float) -> int:
        """``value`` after the width multiplier, made divisible by 8."""
        return make_divisible(value * self.width_mult, 8)

    def head_channels(self) -> int:
        """The head convolution's width: MobileNetV2's is 1280 scaled but never narrowed;
        MobileNetV3's and EfficientNet's keep their ratio (6x, 4x) to the last block's."""
        if self.head is None:
            raise ValueError(f"{self.name} has no head convolution")
        if self.family == "mobilenet_v2":
            return make_divisible(self.head.out_channels * max(1.0, self.width_mult), 8)
        last = self.blocks[-1].out_channels
        return self.channels(last) * self.head.out_channels // last


@dataclass(frozen=True)
class BlockArgs:
    """One block of a network after scaling, with the sizes it sees (square maps)."""

    index: int  # position among all blocks, from 0
    stage: int
    stage_index: int  # position within its stage, from 0
    block: str
    in_channels: int
    mid_channels: int  # the depthwise convolution's width
    out_channels: int
    kernel: int
    stride: int
    se_channels: int | None
    activation: str
    input_size: int

    @property
    def padding(self) -> int:
        """The depthwise convolution's padding."""
        return same_padding(self.kernel)

    @property
    def output_size(self) -> int:
        """The feature-map size after the block."""
        return conv_output_size(self.input_size, self.kernel, self.stride, self.padding)

    @property
    def has_expansion(self) -> bool:
        """Whether the block starts with a 1x1 expansion convolution."""
        return self.mid_channels != self.in_channels

    @property
    def residual(self) -> bool:
        """Whether the block adds its input to its output."""
        return self.stride == 1 and self.in_channels == self.out_channels


@dataclass(frozen=True)
class DepthwiseLayer:
    """One depthwise convolution of a network: ``act(conv(x, groups=channels))``.

    Attributes:
        model: the network's name.
        name: torchvision's module path of the ``nn.Conv2d``.
        block: index of its block among all blocks of the network.
        channels, kernel, stride, padding: the convolution (square kernel, dilation 1).
        input_size: input height = width.
        activation: the activation after it (and its BatchNorm) in the network.
    """

    model: str
    name: str
    block: int
    channels: int
    kernel: int
    stride: int
    padding: int
    input_size: int
    activation: str

    @property
    def output_size(self) -> int:
        """Output height = width."""
        return conv_output_size(self.input_size, self.kernel, self.stride, self.padding)

    @property
    def key(self) -> tuple[int, int, int, int]:
        """``(channels, input_size, kernel, stride)``: layers equal on it cost the same."""
        return (self.channels, self.input_size, self.kernel, self.stride)


def _row(stage: int, block: str, expansion: float, kernel: int, stride: int,
         out_channels: int, repeats: int, activation: str,
         se_ratio: float | None = None) -> BlockSpec:
    return BlockSpec(stage, block, expansion, kernel, stride, out_channels, repeats, se_ratio,
                     activation)


# The paper's Table 1: depthwise-separable blocks (dw 3x3 + BN + ReLU, pw 1x1 + BN + ReLU);
# "ds" rows with the width of their pointwise output. (Its last stride-2 entry is a typo: s1.)
MOBILENET_V1 = ModelSpec(
    name="mobilenet_v1", family="mobilenet_v1",
    stem=StemSpec(32, activation="relu"),
    blocks=(
        _row(0, "ds", 1, 3, 1, 64, 1, "relu"),
        _row(1, "ds", 1, 3, 2, 128, 1, "relu"),
        _row(1, "ds", 1, 3, 1, 128, 1, "relu"),
        _row(2, "ds", 1, 3, 2, 256, 1, "relu"),
        _row(2, "ds", 1, 3, 1, 256, 1, "relu"),
        _row(3, "ds", 1, 3, 2, 512, 1, "relu"),
        _row(3, "ds", 1, 3, 1, 512, 5, "relu"),
        _row(4, "ds", 1, 3, 2, 1024, 1, "relu"),
        _row(4, "ds", 1, 3, 1, 1024, 1, "relu"),
    ),
    head=None,
    dropout=0.0,
)

# torchvision: inverted_residual_setting (t, c, n, s); timm: "ds_r1_k3_s1_c16", "ir_r2_k3_s2_e6_c24"
MOBILENET_V2 = ModelSpec(
    name="mobilenet_v2", family="mobilenet_v2",
    stem=StemSpec(32, activation="relu6"),
    blocks=(
        _row(0, "ds", 1, 3, 1, 16, 1, "relu6"),
        _row(1, "ir", 6, 3, 2, 24, 2, "relu6"),
        _row(2, "ir", 6, 3, 2, 32, 3, "relu6"),
        _row(3, "ir", 6, 3, 2, 64, 4, "relu6"),
        _row(4, "ir", 6, 3, 1, 96, 3, "relu6"),
        _row(5, "ir", 6, 3, 2, 160, 3, "relu6"),
        _row(6, "ir", 6, 3, 1, 320, 1, "relu6"),
    ),
    head=HeadSpec(1280, "relu6"),
    round_expanded=False,  # torchvision: hidden_dim = int(round(inp * t))
)

# The paper's / torchvision's bneck table with the hidden widths as ratios (timm's form):
# 64 = 16 * 4, 72 = 24 * 3, 120 = 40 * 3, 240 = 40 * 6, 200 = 80 * 2.5, 184 = 80 * 2.3, ...
MOBILENET_V3_LARGE = ModelSpec(
    name="mobilenet_v3_large", family="mobilenet_v3",
    stem=StemSpec(16, activation="hardswish"),
    blocks=(
        _row(0, "ds", 1, 3, 1, 16, 1, "relu"),
        _row(1, "ir", 4, 3, 2, 24, 1, "relu"),
        _row(1, "ir", 3, 3, 1, 24, 1, "relu"),
        _row(2, "ir", 3, 5, 2, 40, 3, "relu", se_ratio=0.25),
        _row(3, "ir", 6, 3, 2, 80, 1, "hardswish"),
        _row(3, "ir", 2.5, 3, 1, 80, 1, "hardswish"),
        _row(3, "ir", 2.3, 3, 1, 80, 2, "hardswish"),
        _row(4, "ir", 6, 3, 1, 112, 2, "hardswish", se_ratio=0.25),
        _row(5, "ir", 6, 5, 2, 160, 3, "hardswish", se_ratio=0.25),
    ),
    head=HeadSpec(960, "hardswish", hidden=1280),
    se_from_expanded=True, se_round=True, se_gate="hardsigmoid", se_activation="relu",
    bn_eps=1e-3, bn_momentum=0.01,
)

# The paper's Small table as ratios: 72 = 16 * 4.5, 88 = 24 * 3.67, 96 = 24 * 4, 240 = 40 * 6, ...
MOBILENET_V3_SMALL = replace(
    MOBILENET_V3_LARGE, name="mobilenet_v3_small",
    blocks=(
        _row(0, "ds", 1, 3, 2, 16, 1, "relu", se_ratio=0.25),
        _row(1, "ir", 4.5, 3, 2, 24, 1, "relu"),
        _row(1, "ir", 3.67, 3, 1, 24, 1, "relu"),
        _row(2, "ir", 4, 5, 2, 40, 1, "hardswish", se_ratio=0.25),
        _row(2, "ir", 6, 5, 1, 40, 2, "hardswish", se_ratio=0.25),
        _row(3, "ir", 3, 5, 1, 48, 2, "hardswish", se_ratio=0.25),
        _row(4, "ir", 6, 5, 2, 96, 3, "hardswish", se_ratio=0.25),
    ),
    head=HeadSpec(576, "hardswish", hidden=1024),
)

# torchvision's MBConvConfig rows (expand, kernel, stride, in, out, layers) of B0.
EFFICIENTNET_B0 = ModelSpec(
    name="efficientnet_b0", family="efficientnet",
    stem=StemSpec(32, activation="silu"),
    blocks=(
        _row(0, "ds", 1, 3, 1, 16, 1, "silu", se_ratio=0.25),
        _row(1, "ir", 6, 3, 2, 24, 2, "silu", se_ratio=0.25),
        _row(2, "ir", 6, 5, 2, 40, 2, "silu", se_ratio=0.25),
        _row(3, "ir", 6, 3, 2, 80, 3, "silu", se_ratio=0.25),
        _row(4, "ir", 6, 5, 1, 112, 3, "silu", se_ratio=0.25),
        _row(5, "ir", 6, 5, 2, 192, 4, "silu", se_ratio=0.25),
        _row(6, "ir", 6, 3, 1, 320, 1, "silu", se_ratio=0.25),
    ),
    head=HeadSpec(1280, "silu"),
    se_from_expanded=False, se_gate="sigmoid", se_activation="silu",
)

# Compound scaling (Tan & Le 2019): (width, depth, resolution, dropout) of B0…B7, the
# coefficients of the released checkpoints (and of torchvision).
EFFICIENTNET_SCALING: dict[str, tuple[float, float, int, float]] = {
    "b0": (1.0, 1.0, 224, 0.2), "b1": (1.0, 1.1, 240, 0.2), "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3), "b4": (1.4, 1.8, 380, 0.4), "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5), "b7": (2.0, 3.1, 600, 0.5),
}


def efficientnet_spec(variant: str) -> ModelSpec:
    """EfficientNet-``variant`` (``"b0"`` … ``"b7"``): B0's table under its scaling rule."""
    width, depth, resolution, dropout = EFFICIENTNET_SCALING[variant]
    # B5-B7 were trained (TF ports) with TF's BatchNorm settings.
    bn = (1e-3, 0.01) if variant in ("b5", "b6", "b7") else (1e-5, 0.1)
    return replace(EFFICIENTNET_B0, name=f"efficientnet_{variant}", width_mult=width,
                   depth_mult=depth, resolution=resolution, dropout=dropout, bn_eps=bn[0],
                   bn_momentum=bn[1])


MODEL_SPECS: dict[str, ModelSpec] = {
    spec.name: spec for spec in (
        MOBILENET_V1, MOBILENET_V2, MOBILENET_V3_LARGE, MOBILENET_V3_SMALL,
        *(efficientnet_spec(v) for v in EFFICIENTNET_SCALING))}


def list_specs() -> list[str]:
    """The names of the networks with a spec table."""
    return list(MODEL_SPECS)


def get_spec(model: str) -> ModelSpec:
    """The spec of ``model`` (a name from :func:`list_specs`)."""
    try:
        return MODEL_SPECS[model]
    except KeyError:
        raise ValueError(f"unknown model {model!r}; known: {', '.join(MODEL_SPECS)}") from None


def _mid_channels(spec: ModelSpec, row: BlockSpec, in_channels: int, base_in: int) -> int:
    if row.block == "ds":
        return in_channels
    if spec.family == "mobilenet_v3":
        # torchvision scales the paper's hidden width (the ratio times the unscaled input,
        # an integer) rather than taking the ratio of the scaled input: same at width 1.
        return make_divisible(round(base_in * row.expansion) * spec.width_mult, 8)
    hidden = in_channels * row.expansion
    return make_divisible(hidden, 8) if spec.round_expanded else int(round(hidden))


def _se_channels(spec: ModelSpec, row: BlockSpec, in_channels: int, mid: int) -> int | None:
    if row.se_ratio is None:
        return None
    width = (mid if spec.se_from_expanded else in_channels) * row.se_ratio
    return make_divisible(int(width), 8) if spec.se_round else max(1, int(width))


def expand_blocks(spec: ModelSpec, resolution: int = 224) -> list[BlockArgs]:
    """Every block of ``spec`` in order, scaled, with its widths and input size."""
    in_channels = spec.channels(spec.stem.out_channels)
    base_in = spec.stem.out_channels  # before the width multiplier
    size = conv_output_size(resolution, spec.stem.kernel, spec.stem.stride,
                            same_padding(spec.stem.kernel))
    blocks: list[BlockArgs] = []
    stage_counts: dict[int, int] = {}
    # MobileNets scale widths only; EfficientNet also scales depth.
    depth_mult = spec.depth_mult if spec.family == "efficientnet" else 1.0
    for row in spec.blocks:
        out_channels = spec.channels(row.out_channels)
        for i in range(scale_repeats(row.repeats, depth_mult)):
            mid = _mid_channels(spec, row, in_channels, base_in)
            args = BlockArgs(
                index=len(blocks), stage=row.stage,
                stage_index=stage_counts.get(row.stage, 0), block=row.block,
                in_channels=in_channels, mid_channels=mid, out_channels=out_channels,
                kernel=row.kernel, stride=row.stride if i == 0 else 1,
                se_channels=_se_channels(spec, row, in_channels, mid),
                activation=row.activation, input_size=size)
            blocks.append(args)
            stage_counts[row.stage] = args.stage_index + 1
            in_channels, base_in, size = out_channels, row.out_channels, args.output_size
    return blocks


def _depthwise_name(spec: ModelSpec, block: BlockArgs) -> str:
    """torchvision's module path of a block's depthwise ``nn.Conv2d``."""
    # The depthwise Conv2dNormActivation is the block's first layer, or its second after an
    # expansion; ".0" is the conv inside it.
    position = 1 if block.has_expansion else 0
    if spec.family == "mobilenet_v1":
        return f"features.{block.index + 1}.0.0"
    if spec.family == "mobilenet_v2":
        return f"features.{block.index + 1}.conv.{position}.0"
    if spec.family == "mobilenet_v3":
        return f"features.{block.index + 1}.block.{position}.0"
    # EfficientNet nests blocks in one Sequential per stage.
    return f"features.{block.stage + 1}.{block.stage_index}.block.{position}.0"


def depthwise_layers(model: str, resolution: int = 224) -> list[DepthwiseLayer]:
    """Every depthwise convolution of ``model`` at ``resolution`` (square input), in order."""
    spec = get_spec(model)
    return [
        DepthwiseLayer(model=spec.name, name=_depthwise_name(spec, b), block=b.index,
                       channels=b.mid_channels, kernel=b.kernel, stride=b.stride,
                       padding=b.padding, input_size=b.input_size, activation=b.activation)
        for b in expand_blocks(spec, resolution)
    ]


def unique_layers(layers: Iterable[DepthwiseLayer]) -> list[DepthwiseLayer]:
    """``layers`` with one per :attr:`DepthwiseLayer.key`, the first met kept, in order."""
    seen: dict[tuple[int, int, int, int], DepthwiseLayer] = {}
    for layer in layers:
        seen.setdefault(layer.key, layer)
    return list(seen.values())


def unique_depthwise_layers(models: list[str] | tuple[str, ...],
                            resolution: int = 224) -> list[DepthwiseLayer]:
    """The depthwise layers of ``models`` with one per :attr:`DepthwiseLayer.key`, the first
    met (in the order of ``models``, then of the network) kept."""
    return unique_layers(layer for model in models
                         for layer in depthwise_layers(model, resolution))
