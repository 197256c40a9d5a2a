"""ResNet-18/34/50/101 (He et al. 2016) from a table of (block, units per stage), as baselines.

Module names are torchvision's (``conv1``, ``bn1``, ``layer1``…``layer4``, ``fc``); the
bottleneck strides in its 3x3 convolution ("ResNet v1.5"), as torchvision's does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mobilefuse.models.layers import LayerFn, init_weights
from mobilefuse.models.registry import register_model

__all__ = ["RESNET_LAYERS", "BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34",
           "resnet50", "resnet101"]

# depth: (block kind, units in each of the four stages)
RESNET_LAYERS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3)),
}


def _conv(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with norms and a shortcut (projected when the shape changes)."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int, norm_layer: LayerFn,
                 act_layer: LayerFn) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv(in_channels, width, 3, stride), norm_layer(width)
        self.relu = act_layer()
        self.conv2, self.bn2 = _conv(width, width, 3), norm_layer(width)
        self.downsample = _shortcut(in_channels, width, stride, norm_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, with norms and a shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int, norm_layer: LayerFn,
                 act_layer: LayerFn) -> None:
        super().__init__()
        out = width * self.expansion
        self.conv1, self.bn1 = _conv(in_channels, width, 1), norm_layer(width)
        self.conv2, self.bn2 = _conv(width, width, 3, stride), norm_layer(width)
        self.conv3, self.bn3 = _conv(width, out, 1), norm_layer(out)
        self.relu = act_layer()
        self.downsample = _shortcut(in_channels, out, stride, norm_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


def _shortcut(cin: int, cout: int, stride: int, norm_layer: LayerFn) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(_conv(cin, cout, 1, stride), norm_layer(cout))


class ResNet(nn.Module):
    """ResNet-``depth`` (18, 34, 50, 101) from :data:`RESNET_LAYERS`."""

    def __init__(self, depth: int = 50, num_classes: int = 1000,
                 act_layer: LayerFn = nn.ReLU, norm_layer: LayerFn = nn.BatchNorm2d) -> None:
        super().__init__()
        kind, units = RESNET_LAYERS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.input_size = (3, 224, 224)
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), norm_layer(64)
        self.relu = act_layer()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_channels = 64
        for i, n in enumerate(units):
            width = 64 * 2**i
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block(in_channels, width, stride, norm_layer, act_layer))
                in_channels = width * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        init_weights(self, linear="default")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of images ``x`` (N, 3, H, W)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


_PAPER = "He et al. 2016, Deep Residual Learning (arXiv:1512.03385)"


@register_model("resnet", _PAPER)
def resnet18(**kwargs: Any) -> ResNet:
    """ResNet-18; ``kwargs`` go to :class:`ResNet`."""
    return ResNet(18, **kwargs)


@register_model("resnet", _PAPER)
def resnet34(**kwargs: Any) -> ResNet:
    """ResNet-34; ``kwargs`` go to :class:`ResNet`."""
    return ResNet(34, **kwargs)


@register_model("resnet", _PAPER)
def resnet50(**kwargs: Any) -> ResNet:
    """ResNet-50; ``kwargs`` go to :class:`ResNet`."""
    return ResNet(50, **kwargs)


@register_model("resnet", _PAPER)
def resnet101(**kwargs: Any) -> ResNet:
    """ResNet-101; ``kwargs`` go to :class:`ResNet`."""
    return ResNet(101, **kwargs)
