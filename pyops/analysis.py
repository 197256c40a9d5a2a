"""Analysis helpers: what depthwise-separable convolution saves, and what SE layers do.

- :func:`conv_cost`: parameters and multiply-adds of a standard k×k convolution against the
  depthwise-separable pair that replaces it in MobileNets (k×k depthwise, then 1×1 pointwise).
- :func:`se_gates`: the per-channel gate each squeeze-and-excitation layer of a model applies to
  a batch; :func:`plot_se_gates` draws their spread layer by layer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mobilefuse._plotting import pyplot, save_figure

__all__ = ["ConvCost", "conv_cost", "is_se_layer", "plot_se_gates", "se_gates"]


@dataclass(frozen=True)
class ConvCost:
    """Cost of one convolution layer, standard vs depthwise-separable (biases left out).

    ``*_macs`` are multiply-adds for one image; ``reduction`` is separable / standard, which is
    ``1 / c_out + 1 / k²`` (MobileNets, section 3.1); ``speedup`` is its inverse.
    """

    c_in: int
    c_out: int
    kernel: int
    out_h: int
    out_w: int
    standard_params: int
    standard_macs: int
    depthwise_params: int
    depthwise_macs: int
    pointwise_params: int
    pointwise_macs: int

    @property
    def separable_params(self) -> int:
        """Parameters of the depthwise + pointwise pair."""
        return self.depthwise_params + self.pointwise_params

    @property
    def separable_macs(self) -> int:
        """Multiply-adds of the depthwise + pointwise pair."""
        return self.depthwise_macs + self.pointwise_macs

    @property
    def reduction(self) -> float:
        """Separable multiply-adds as a fraction of the standard convolution's."""
        return self.separable_macs / self.standard_macs

    @property
    def speedup(self) -> float:
        """How many times fewer multiply-adds the separable pair needs."""
        return self.standard_macs / self.separable_macs


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"mobilefuse.analysis.conv_cost: {name} must be a positive int, "
                         f"got {value!r}")
    return value


def conv_cost(c_in: int, c_out: int, k: int, h: int, w: int, stride: int = 1) -> ConvCost:
    """Parameters and multiply-adds of a k×k convolution ``c_in → c_out`` on an ``h × w`` input,
    standard vs depthwise-separable, with "same" padding (output ``ceil(h / stride)``).

    >>> cost = conv_cost(512, 512, 3, 14, 14)
    >>> round(cost.speedup, 2)   # 1 / (1/512 + 1/9)
    8.85
    """
    for name, value in (("c_in", c_in), ("c_out", c_out), ("k", k), ("h", h), ("w", w),
                        ("stride", stride)):
        _positive_int(name, value)
    out_h, out_w = math.ceil(h / stride), math.ceil(w / stride)
    pixels = out_h * out_w
    return ConvCost(
        c_in=c_in, c_out=c_out, kernel=k, out_h=out_h, out_w=out_w,
        standard_params=k * k * c_in * c_out, standard_macs=k * k * c_in * c_out * pixels,
        depthwise_params=k * k * c_in, depthwise_macs=k * k * c_in * pixels,
        pointwise_params=c_in * c_out, pointwise_macs=c_in * c_out * pixels)


# Class names of squeeze-and-excitation layers: torchvision's SqueezeExcitation, timm's
# SqueezeExcite / SEModule / EffectiveSEModule, mobilefuse's SqueezeExcite, and common SELayer.
_SE_NAME = re.compile(r"squeeze_?excit|^(effective)?se(module|layer|block)?$", re.IGNORECASE)
# Names SE layers give their gate activation module (torchvision, timm).
_GATE_CHILDREN = ("scale_activation", "gate")


def is_se_layer(module: nn.Module) -> bool:
    """Whether ``module``'s class is named like a squeeze-and-excitation layer."""
    return bool(_SE_NAME.search(type(module).__name__))


def se_gates(model: nn.Module, x: torch.Tensor,
             layer_types: Sequence[type[nn.Module]] | None = None) -> dict[str, torch.Tensor]:
    """The per-channel gate of every SE layer of ``model`` for the batch ``x``.

    An SE layer returns ``input * gate`` with one gate per (sample, channel). Where the layer
    has its gate activation as a child module (torchvision's ``scale_activation``, timm's
    ``gate``), its output is the gate. Otherwise the gate is read off the layer's input and
    output, whatever its internals: ``sum(out * in) / sum(in * in)`` over the spatial
    positions, exact when the output is the input scaled per channel (NaN for a channel whose
    input is all zero, where the gate leaves no trace).

    Args:
        model: any model; it is run once under ``torch.no_grad()`` in its current mode.
        x: the input batch.
        layer_types: the SE classes to look for; by default every module whose class name
            reads like one (``SqueezeExcitation``, ``SqueezeExcite``, ``SEModule``, ...).

    Returns:
        ``{module path: gates of shape (N, C)}`` in the order the layers run.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"mobilefuse.analysis.se_gates: model must be a torch.nn.Module, got "
                        f"{type(model).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"mobilefuse.analysis.se_gates: x must be a torch.Tensor, got "
                        f"{type(x).__name__}")
    wanted = tuple(layer_types) if layer_types is not None else None
    gates: dict[str, torch.Tensor] = {}

    def from_gate(path: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            gates[path] = output.detach().float().flatten(1)
        return hook

    def from_ratio(path: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            inp = inputs[0].double().flatten(2)
            out = output.double().flatten(2)
            gates[path] = ((out * inp).sum(-1) / (inp * inp).sum(-1)).float()
        return hook

    handles = []
    for path, module in model.named_modules():
        if not (isinstance(module, wanted) if wanted is not None else is_se_layer(module)):
            continue
        gate = next((child for name, child in module.named_children()
                     if name in _GATE_CHILDREN), None)
        if gate is not None:
            handles.append(gate.register_forward_hook(from_gate(path)))
        else:
            handles.append(module.register_forward_hook(from_ratio(path)))
    if not handles:
        raise ValueError("mobilefuse.analysis.se_gates: the model has no squeeze-and-excitation "
                         "layer (pass layer_types= to name their classes)")
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return gates


def plot_se_gates(gates: dict[str, torch.Tensor], path: str | Path,
                  title: str = "SE gate values per layer") -> Path:
    """A box plot of each SE layer's gate values (all samples and channels), saved as ``path``.

    Layers whose gates crowd near 0 or 1 prune or pass channels; a spread-out box means the
    layer recalibrates channels input by input.
    """
    plt = pyplot()
    names = list(gates)
    values = [gates[n][~torch.isnan(gates[n])].flatten().numpy() for n in names]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(names) + 2), 4.5))
    ax.boxplot(values, showfliers=False)
    ax.set_xticks(range(1, len(names) + 1), [str(i) for i in range(len(names))])
    ax.set_xlabel("SE layer (in forward order)")
    ax.set_ylabel("gate value")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)
