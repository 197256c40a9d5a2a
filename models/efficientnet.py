"""EfficientNet-B0 … B7: B0's stage table under compound scaling (Tan & Le 2019).

Each variant is :data:`~mobilefuse.models.specs.EFFICIENTNET_SCALING`'s (width, depth,
resolution, dropout) applied to B0's table by :func:`~mobilefuse.models.specs.efficientnet_spec`
and built by :class:`~mobilefuse.models.mobilenet.MobileNet`; module names are torchvision's.
"""

from __future__ import annotations

from typing import Any

from mobilefuse.models.mobilenet import MobileNet
from mobilefuse.models.registry import register_model
from mobilefuse.models.specs import EFFICIENTNET_SCALING, efficientnet_spec

__all__ = ["EfficientNet", *(f"efficientnet_{v}" for v in EFFICIENTNET_SCALING)]

_PAPER = "Tan & Le 2019, EfficientNet (arXiv:1905.11946)"


class EfficientNet(MobileNet):
    """An EfficientNet: :class:`MobileNet`'s builder on an ``"efficientnet"`` spec (stages in
    nested Sequentials, SiLU, SE from the block's input width, stochastic depth)."""


def _build(variant: str, stochastic_depth_prob: float = 0.2, **kwargs: Any) -> EfficientNet:
    return EfficientNet(efficientnet_spec(variant), stochastic_depth_prob=stochastic_depth_prob,
                        **kwargs)


@register_model("efficientnet", _PAPER, resolution=EFFICIENTNET_SCALING["b0"][2])
def efficientnet_b0(**kwargs: Any) -> EfficientNet:
    """EfficientNet-B0 (224 px); ``kwargs`` go to :class:`MobileNet`."""
    return _build("b0", **kwargs)


@register_model("efficientnet", _PAPER, resolution=EFFICIENTNET_SCALING["b1"][2])
def efficientnet_b1(**kwargs: Any) -> EfficientNet:
    """EfficientNet-B1 (240 px; depth 1.1); ``kwargs`` go to :class:`MobileNet`."""
    return _build("b1", **kwargs)


@register_model("efficientnet", _PAPER, resolution=EFFICIENTNET_SCALING["b2"][2])
def efficientnet_b2(**kwargs: Any) -> EfficientNet:
    """EfficientNet-B2 (260 px; width 1.1, depth 1.2); ``kwargs`` go to :class:`MobileNet`."""
    return _build("b2", **kwargs)


@register_model("efficientnet", _PAPER, resolution=EFFICIENTNET_SCALING["b3"][2])
def efficientnet_b3(**kwargs: Any) -> EfficientNet:
    """EfficientNet-B3 (300 px; width 1.2, depth 1.4); ``kwargs`` go to :class:`MobileNet`."""
    return _build("b3", **kwargs)


@register_model("efficientnet", _PAPER, resolution=EFFICIENTNET_SCALING["b4"][2])
def efficientnet_b4(**kwargs: Any) -> EfficientNet:
    """EfficientNet-B4 (380 px; width 1.4, depth 1.8); ``kwargs`` go to :class:`MobileNet`."""
    return _build("b4", **kwargs)


@register_model("efficientnet", _PAPER, resolution=EFFICIENTNET_SCALING["b5"][2])
def efficientnet_b5(**kwargs: Any) -> EfficientNet:
    """EfficientNet-B5 (456 px; width 1.6, depth 2.2); ``kwargs`` go to :class:`MobileNet`."""
    return _build("b5", **kwargs)


@register_model("efficientnet", _PAPER, resolution=EFFICIENTNET_SCALING["b6"][2])
def efficientnet_b6(**kwargs: Any) -> EfficientNet:
    """EfficientNet-B6 (528 px; width 1.8, depth 2.6); ``kwargs`` go to :class:`MobileNet`."""
    return _build("b6", **kwargs)


@register_model("efficientnet", _PAPER, resolution=EFFICIENTNET_SCALING["b7"][2])
def efficientnet_b7(**kwargs: Any) -> EfficientNet:
    """EfficientNet-B7 (600 px; width 2.0, depth 3.1); ``kwargs`` go to :class:`MobileNet`."""
    return _build("b7", **kwargs)
