"""ShuffleNetV1 (Zhang et al. 2018) and ShuffleNetV2 (Ma et al. 2018) from their stage tables.

Both are three stages of (4, 8, 4) units after a 3x3 stride-2 stem and a max-pool; a table gives
the stage widths, and the first unit of each stage halves the feature map. The channel shuffle
is an ``nn.ChannelShuffle`` module, so :func:`mobilefuse.accelerate` can swap it. ShuffleNetV2
keeps torchvision's module names (``conv1``, ``stage2``…``stage4``, ``conv5``, ``fc``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mobilefuse.models.layers import ConvNormAct, LayerFn
from mobilefuse.models.registry import register_model
from mobilefuse.models.specs import make_divisible

__all__ = [
    "SHUFFLENET_V1_WIDTHS", "SHUFFLENET_V2_WIDTHS", "STAGE_REPEATS", "ShuffleNetV1",
    "ShuffleNetV2", "ShuffleV1Unit", "ShuffleV2Unit", "shufflenet_v1", "shufflenet_v2_x0_5",
    "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0",
]

STAGE_REPEATS = (4, 8, 4)

# ShuffleNetV1 paper, Table 1: stage-2 width of the 1x net per group count (stages 3 and 4
# double it); the stem has 24 channels.
SHUFFLENET_V1_WIDTHS: dict[int, int] = {1: 144, 2: 200, 3: 240, 4: 272, 8: 384}

# ShuffleNetV2 paper, Table 5: (stem, stage 2, stage 3, stage 4, conv5) widths per multiplier.
SHUFFLENET_V2_WIDTHS: dict[float, tuple[int, int, int, int, int]] = {
    0.5: (24, 48, 96, 192, 1024), 1.0: (24, 116, 232, 464, 1024),
    1.5: (24, 176, 352, 704, 1024), 2.0: (24, 244, 488, 976, 2048),
}


class ShuffleV1Unit(nn.Module):
    """ShuffleNetV1 unit: 1x1 group conv + norm + act, shuffle, 3x3 depthwise + norm, 1x1 group
    conv + norm (in ``self.branch``); added to the input (stride 1) or concatenated with its
    3x3 average pool (stride 2), then the activation."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int,
                 first_grouped: bool, norm_layer: LayerFn, act_layer: LayerFn) -> None:
        super().__init__()
        mid = out_channels // 4  # the paper's bottleneck: a quarter of the unit's output
        branch_out = out_channels - in_channels if stride == 2 else out_channels
        first_groups = groups if first_grouped else 1
        self.branch = nn.Sequential(
            ConvNormAct(in_channels, mid, 1, groups=first_groups, norm_layer=norm_layer,
                        act_layer=act_layer),
            nn.ChannelShuffle(groups) if first_groups > 1 else nn.Identity(),
            ConvNormAct(mid, mid, 3, stride, groups=mid, norm_layer=norm_layer, act_layer=None),
            ConvNormAct(mid, branch_out, 1, groups=groups, norm_layer=norm_layer,
                        act_layer=None))
        self.shortcut = nn.AvgPool2d(3, 2, 1) if stride == 2 else nn.Identity()
        self.stride = stride
        self.act = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The unit's output."""
        out = self.branch(x)
        if self.stride == 2:
            return self.act(torch.cat((self.shortcut(x), out), 1))
        return self.act(x + out)


class ShuffleV2Unit(nn.Module):
    """ShuffleNetV2 unit: stride 1 splits the channels and transforms one half
    (``branch2``); stride 2 transforms the whole input twice (``branch1``, ``branch2``); the
    halves are concatenated and shuffled with 2 groups."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm_layer: LayerFn,
                 act_layer: LayerFn) -> None:
        super().__init__()
        half = out_channels // 2
        if stride == 1 and in_channels != out_channels:
            raise ValueError("a stride-1 unit keeps its width")
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels,
                          bias=False),
                norm_layer(in_channels),
                nn.Conv2d(in_channels, half, 1, bias=False), norm_layer(half), act_layer())
        # Flat layout (torchvision's keys): the depthwise conv at 3 and its norm at 4.
        self.branch2 = nn.Sequential(
            nn.Conv2d(in_channels if stride > 1 else half, half, 1, bias=False),
            norm_layer(half), act_layer(),
            nn.Conv2d(half, half, 3, stride, 1, groups=half, bias=False), norm_layer(half),
            nn.Conv2d(half, half, 1, bias=False), norm_layer(half), act_layer())
        self.shuffle = nn.ChannelShuffle(2)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The unit's output."""
        if self.stride == 1:
            kept, changed = x.chunk(2, dim=1)
            out = torch.cat((kept, self.branch2(changed)), 1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), 1)
        return self.shuffle(out)


class ShuffleNetV1(nn.Module):
    """ShuffleNetV1 ``s×`` with ``groups`` groups in its pointwise convolutions.

    Stage widths are the table's times ``width_mult``, rounded to a multiple of ``4 * groups``
    (the bottleneck, a quarter of a width, must split into the groups); the stem is
    ``24 * width_mult`` rounded to a multiple of ``groups``. As in the paper, the first unit's
    first pointwise convolution is not grouped (its input has only the stem's channels).
    """

    def __init__(self, groups: int = 3, width_mult: float = 1.0, num_classes: int = 1000,
                 act_layer: LayerFn = nn.ReLU, norm_layer: LayerFn = nn.BatchNorm2d) -> None:
        super().__init__()
        if groups not in SHUFFLENET_V1_WIDTHS:
            raise ValueError(f"groups must be one of {sorted(SHUFFLENET_V1_WIDTHS)}, got {groups}")
        self.input_size = (3, 224, 224)
        stem = make_divisible(24 * width_mult, groups, min_value=groups)
        width = make_divisible(SHUFFLENET_V1_WIDTHS[groups] * width_mult, 4 * groups)
        self.conv1 = ConvNormAct(3, stem, 3, 2, norm_layer=norm_layer, act_layer=act_layer)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_channels = stem
        for i, repeats in enumerate(STAGE_REPEATS):
            out = width * 2**i
            units = [ShuffleV1Unit(in_channels if j == 0 else out, out, 2 if j == 0 else 1,
                                   groups, first_grouped=i > 0 or j > 0, norm_layer=norm_layer,
                                   act_layer=act_layer) for j in range(repeats)]
            setattr(self, f"stage{i + 2}", nn.Sequential(*units))
            in_channels = out
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of images ``x`` (N, 3, H, W)."""
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(x)))
        return self.fc(x.mean((2, 3)))


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2 ``width_mult×`` (0.5, 1.0, 1.5, 2.0) from :data:`SHUFFLENET_V2_WIDTHS`."""

    def __init__(self, width_mult: float = 1.0, num_classes: int = 1000,
                 act_layer: LayerFn = nn.ReLU, norm_layer: LayerFn = nn.BatchNorm2d) -> None:
        super().__init__()
        if width_mult not in SHUFFLENET_V2_WIDTHS:
            raise ValueError(f"width_mult must be one of {sorted(SHUFFLENET_V2_WIDTHS)}, "
                             f"got {width_mult}")
        self.input_size = (3, 224, 224)
        stem, *stages, last = SHUFFLENET_V2_WIDTHS[width_mult]
        self.conv1 = ConvNormAct(3, stem, 3, 2, norm_layer=norm_layer, act_layer=act_layer)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_channels = stem
        for i, (out, repeats) in enumerate(zip(stages, STAGE_REPEATS, strict=True)):
            units = [ShuffleV2Unit(in_channels if j == 0 else out, out, 2 if j == 0 else 1,
                                   norm_layer, act_layer) for j in range(repeats)]
            setattr(self, f"stage{i + 2}", nn.Sequential(*units))
            in_channels = out
        self.conv5 = ConvNormAct(in_channels, last, 1, norm_layer=norm_layer,
                                 act_layer=act_layer)
        self.fc = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of images ``x`` (N, 3, H, W)."""
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
        return self.fc(x.mean((2, 3)))


_V1 = "Zhang et al. 2018, ShuffleNet (arXiv:1707.01083)"
_V2 = "Ma et al. 2018, ShuffleNet V2 (arXiv:1807.11164)"


@register_model("shufflenet_v1", _V1, torchvision=False)
def shufflenet_v1(*, groups: int = 3, width_mult: float = 1.0, **kwargs: Any) -> ShuffleNetV1:
    """ShuffleNetV1 ``width_mult×`` (0.5, 1.0, 1.5, 2.0) with ``groups`` (1, 2, 3, 4, 8);
    ``kwargs`` go to :class:`ShuffleNetV1` (``num_classes``, ``act_layer``, ``norm_layer``)."""
    return ShuffleNetV1(groups, width_mult, **kwargs)


@register_model("shufflenet_v2", _V2)
def shufflenet_v2_x0_5(**kwargs: Any) -> ShuffleNetV2:
    """ShuffleNetV2 ×0.5; ``kwargs`` go to :class:`ShuffleNetV2`."""
    return ShuffleNetV2(0.5, **kwargs)


@register_model("shufflenet_v2", _V2)
def shufflenet_v2_x1_0(**kwargs: Any) -> ShuffleNetV2:
    """ShuffleNetV2 ×1.0; ``kwargs`` go to :class:`ShuffleNetV2`."""
    return ShuffleNetV2(1.0, **kwargs)


@register_model("shufflenet_v2", _V2)
def shufflenet_v2_x1_5(**kwargs: Any) -> ShuffleNetV2:
    """ShuffleNetV2 ×1.5; ``kwargs`` go to :class:`ShuffleNetV2`."""
    return ShuffleNetV2(1.5, **kwargs)


@register_model("shufflenet_v2", _V2)
def shufflenet_v2_x2_0(**kwargs: Any) -> ShuffleNetV2:
    """ShuffleNetV2 ×2.0; ``kwargs`` go to :class:`ShuffleNetV2`."""
    return ShuffleNetV2(2.0, **kwargs)
