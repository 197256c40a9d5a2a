"""VGG-16/19 (Simonyan & Zisserman 2015) from a table of (width, convolutions) per stage.

Module names are torchvision's (``features.N`` in one flat Sequential, ``classifier``), with or
without BatchNorm (``vgg16_bn``, ``vgg19_bn``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mobilefuse.models.layers import LayerFn, init_weights
from mobilefuse.models.registry import register_model

__all__ = ["VGG", "VGG_STAGES", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"]

# depth: (width, 3x3 convolutions) of the five stages, each closed by a 2x2 max-pool.
VGG_STAGES: dict[int, tuple[tuple[int, int], ...]] = {
    16: ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)),
    19: ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4)),
}


class VGG(nn.Module):
    """VGG-``depth`` (16, 19); ``norm_layer`` (e.g. ``nn.BatchNorm2d``) follows every
    convolution when given."""

    def __init__(self, depth: int = 16, num_classes: int = 1000, dropout: float = 0.5,
                 act_layer: LayerFn = nn.ReLU, norm_layer: LayerFn | None = None) -> None:
        super().__init__()
        self.input_size = (3, 224, 224)
        layers: list[nn.Module] = []
        in_channels = 3
        for width, convs in VGG_STAGES[depth]:
            for _ in range(convs):
                layers.append(nn.Conv2d(in_channels, width, 3, padding=1))
                if norm_layer is not None:
                    layers.append(norm_layer(width))
                layers.append(act_layer())
                in_channels = width
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(
            nn.Linear(in_channels * 7 * 7, 4096), act_layer(), nn.Dropout(dropout),
            nn.Linear(4096, 4096), act_layer(), nn.Dropout(dropout),
            nn.Linear(4096, num_classes))
        init_weights(self, linear="normal")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of images ``x`` (N, 3, H, W); at least 32x32."""
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


_PAPER = "Simonyan & Zisserman 2015, Very Deep Convolutional Networks (arXiv:1409.1556)"


@register_model("vgg", _PAPER)
def vgg16(**kwargs: Any) -> VGG:
    """VGG-16; ``kwargs`` go to :class:`VGG`."""
    return VGG(16, **kwargs)


@register_model("vgg", _PAPER)
def vgg19(**kwargs: Any) -> VGG:
    """VGG-19; ``kwargs`` go to :class:`VGG`."""
    return VGG(19, **kwargs)


@register_model("vgg", _PAPER)
def vgg16_bn(**kwargs: Any) -> VGG:
    """VGG-16 with BatchNorm; ``kwargs`` go to :class:`VGG`."""
    return VGG(16, norm_layer=kwargs.pop("norm_layer", nn.BatchNorm2d), **kwargs)


@register_model("vgg", _PAPER)
def vgg19_bn(**kwargs: Any) -> VGG:
    """VGG-19 with BatchNorm; ``kwargs`` go to :class:`VGG`."""
    return VGG(19, norm_layer=kwargs.pop("norm_layer", nn.BatchNorm2d), **kwargs)
