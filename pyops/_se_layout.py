"""Which squeeze-and-excitation modules mobilefuse can run as one fused op.

Known layouts by class (module path and name): which children are the reduce and expand 1x1
convolutions, the activation and the gate. A module qualifies when its children have exactly
those roles and types, so its forward is the standard one; its children and their names stay.
"""

from __future__ import annotations

from torch import nn

from mobilefuse._swap import has_hooks

# (module, class) -> (reduce conv, activation, expand conv, gate) child names.
SE_LAYOUTS: dict[tuple[str, str], tuple[str, str, str, str]] = {
    ("torchvision.ops.misc", "SqueezeExcitation"): ("fc1", "activation", "fc2",
                                                    "scale_activation"),
    ("mobilefuse.models.layers", "SqueezeExcitation"): ("fc1", "activation", "fc2",
                                                        "scale_activation"),
    ("timm.models._efficientnet_blocks", "SqueezeExcite"): ("conv_reduce", "act1",
                                                            "conv_expand", "gate"),
    ("timm.layers.squeeze_excite", "SEModule"): ("fc1", "act", "fc2", "gate"),
}
SE_ACTIVATION_NAMES: dict[type[nn.Module], str] = {nn.ReLU: "relu", nn.SiLU: "silu"}
SE_GATE_NAMES: dict[type[nn.Module], str] = {nn.Hardsigmoid: "hardsigmoid", nn.Sigmoid: "sigmoid"}
# timm's own activation classes (timm.layers.activations) computing the same functions: its
# "sigmoid" gate is its Sigmoid class (x.sigmoid()), and without native kernels it builds
# HardSigmoid (relu6(x + 3) / 6) and Swish (x * x.sigmoid()). By class name, as timm is optional.
_TIMM_ACTIVATION_NAMES = {"Swish": "silu"}
_TIMM_GATE_NAMES = {"Sigmoid": "sigmoid", "HardSigmoid": "hardsigmoid"}
# Children a layout may have besides its four roles, as long as they do nothing.
_PASSIVE = {"avgpool": nn.AdaptiveAvgPool2d, "bn": nn.Identity}


def is_pointwise(conv: nn.Module) -> bool:
    """Whether ``conv`` is exactly an ``nn.Conv2d`` computing a dense 1x1 projection."""
    return (type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
            and conv.padding in ((0, 0), "valid") and conv.dilation == (1, 1)
            and conv.groups == 1)


def se_layout(module: nn.Module) -> tuple[str, str, str, str] | None:
    """``module``'s (reduce, activation, expand, gate) child names if its class is a known
    squeeze-and-excitation layout, else None."""
    return SE_LAYOUTS.get((type(module).__module__, type(module).__name__))


def se_gap(module: nn.Module) -> str | None:
    """Why ``module`` cannot become a SqueezeExcite, or None (it can). Unknown classes too."""
    layout = se_layout(module)
    if layout is None:
        return "not a known squeeze-and-excitation layout"
    reduce_name, act_name, expand_name, gate_name = layout
    children = module._modules
    extra = set(children) - set(layout)
    for name in extra:
        passive = _PASSIVE.get(name)
        if passive is None or type(children[name]) is not passive or (
                passive is nn.AdaptiveAvgPool2d and children[name].output_size not in (1, (1, 1))):
            return f"unexpected child {name!r} ({type(children[name]).__name__})"
    if getattr(module, "add_maxpool", False):
        return "add_maxpool=True pools differently"
    reduce, expand = children.get(reduce_name), children.get(expand_name)
    if not (is_pointwise(reduce) and is_pointwise(expand)):
        return "its reduce/expand layers are not plain 1x1 convolutions"
    if expand.out_channels != reduce.in_channels or expand.in_channels != reduce.out_channels:
        return "its reduce/expand channel counts do not match"
    if _role_name(children.get(act_name), SE_ACTIVATION_NAMES, _TIMM_ACTIVATION_NAMES) is None:
        return f"activation {_class_path(children.get(act_name))} is not ReLU or SiLU"
    if _role_name(children.get(gate_name), SE_GATE_NAMES, _TIMM_GATE_NAMES) is None:
        return f"gate {_class_path(children.get(gate_name))} is not Hardsigmoid or Sigmoid"
    if any(has_hooks(c) for c in children.values() if c is not None):
        return "a child has hooks, which the fused op would skip"
    return None


def se_options(module: nn.Module) -> tuple[str, str]:
    """The (activation, gate) names of a module that ``se_gap`` accepts."""
    _, act_name, _, gate_name = se_layout(module)
    activation = _role_name(module._modules[act_name], SE_ACTIVATION_NAMES,
                            _TIMM_ACTIVATION_NAMES)
    gate = _role_name(module._modules[gate_name], SE_GATE_NAMES, _TIMM_GATE_NAMES)
    if activation is None or gate is None:
        raise ValueError(f"se_options: {type(module).__name__} has no fusable activation "
                         f"and gate (see se_gap)")
    return activation, gate


def _role_name(child: nn.Module | None, by_type: dict[type[nn.Module], str],
               by_timm_class: dict[str, str]) -> str | None:
    """The op's name for ``child``'s function: by exact torch.nn type, or timm's class."""
    kind = type(child)
    if kind in by_type:
        return by_type[kind]
    if kind.__module__.startswith("timm.") and kind.__name__ in by_timm_class:
        return by_timm_class[kind.__name__]
    return None


def _class_path(child: nn.Module | None) -> str:
    kind = type(child)
    return kind.__name__ if kind.__module__.startswith("torch.") else (
        f"{kind.__module__}.{kind.__name__}")


