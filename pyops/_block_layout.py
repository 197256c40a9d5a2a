"""Which inverted-residual (MBConv) blocks mobilefuse can run as one fused block, and how.

A block class is known by module path and name (torchvision's MobileNetV2/V3
``InvertedResidual`` and EfficientNet ``MBConv``, timm's ``InvertedResidual`` and
``DepthwiseSeparableConv``, and the zoo's own). Its layers, flattened in forward order
(``nn.Sequential`` containers opened, ``nn.Identity`` skipped), must read

    [1x1 conv → BN → act]  depthwise conv → BN → act  [SE]  1x1 conv → BN [→ act]

and the block adds its input at the end when its residual flag says so, after its stochastic
depth module if it has one. :class:`BlockLayout` records where each role sits (dotted child
paths), so the fused block reads the very parameters and buffers of those children and every
``state_dict`` key stays as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from mobilefuse._fusion import FUSABLE_ACTIVATIONS, norm_activation
from mobilefuse._se_layout import is_pointwise, se_gap
from mobilefuse._swap import has_hooks


@dataclass(frozen=True)
class BlockClass:
    """How a known block class wires its layers."""

    # The nn.Sequential child holding the layers, or None: the block's own children in order.
    layers: str | None
    # The bool attribute saying whether the input is added at the end.
    residual_attr: str
    # The stochastic-depth child applied to the branch before the add, or None.
    drop: str | None = None
    # Children that must be None for the standard forward (timm's space-to-depth stem).
    absent: tuple[str, ...] = ()


_TIMM = BlockClass(None, "has_skip", "drop_path", ("conv_s2d", "bn_s2d"))
BLOCK_CLASSES: dict[tuple[str, str], BlockClass] = {
    ("torchvision.models.mobilenetv2", "InvertedResidual"): BlockClass("conv", "use_res_connect"),
    ("torchvision.models.mobilenetv3", "InvertedResidual"): BlockClass("block",
                                                                       "use_res_connect"),
    ("torchvision.models.efficientnet", "MBConv"): BlockClass("block", "use_res_connect",
                                                              "stochastic_depth"),
    ("mobilefuse.models.mobilenet", "InvertedResidual"): BlockClass("conv", "use_res_connect"),
    ("mobilefuse.models.mobilenet", "MBConv"): BlockClass("block", "use_res_connect",
                                                          "stochastic_depth"),
    ("timm.models._efficientnet_blocks", "InvertedResidual"): _TIMM,
    ("timm.models._efficientnet_blocks", "DepthwiseSeparableConv"): _TIMM,
}


@dataclass(frozen=True)
class Stage:
    """A convolution, the BatchNorm after it and the activation after that (child paths)."""

    conv: str
    norm: str
    # The activation's name ("relu", "relu6", "hardswish", "silu") or None.
    activation: str | None


@dataclass(frozen=True)
class BlockLayout:
    """Where each role of an inverted-residual block sits, as dotted child paths."""

    # Every layer in forward order (what the unfused forward calls one after the other).
    sequence: tuple[str, ...]
    expand: Stage | None
    depthwise: Stage
    se: str | None
    project: Stage
    drop: str | None
    residual: bool


def _is_depthwise(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.groups == conv.in_channels == conv.out_channels
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str))


def _is_sequential(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _flatten(module: nn.Module, prefix: str, out: list[tuple[str, nn.Module]],
             skip: frozenset[str | None] = frozenset()) -> None:
    """Append ``module``'s layers in order as (path, layer), opening Sequentials and leaving
    out ``nn.Identity`` and the children named in ``skip``."""
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        if type(child) is nn.Identity or name in skip:
            continue
        if _is_sequential(child):
            _flatten(child, f"{path}.", out)
        else:
            out.append((path, child))


class _Reader:
    """Walks the flattened layers, taking one role at a time."""

    def __init__(self, layers: list[tuple[str, nn.Module]]) -> None:
        self.layers = layers
        self.i = 0

    def peek(self) -> nn.Module | None:
        return self.layers[self.i][1] if self.i < len(self.layers) else None

    def stage(self, what: str) -> Stage:
        conv = self.peek()
        if type(conv) is not nn.Conv2d:
            raise LookupError(f"expected the {what} nn.Conv2d, found "
                              f"{type(conv).__name__ if conv is not None else 'nothing'}")
        conv_path = self.layers[self.i][0]
        self.i += 1
        norm = self.peek()
        gap, activation = (norm_activation(norm) if norm is not None
                           else ("not an nn.BatchNorm2d", None))
        if gap is not None:
            raise LookupError(f"the layer after the {what} convolution: {gap}")
        if norm.num_features != conv.out_channels:
            raise LookupError(f"the {what} BatchNorm has {norm.num_features} features for "
                              f"{conv.out_channels} channels")
        norm_path = self.layers[self.i][0]
        self.i += 1
        if activation is None and type(self.peek()) in FUSABLE_ACTIVATIONS:
            activation = FUSABLE_ACTIVATIONS[type(self.peek())]
            self.i += 1
        return Stage(conv_path, norm_path, activation)


def _read_layers(layers: list[tuple[str, nn.Module]]) -> tuple[Stage | None, Stage, str | None,
                                                                Stage]:
    modules = dict(layers)
    reader = _Reader(layers)
    first = reader.stage("first")
    expand = None
    if is_pointwise(modules[first.conv]):
        expand, depthwise = first, reader.stage("depthwise")
    else:
        depthwise = first
    if not _is_depthwise(modules[depthwise.conv]):
        raise LookupError("no depthwise convolution (groups == in == out channels, zero "
                          "padding given as numbers) where the block needs one")
    se = None
    candidate = reader.peek()
    if candidate is not None and type(candidate) is not nn.Conv2d:
        why = se_gap(candidate)
        if why is not None:
            raise LookupError(f"the layer after the depthwise stage is not a squeeze-and-"
                              f"excitation mobilefuse can run ({why})")
        se = layers[reader.i][0]
        reader.i += 1
    project = reader.stage("projection")
    if not is_pointwise(modules[project.conv]):
        raise LookupError("the projection is not a plain 1x1 convolution")
    if reader.peek() is not None:
        raise LookupError(f"unexpected layer {type(reader.peek()).__name__} after the projection")
    return expand, depthwise, se, project


def is_block_class(module: nn.Module) -> bool:
    """Whether ``module``'s class is one of the known inverted-residual block classes."""
    return (type(module).__module__, type(module).__name__) in BLOCK_CLASSES


def block_layout(module: nn.Module) -> BlockLayout:
    """``module``'s layout; LookupError (saying why) when it is not a block mobilefuse runs."""
    kind = BLOCK_CLASSES.get((type(module).__module__, type(module).__name__))
    if kind is None:
        raise LookupError("not a known inverted-residual block class")
    for name in kind.absent:
        if getattr(module, name, None) is not None:
            raise LookupError(f"its {name} layer is not supported")
    residual = getattr(module, kind.residual_attr, None)
    if not isinstance(residual, bool):
        raise LookupError(f"its {kind.residual_attr} flag is missing")
    layers: list[tuple[str, nn.Module]] = []
    if kind.layers is None:
        _flatten(module, "", layers, frozenset({kind.drop, *kind.absent}))
    else:
        container = module._modules.get(kind.layers)
        if container is None or not _is_sequential(container):
            raise LookupError(f"its {kind.layers!r} child is not an nn.Sequential")
        _flatten(container, f"{kind.layers}.", layers)
    expand, depthwise, se, project = _read_layers(layers)
    drop = kind.drop if kind.drop and type(module._modules.get(kind.drop)) is not nn.Identity \
        else None
    if residual:
        conv_in = module.get_submodule((expand or depthwise).conv).in_channels
        conv_out = module.get_submodule(project.conv).out_channels
        if conv_in != conv_out or module.get_submodule(depthwise.conv).stride != (1, 1):
            raise LookupError("its residual flag is set on a block that changes the shape")
    return BlockLayout(tuple(path for path, _ in layers), expand, depthwise, se, project, drop,
                       residual)


def sequential_layout(seq: nn.Module) -> BlockLayout:
    """The layout of an ``nn.Sequential`` whose layers read as an inverted residual without the
    add (ShuffleNetV2's branches); LookupError saying why when they do not."""
    if not _is_sequential(seq):
        raise LookupError("not an nn.Sequential")
    layers: list[tuple[str, nn.Module]] = []
    _flatten(seq, "", layers)
    expand, depthwise, se, project = _read_layers(layers)
    return BlockLayout(tuple(path for path, _ in layers), expand, depthwise, se, project, None,
                       False)


def _gap(module: nn.Module, read_layout: Callable[[nn.Module], BlockLayout]) -> str | None:
    """Why ``read_layout`` finds no block in ``module``, or why its hooks forbid one; or None."""
    try:
        read_layout(module)
    except LookupError as exc:
        return str(exc)
    if any(has_hooks(m) for m in module.modules()):
        return "it or one of its layers has hooks, which the fused block would skip"
    return None


def sequential_block_gap(seq: nn.Module) -> str | None:
    """Why the ``nn.Sequential`` ``seq`` cannot run as a
    :class:`mobilefuse.nn.InvertedResidual`, or None."""
    return _gap(seq, sequential_layout)


def block_gap(module: nn.Module) -> str | None:
    """Why ``module`` cannot become a :class:`mobilefuse.nn.InvertedResidual`, or None."""
    return _gap(module, block_layout)
