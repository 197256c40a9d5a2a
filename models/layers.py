"""Building blocks shared by the model definitions: conv-norm-act, squeeze-excite, drop-path.

Every layer that a fused module may replace is built through an injectable factory
(``act_layer``, ``norm_layer``, ``se_layer``), and a convolution, its norm and its activation
always sit in one :class:`ConvNormAct` (an ``nn.Sequential`` with children ``0``/``1``/``2``),
the pattern :func:`mobilefuse.accelerate` fuses.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

__all__ = [
    "ACTIVATIONS", "ConvNormAct", "LayerFn", "SqueezeExcitation", "StochasticDepth", "act_fn",
    "init_weights",
]

# A factory of modules: a class or a functools.partial of one.
LayerFn = Callable[..., nn.Module]

ACTIVATIONS: dict[str, LayerFn] = {
    "relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish, "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid, "hardsigmoid": nn.Hardsigmoid,
}


def act_fn(name: str, act_layer: LayerFn | None = None, default: str | None = None) -> LayerFn:
    """The factory of activation ``name``: ``act_layer`` when given and ``name`` is the model's
    ``default`` activation (timm's rule: the injected layer replaces the main activation, a
    table's explicit other activations stay), else the ``torch.nn`` class."""
    if act_layer is not None and name == default:
        return act_layer
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}") from None


class ConvNormAct(nn.Sequential):
    """``Conv2d`` → norm → activation in one Sequential (children ``0``, ``1``, ``2``).

    Same padding (``(k - 1) // 2 * dilation``); the convolution has a bias only when there is
    no norm layer to absorb it. ``norm_layer=None`` or ``act_layer=None`` leaves that child out.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, groups: int = 1, dilation: int = 1,
                 norm_layer: LayerFn | None = nn.BatchNorm2d,
                 act_layer: LayerFn | None = nn.ReLU) -> None:
        padding = (kernel_size - 1) // 2 * dilation
        layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel_size, stride,
                                             padding, dilation, groups, bias=norm_layer is None)]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        if act_layer is not None:
            layers.append(act_layer())
        super().__init__(*layers)
        self.out_channels = out_channels


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation: ``x * gate(fc2(act(fc1(mean(x)))))`` with 1x1 convolutions.

    The submodule names (``fc1``, ``fc2``) are torchvision's, so its weights load.
    """

    def __init__(self, channels: int, squeeze_channels: int, act_layer: LayerFn = nn.ReLU,
                 gate_layer: LayerFn = nn.Sigmoid) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.activation = act_layer()
        self.scale_activation = gate_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scale each channel of ``x`` by its gate."""
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return x * scale


class StochasticDepth(nn.Module):
    """Drop whole samples of a residual branch with probability ``p`` in training ("row" mode),
    scaling the kept ones by ``1 / (1 - p)``; the identity in eval mode or when ``p == 0``."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with whole samples zeroed (training only)."""
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)
        return x * mask.bernoulli_(keep).div_(keep)

    def extra_repr(self) -> str:
        """The drop probability."""
        return f"p={self.p}"


def init_weights(model: nn.Module, linear: str = "normal") -> None:
    """The usual ImageNet initialisation: He-normal (fan-out) convolutions, unit norms, and
    ``linear`` classifiers: ``"normal"`` (std 0.01), ``"uniform"`` (±1/sqrt(out), EfficientNet)
    or ``"default"`` (PyTorch's own)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear != "default":
            if linear == "uniform":
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
            else:
                nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
