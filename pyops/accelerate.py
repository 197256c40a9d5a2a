"""``accelerate()``: swap the submodules mobilefuse can serve for its fused modules; ``restore()``.

The walk is generic over module *types*, never a per-model list. MBConv blocks of the classes
in :mod:`mobilefuse._block_layout` whose layers read as an inverted residual are swapped whole
first; ShuffleNetV2 units of the classes in :mod:`mobilefuse._shuffle_unit` become
:class:`mobilefuse.nn.ShuffleUnit` (their concatenation and shuffle as one op, their branches
fused as below). Elsewhere a module is swapped when its type is exactly one that mobilefuse
serves (``nn.Conv2d`` with ``groups == in == out``, ``nn.Hardswish``, ``nn.Hardsigmoid``,
``nn.ChannelShuffle``, ``nn.MaxPool2d``, and the squeeze-and-excitation layouts of
:mod:`mobilefuse._se_layout`); subclasses are left alone, since their ``forward`` may
differ. Inside an ``nn.Sequential`` a depthwise convolution followed by
``BatchNorm2d`` and/or an activation is fused (see :mod:`mobilefuse._fusion`), and so is a
BatchNorm after timm's ``MixedConv2d``, each of whose convolutions folds its own channels of
it. Swapped modules
share the original's parameters, buffers and hooks, so ``state_dict`` keys, optimizers and hook
handles are unaffected; :func:`restore` puts the original classes back.
"""

from __future__ import annotations

import copy
from collections import Counter

import torch
from torch import nn

from mobilefuse import nn as mfnn
from mobilefuse._block_layout import (
    block_gap,
    block_layout,
    sequential_block_gap,
    sequential_layout,
)
from mobilefuse._conv_args import same_padding_gap
from mobilefuse._fusion import (
    FUSABLE_ACTIVATIONS,
    FoldedBatchNorm2d,
    FoldedConv2d,
    FusedActivation,
    Fusion,
    is_mixed_conv,
    norm_activation,
)
from mobilefuse._graph_runs import child_chains
from mobilefuse._se_layout import se_gap
from mobilefuse._se_swap import to_squeeze_excite
from mobilefuse._shuffle_unit import shuffle_stage_gap, shuffle_unit_gap
from mobilefuse._swap import clone_as, has_hooks, origin_class, revert
from mobilefuse.backends import (
    BACKENDS,
    FLOAT_DTYPES,
    candidate_backends,
    unsupported_reasons,
)

__all__ = ["accelerate", "restore"]

# Parameter-free torch.nn modules with an exact mobilefuse equivalent.
LEAF_SWAPS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Hardswish: mfnn.HardSwish,
    nn.Hardsigmoid: mfnn.HardSigmoid,
    nn.ChannelShuffle: mfnn.ChannelShuffle,
    nn.MaxPool2d: mfnn.MaxPool2d,
}


def _check_call(model: object, backend: object, fn: str) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"mobilefuse.{fn}: model must be a torch.nn.Module, "
                        f"got {type(model).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"mobilefuse.{fn}: backend must be one of {', '.join(BACKENDS)}, "
                         f"got {backend!r}")


def _backend_gap(device: torch.device, dtype: torch.dtype, backend: str) -> str | None:
    """Why no fused kernel of ``backend`` runs on this device and dtype, or None."""
    if backend == "reference":
        return None
    why = {name: unsupported_reasons(name, device, dtype)
           for name in candidate_backends(device, backend)}
    if any(not reasons for reasons in why.values()):
        return None
    return "; ".join(f"{name}: {', '.join(r)}" for name, r in why.items()) or (
        f"no fused backend serves {device.type} tensors")


def conv_gap(conv: nn.Module, backend: str) -> str | None:
    """Why ``conv`` cannot become a :class:`mobilefuse.nn.DepthwiseConv2d`, or None."""
    if type(conv) is not nn.Conv2d:
        return (f"{type(conv).__name__} subclasses nn.Conv2d: its forward may differ"
                if isinstance(conv, nn.Conv2d) else "not an nn.Conv2d")
    if conv.groups == 1:
        return "dense convolution (groups=1): left to the vendor kernel"
    if conv.groups != conv.in_channels:
        return f"grouped convolution (groups={conv.groups} < in_channels={conv.in_channels})"
    if conv.out_channels != conv.in_channels:
        return f"channel multiplier {conv.out_channels // conv.in_channels}: no fused kernel"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r}: the kernels pad with zeros"
    if conv.padding == "same":
        gap = same_padding_gap(tuple(d * (k - 1) for d, k in zip(conv.dilation,
                                                                 conv.kernel_size, strict=True)))
        if gap is not None:
            return gap
    if conv.weight.dtype not in FLOAT_DTYPES:
        return f"dtype {conv.weight.dtype} is not a float dtype"
    return _backend_gap(conv.weight.device, conv.weight.dtype, backend)


def _norm_gap(norm: nn.Module, conv: nn.Module, shared: Counter[int]) -> str | None:
    """Why BatchNorm ``norm`` cannot fold into ``conv`` just before it, or None."""
    gap, _ = norm_activation(norm)
    if gap is not None:
        return gap
    if not norm.track_running_stats or norm.running_mean is None:
        return "track_running_stats=False: it normalizes with batch statistics in eval mode too"
    if norm.num_features != conv.out_channels:
        return f"num_features={norm.num_features} != conv channels {conv.out_channels}"
    return _fusion_gap(norm, shared)


def _fusion_gap(module: nn.Module, shared: Counter[int]) -> str | None:
    if has_hooks(module):
        return "it has hooks, which fusing would skip"
    if shared[id(module)] > 1:
        return "the same module object appears more than once in the model"
    return None


def _model_dtype_device(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    for t in model.parameters():
        if t.is_floating_point():
            return t.dtype, t.device
    return torch.get_default_dtype(), torch.device("cpu")


def _fuse_run(parent: nn.Module, conv_name: str, norm_name: str | None, act_name: str | None,
              backend: str) -> None:
    """Fuse ``parent``'s children ``conv → norm → act`` (norm or act None: absent)."""
    conv = parent._modules[conv_name]
    norm = activation = None
    if norm_name is not None:
        source = parent._modules[norm_name]
        activation = norm_activation(source)[1]
        norm = clone_as(source, FoldedBatchNorm2d)
        parent._modules[norm_name] = norm
    if act_name is not None:
        activation = FUSABLE_ACTIVATIONS[type(parent._modules[act_name])]
    fusion = Fusion(norm, activation, backend)
    if norm is not None:
        norm.fusion = fusion  # it runs the activation itself in CPU training
    if act_name is not None:
        parent._modules[act_name] = clone_as(parent._modules[act_name], FusedActivation,
                                             name=activation, fusion=fusion, backend=backend)
    if not is_mixed_conv(conv):
        parent._modules[conv_name] = _fused_conv(conv, fusion, backend)
        return
    # Each convolution of a MixedConv2d folds the BatchNorm's channels its output fills.
    start = 0
    for name, child in list(conv._modules.items()):
        stop = start + child.out_channels
        part = Fusion(norm, activation, backend, channels=(start, stop))
        conv._modules[name] = _fused_conv(child, part, backend)
        start = stop


def _fused_conv(conv: nn.Conv2d, fusion: Fusion, backend: str) -> nn.Module:
    """``conv`` running ``fusion``: a DepthwiseConv2d where the kernels take it, else a
    FoldedConv2d (the vendor convolution on the folded weight)."""
    if conv_gap(conv, backend) is None:
        fused = mfnn.DepthwiseConv2d.from_conv(conv)
        fused.fusion, fused.backend = fusion, backend
        return fused
    return clone_as(conv, FoldedConv2d, fusion=fusion)


def _mixed_conv_gap(conv: nn.Module, shared: Counter[int]) -> str | None:
    """Why timm's MixedConv2d ``conv`` cannot fold the BatchNorm after it, or None: every
    child a plain ``nn.Conv2d`` without hooks, their outputs filling its channels."""
    children = list(conv.children())
    if not children or any(type(c) is not nn.Conv2d or _fusion_gap(c, shared) for c in children):
        return "a child is not a plain nn.Conv2d, or has hooks"
    if sum(c.out_channels for c in children) != conv.out_channels:
        return "its children's channels do not add up to its own"
    return _fusion_gap(conv, shared)


def _plan_run(conv: nn.Module, norm: nn.Module | None, act: nn.Module | None, backend: str,
              shared: Counter[int]) -> tuple[bool, bool]:
    """Which of ``norm`` and ``act`` (the modules ``conv``'s output flows through next) fuse
    into ``conv``: depthwise convolutions take either or both, others (timm's MixedConv2d
    too) need the norm."""
    if is_mixed_conv(conv):
        if norm is None or _mixed_conv_gap(conv, shared) or _norm_gap(norm, conv, shared):
            return False, False
        take_norm = True
    else:
        if type(conv) is not nn.Conv2d or _fusion_gap(conv, shared):
            return False, False
        take_norm = norm is not None and _norm_gap(norm, conv, shared) is None
        if not take_norm and conv_gap(conv, backend) is not None:
            return False, False
    inner = norm_activation(norm)[1] if take_norm else None
    take_act = (inner is None and type(act) in FUSABLE_ACTIVATIONS
                and _fusion_gap(act, shared) is None)
    return take_norm, take_act


def _fuse_chain(parent: nn.Module, names: list[str | None], backend: str,
                shared: Counter[int]) -> int:
    """Fuse ``names[0]`` (a conv) with what follows it in ``names``; returns how many of the
    following modules it took."""
    conv, first, second = (None if n is None else parent._modules[n] for n in names)
    take_norm, take_act = _plan_run(conv, first, second, backend, shared)
    if take_norm:
        _fuse_run(parent, names[0], names[1], names[2] if take_act else None, backend)
        return 1 + take_act
    _, take_act = _plan_run(conv, None, first, backend, shared)
    if take_act:
        _fuse_run(parent, names[0], None, names[1], backend)
    return int(take_act)


def _fuse_sequential(seq: nn.Sequential, backend: str, shared: Counter[int]) -> None:
    """Fuse every ``conv → [BatchNorm] → [activation]`` run among seq's children."""
    names: list[str | None] = [n for n, m in seq._modules.items() if m is not None]
    i = 0
    while i < len(names):
        window = (names[i:i + 3] + [None, None])[:3]
        i += 1 + _fuse_chain(seq, window, backend, shared)


def _is_conv(module: nn.Module) -> bool:
    """Whether a BatchNorm after ``module`` may fold into it: an ``nn.Conv2d`` (exactly), or
    timm's MixedConv2d."""
    return type(module) is nn.Conv2d or is_mixed_conv(module)


def _fuse_traced(parent: nn.Module, backend: str, shared: Counter[int]) -> None:
    """Fuse the runs that ``parent.forward`` itself wires up among its children."""
    for chain in child_chains(parent, _is_conv):
        _fuse_chain(parent, list(chain), backend, shared)


def _swap_leaf(module: nn.Module, backend: str, dtype: torch.dtype,
               device: torch.device) -> nn.Module | None:
    """The fused replacement of ``module`` on its own, or None."""
    if type(module) is nn.Conv2d and conv_gap(module, backend) is None:
        new = mfnn.DepthwiseConv2d.from_conv(module)
    elif type(module) in LEAF_SWAPS and _backend_gap(device, dtype, backend) is None:
        new = clone_as(module, LEAF_SWAPS[type(module)])
    else:
        return None
    new.backend = backend
    return new


def _to_block(module: nn.Module, backend: str) -> mfnn.InvertedResidual:
    """The InvertedResidual taking ``module``'s place (``block_gap(module)`` must be None)."""
    return clone_as(module, mfnn.InvertedResidual, layout=block_layout(module), backend=backend)


def _to_shuffle_unit(module: nn.Module, backend: str, shared: Counter[int]) -> mfnn.ShuffleUnit:
    """The ShuffleUnit taking ``module``'s place (``shuffle_unit_gap(module)`` must be None);
    each branch that reads as an inverted residual without the add becomes a fused block."""
    unit = clone_as(module, mfnn.ShuffleUnit, backend=backend)
    for name in ("branch1", "branch2"):
        branch = unit._modules.get(name)
        if (branch is not None and sequential_block_gap(branch) is None
                and not _fusion_gap(branch, shared)):
            unit._modules[name] = clone_as(branch, mfnn.InvertedResidual,
                                           layout=sequential_layout(branch), backend=backend)
    return unit


def _outside_blocks(module: nn.Module) -> list[nn.Module]:
    """``module`` and its descendants, leaving out fused blocks and everything inside them
    (a block reads its layers' parameters itself; they stay as they are)."""
    if isinstance(module, mfnn.InvertedResidual):
        return []
    found = [module]
    for child in module.children():
        found += _outside_blocks(child)
    return found


def accelerate(model: nn.Module, *, backend: str = "auto", inplace: bool = False) -> nn.Module:
    """Swap every submodule mobilefuse can serve for its fused module; leave the rest as is.

    Args:
        model: any ``nn.Module`` (a torch.nn, torchvision, timm or mobilefuse.models model).
        backend: the backend the swapped modules run on: ``"auto"`` follows
            :func:`mobilefuse.set_backend` at call time; a name pins it. A module whose fused
            kernel cannot run on its parameters' device and dtype under ``backend`` is kept.
        inplace: modify ``model`` itself instead of a deep copy of it.

    Returns:
        The accelerated model. Parameters, buffers, ``state_dict`` keys, hooks and train/eval
        mode are those of ``model``; outputs match within DESIGN's tolerances. Whole MBConv
        blocks of known classes (torchvision's, timm's, the zoo's) become
        :class:`mobilefuse.nn.InvertedResidual`, which folds their BatchNorms in eval mode and
        keeps less activation memory in training; their layers stay as they are. ShuffleNetV2
        units (torchvision's, the zoo's) become :class:`mobilefuse.nn.ShuffleUnit`, which
        writes the concatenated, shuffled output in one pass, and their stages
        :class:`mobilefuse.nn.ShuffleStage`, which hands each unit's output to the next as
        dense halves in CPU inference. In eval mode a
        depthwise conv followed by BatchNorm2d and an activation inside an ``nn.Sequential``
        runs as one kernel, and any other conv followed by BatchNorm2d runs with the BatchNorm
        folded into it. :func:`mobilefuse.accelerate_report` lists what was swapped and
        why the rest was not; :func:`restore` undoes it.
    """
    _check_call(model, backend, "accelerate")
    if not isinstance(inplace, bool):
        raise TypeError(f"mobilefuse.accelerate: inplace must be True or False, got {inplace!r}")
    if not inplace:
        model = copy.deepcopy(model)
    dtype, device = _model_dtype_device(model)
    shared = Counter(id(m) for m in model.modules(remove_duplicate=False))
    if _backend_gap(device, dtype, backend) is None:
        if block_gap(model) is None:
            model = _to_block(model, backend)
        elif shuffle_unit_gap(model) is None and not has_hooks(model):
            model = _to_shuffle_unit(model, backend, shared)
        for module in _outside_blocks(model):
            for name, child in list(module._modules.items()):
                if child is not None and block_gap(child) is None and not _fusion_gap(child,
                                                                                      shared):
                    module._modules[name] = _to_block(child, backend)
        for module in _outside_blocks(model):
            for name, child in list(module._modules.items()):
                if child is not None and se_gap(child) is None and not _fusion_gap(child, shared):
                    module._modules[name] = to_squeeze_excite(child, backend)
                elif (child is not None and shuffle_unit_gap(child) is None
                      and not _fusion_gap(child, shared)):
                    module._modules[name] = _to_shuffle_unit(child, backend, shared)
    for module in _outside_blocks(model):
        if isinstance(module, mfnn.SqueezeExcite):
            continue
        if type(module) is nn.Sequential or (isinstance(module, nn.Sequential)
                                             and type(module).forward is nn.Sequential.forward):
            _fuse_sequential(module, backend, shared)
        elif any(_is_conv(child) for child in module.children()):
            _fuse_traced(module, backend, shared)
    for module in _outside_blocks(model):
        if isinstance(module, mfnn.SqueezeExcite):
            continue  # its children only hold the weights the fused op reads
        for name, child in list(module._modules.items()):
            new = None if child is None else _swap_leaf(child, backend, dtype, device)
            if new is not None:
                module._modules[name] = new
    # Last: a stage's forward is its own, so nothing above may take it for a plain Sequential.
    for module in _outside_blocks(model):
        for name, child in list(module._modules.items()):
            if child is not None and shuffle_stage_gap(child) is None:
                module._modules[name] = clone_as(child, mfnn.ShuffleStage)
    if shuffle_stage_gap(model) is None:
        return clone_as(model, mfnn.ShuffleStage)
    root = _swap_leaf(model, backend, dtype, device)
    return model if root is None else root


def restore(model: nn.Module) -> nn.Module:
    """Undo :func:`accelerate` in place: every swapped module becomes its original class again,
    around its current parameters, buffers, hooks and mode. Returns the model (the root itself
    is replaced when it was swapped)."""
    _check_call(model, "auto", "restore")
    # Children before their parents: a parent rebuilt by revert() takes its children as they
    # are then (timm's BatchNormAct2d holds a swapped activation).
    for module in reversed(list(model.modules())):
        for name, child in list(module._modules.items()):
            if child is not None and origin_class(child) is not None:
                module._modules[name] = revert(child)
    return revert(model) if origin_class(model) is not None else model
