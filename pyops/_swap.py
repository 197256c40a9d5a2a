"""Turning a module into another class in place of it, and back, without touching its state.

A swapped module keeps the very same ``Parameter`` and buffer objects, submodules and hook
dictionaries as the module it replaces (so optimizers, ``RemovableHandle``s and ``state_dict``
keys carry over). It also remembers the original's class and plain attributes, which is all
:func:`revert` needs to build the original back around the current tensors.
"""

from __future__ import annotations

from typing import Any, TypeVar

from torch import nn

ModuleT = TypeVar("ModuleT", bound=nn.Module)

# The attribute a swapped module keeps its original's class and plain attributes under.
ORIGIN_ATTR = "_mobilefuse_origin"
# Attributes holding the module's state: carried as they are, never snapshotted.
_STATE_KEYS = ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set", "training")


def _is_state_key(key: str) -> bool:
    return key in _STATE_KEYS or "hook" in key


def has_hooks(module: nn.Module) -> bool:
    """Whether ``module`` has forward or backward hooks of its own (which a fused replacement
    that never calls it would skip)."""
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks)


def clone_as(module: nn.Module, cls: type[ModuleT], **attrs: Any) -> ModuleT:
    """A ``cls`` instance sharing ``module``'s tensors, submodules and hooks, plus ``attrs``.

    ``cls`` must accept ``module``'s attributes (a subclass of ``type(module)``'s base).
    """
    new = cls.__new__(cls)
    nn.Module.__init__(new)
    state = {k: v for k, v in module.__dict__.items() if k != ORIGIN_ATTR}
    new.__dict__.update(state)
    # Fresh containers holding the same objects: registering on one never alters the other.
    new._parameters = dict(module._parameters)
    new._buffers = dict(module._buffers)
    new._modules = dict(module._modules)
    origin = module.__dict__.get(ORIGIN_ATTR)
    if origin is None:
        origin = (type(module), {k: v for k, v in state.items() if not _is_state_key(k)})
    new.__dict__[ORIGIN_ATTR] = origin
    new.__dict__.update(attrs)
    return new


def origin_class(module: nn.Module) -> type[nn.Module] | None:
    """The class ``module`` replaced, or None when it is not a swapped module."""
    origin = module.__dict__.get(ORIGIN_ATTR)
    return None if origin is None else origin[0]


def revert(module: nn.Module) -> nn.Module:
    """The original module rebuilt around ``module``'s current tensors, mode and hooks."""
    cls, plain = module.__dict__[ORIGIN_ATTR]
    original = cls.__new__(cls)
    nn.Module.__init__(original)
    original.__dict__.update(plain)
    original.__dict__.update({k: v for k, v in module.__dict__.items() if _is_state_key(k)})
    original._parameters = dict(module._parameters)
    original._buffers = dict(module._buffers)
    original._modules = dict(module._modules)
    return original
