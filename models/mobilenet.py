"""MobileNetV1, V2 and V3 built from their spec tables (:mod:`mobilefuse.models.specs`).

One builder, :class:`MobileNet`, turns a :class:`~mobilefuse.models.specs.ModelSpec` into a
network: stem, one block per :class:`~mobilefuse.models.specs.BlockArgs`, head, classifier.
Module names follow torchvision (``features.N.conv`` for V2, ``features.N.block`` for V3 and
EfficientNet), so torchvision's state_dicts load with ``strict=True``.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Any

import torch
from torch import nn

from mobilefuse.models.layers import (
    ACTIVATIONS,
    ConvNormAct,
    LayerFn,
    SqueezeExcitation,
    StochasticDepth,
    act_fn,
    init_weights,
)
from mobilefuse.models.registry import register_model
from mobilefuse.models.specs import BlockArgs, ModelSpec, expand_blocks, get_spec, make_divisible

__all__ = [
    "DepthwiseSeparable", "InvertedResidual", "MBConv", "MobileNet", "mobilenet_v1",
    "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
]


class DepthwiseSeparable(nn.Sequential):
    """MobileNetV1's block: depthwise 3x3 + norm + act (``0``), pointwise 1x1 + norm + act
    (``1``)."""

    def __init__(self, args: BlockArgs, norm_layer: LayerFn, act_layer: LayerFn) -> None:
        super().__init__(
            ConvNormAct(args.in_channels, args.in_channels, args.kernel, args.stride,
                        groups=args.in_channels, norm_layer=norm_layer, act_layer=act_layer),
            ConvNormAct(args.in_channels, args.out_channels, 1, norm_layer=norm_layer,
                        act_layer=act_layer))
        self.out_channels = args.out_channels


def _expand_and_depthwise(args: BlockArgs, norm_layer: LayerFn,
                          act_layer: LayerFn) -> list[nn.Module]:
    """An inverted residual's [1x1 expansion] and depthwise stage, each conv + norm + act."""
    mid = args.mid_channels
    layers: list[nn.Module] = []
    if args.has_expansion:
        layers.append(ConvNormAct(args.in_channels, mid, 1, norm_layer=norm_layer,
                                  act_layer=act_layer))
    layers.append(ConvNormAct(mid, mid, args.kernel, args.stride, groups=mid,
                              norm_layer=norm_layer, act_layer=act_layer))
    return layers


class InvertedResidual(nn.Module):
    """MobileNetV2's block in ``self.conv``: [1x1 expand], depthwise, linear 1x1 projection
    (a bare Conv2d and norm, torchvision's layout); the input is added when shapes allow."""

    def __init__(self, args: BlockArgs, norm_layer: LayerFn, act_layer: LayerFn) -> None:
        super().__init__()
        mid = args.mid_channels
        layers = _expand_and_depthwise(args, norm_layer, act_layer) + [
            nn.Conv2d(mid, args.out_channels, 1, bias=False),
            norm_layer(args.out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.stride = args.stride
        self.use_res_connect = args.residual
        self.out_channels = args.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output, plus ``x`` on residual blocks."""
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MBConv(nn.Module):
    """MobileNetV3's / EfficientNet's block in ``self.block``: [1x1 expand], depthwise, [SE],
    linear 1x1 projection (conv + norm); residual blocks drop their branch with
    ``drop_path`` (stochastic depth) in training."""

    def __init__(self, args: BlockArgs, norm_layer: LayerFn, act_layer: LayerFn,
                 se_layer: LayerFn | None, drop_path: float = 0.0) -> None:
        super().__init__()
        mid = args.mid_channels
        layers = _expand_and_depthwise(args, norm_layer, act_layer)
        if args.se_channels is not None and se_layer is not None:
            layers.append(se_layer(mid, args.se_channels))
        layers.append(ConvNormAct(mid, args.out_channels, 1, norm_layer=norm_layer,
                                  act_layer=None))
        self.block = nn.Sequential(*layers)
        self.use_res_connect = args.residual
        self.stochastic_depth = StochasticDepth(drop_path)
        self.out_channels = args.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output, plus ``x`` on residual blocks."""
        out = self.block(x)
        return x + self.stochastic_depth(out) if self.use_res_connect else out


class MobileNet(nn.Module):
    """A MobileNet (V1, V2, V3) or EfficientNet built from ``spec``.

    Args:
        spec: the network's table, already scaled (width, depth, resolution).
        num_classes: classifier outputs.
        dropout: the classifier's dropout; default ``spec.dropout``.
        act_layer: replaces the network's main activation (its stem's: ReLU6 in V2, hard-swish
            in V3, SiLU in EfficientNet); the table's other activations stay.
        norm_layer: factory of the norm layers, called with the channel count; default
            BatchNorm2d with the spec's eps and momentum.
        se_layer: factory of the squeeze-excite layers, called with ``(channels,
            squeeze_channels)``; default :class:`SqueezeExcitation` with the spec's gate.
        stochastic_depth_prob: drop probability of the last block (EfficientNet; it grows
            linearly from 0 over the blocks); 0 elsewhere.
    """

    def __init__(self, spec: ModelSpec, num_classes: int = 1000, dropout: float | None = None,
                 act_layer: LayerFn | None = None, norm_layer: LayerFn | None = None,
                 se_layer: LayerFn | None = None, stochastic_depth_prob: float = 0.0) -> None:
        super().__init__()
        self.spec = spec
        self.input_size = (3, spec.resolution, spec.resolution)
        main = spec.stem.activation
        norm = norm_layer or partial(nn.BatchNorm2d, eps=spec.bn_eps, momentum=spec.bn_momentum)
        se = se_layer or partial(SqueezeExcitation,
                                 act_layer=act_fn(spec.se_activation, act_layer, main),
                                 gate_layer=ACTIVATIONS[spec.se_gate])
        blocks = expand_blocks(spec, spec.resolution)
        stem = ConvNormAct(3, spec.channels(spec.stem.out_channels), spec.stem.kernel,
                           spec.stem.stride, norm_layer=norm,
                           act_layer=act_fn(main, act_layer, main))
        layers = [self._block(b, norm, act_fn(b.activation, act_layer, main), se,
                              stochastic_depth_prob * b.index / len(blocks)) for b in blocks]
        if spec.family == "efficientnet":  # one Sequential per stage
            stages: dict[int, list[nn.Module]] = {}
            for b, layer in zip(blocks, layers, strict=True):
                stages.setdefault(b.stage, []).append(layer)
            layers = [nn.Sequential(*stage) for stage in stages.values()]
        features: list[nn.Module] = [stem, *layers]
        width = blocks[-1].out_channels
        if spec.head is not None:
            features.append(ConvNormAct(width, spec.head_channels(), 1, norm_layer=norm,
                                        act_layer=act_fn(spec.head.activation, act_layer, main)))
            width = spec.head_channels()
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        p = spec.dropout if dropout is None else dropout
        if spec.head is not None and spec.head.hidden is not None:
            hidden = make_divisible(spec.head.hidden * spec.width_mult, 8)
            self.classifier = nn.Sequential(
                nn.Linear(width, hidden), act_fn(spec.head.activation, act_layer, main)(),
                nn.Dropout(p), nn.Linear(hidden, num_classes))
        else:
            self.classifier = nn.Sequential(nn.Dropout(p), nn.Linear(width, num_classes))
        init_weights(self, linear="uniform" if spec.family == "efficientnet" else "normal")

    def _block(self, args: BlockArgs, norm: LayerFn, act: LayerFn, se: LayerFn,
               drop_path: float) -> nn.Module:
        if self.spec.family == "mobilenet_v1":
            return DepthwiseSeparable(args, norm, act)
        if self.spec.family == "mobilenet_v2":
            return InvertedResidual(args, norm, act)
        return MBConv(args, norm, act, se, drop_path)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map (before pooling)."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of images ``x`` (N, 3, H, W)."""
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


_MOBILENET_V1 = "Howard et al. 2017, MobileNets (arXiv:1704.04861)"
_MOBILENET_V2 = "Sandler et al. 2018, MobileNetV2 (arXiv:1801.04381)"
_MOBILENET_V3 = "Howard et al. 2019, Searching for MobileNetV3 (arXiv:1905.02244)"


@register_model("mobilenet_v1", _MOBILENET_V1, torchvision=False)
def mobilenet_v1(*, width_mult: float = 1.0, resolution_mult: float = 1.0,
                 **kwargs: Any) -> MobileNet:
    """MobileNetV1 with width multiplier α (``width_mult``: 1.0, 0.75, 0.5, 0.25) and
    resolution multiplier ρ (``resolution_mult``: 1.0, 0.857, 0.714, 0.571 for 224, 192,
    160, 128), which sets ``model.input_size``. ``kwargs`` go to :class:`MobileNet`."""
    resolution = int(round(224 * resolution_mult))
    spec = replace(get_spec("mobilenet_v1"), width_mult=width_mult, resolution=resolution)
    return MobileNet(spec, **kwargs)


@register_model("mobilenet_v2", _MOBILENET_V2)
def mobilenet_v2(*, width_mult: float = 1.0, **kwargs: Any) -> MobileNet:
    """MobileNetV2 with width multiplier ``width_mult``; ``kwargs`` go to :class:`MobileNet`."""
    return MobileNet(replace(get_spec("mobilenet_v2"), width_mult=width_mult), **kwargs)


@register_model("mobilenet_v3", _MOBILENET_V3)
def mobilenet_v3_large(*, width_mult: float = 1.0, **kwargs: Any) -> MobileNet:
    """MobileNetV3-Large with width multiplier ``width_mult`` (torchvision's scaling rule);
    ``kwargs`` go to :class:`MobileNet` (``se_layer`` among them)."""
    return MobileNet(replace(get_spec("mobilenet_v3_large"), width_mult=width_mult), **kwargs)


@register_model("mobilenet_v3", _MOBILENET_V3)
def mobilenet_v3_small(*, width_mult: float = 1.0, **kwargs: Any) -> MobileNet:
    """MobileNetV3-Small with width multiplier ``width_mult`` (torchvision's scaling rule);
    ``kwargs`` go to :class:`MobileNet` (``se_layer`` among them)."""
    return MobileNet(replace(get_spec("mobilenet_v3_small"), width_mult=width_mult), **kwargs)
