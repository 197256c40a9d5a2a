"""Which children a module's own ``forward`` chains directly: conv → next → next.

``accelerate()`` folds a BatchNorm into the convolution before it only where nothing else sees
the convolution's output. Inside an ``nn.Sequential`` that is given; for any other module (timm's
blocks write ``x = self.conv_dw(x); x = self.bn2(x)`` in their ``forward``) the forward is
traced with ``torch.fx``, every child kept as one opaque call, and the data flow read off the
graph. A forward that cannot be traced symbolically simply yields no chains.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch.fx
from torch import nn


class _ChildrenAsLeaves(torch.fx.Tracer):
    """Traces only the root's own forward: every submodule call stays one graph node."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def _sole_module_user(node: torch.fx.Node, calls: Counter[str]) -> torch.fx.Node | None:
    """The one node using ``node``'s value, if it is a call of a direct child made only there
    with that value as its only argument."""
    users = list(node.users)
    if len(users) != 1:
        return None
    user = users[0]
    if (user.op != "call_module" or "." in str(user.target) or calls[str(user.target)] != 1
            or user.args != (node,) or user.kwargs):
        return None
    return user


def child_chains(parent: nn.Module, is_conv: Callable[[nn.Module], bool] = (
        lambda m: type(m) is nn.Conv2d)) -> list[tuple[str, str | None, str | None]]:
    """``(conv, first, second)`` child names for every convolution child (``is_conv``, by
    default exactly an ``nn.Conv2d``) whose output goes only into child ``first``, whose output
    goes only into child ``second`` (None where the chain stops). Each child named is called
    exactly once in ``parent.forward``."""
    try:
        graph = _ChildrenAsLeaves().trace(parent)
    except Exception:  # noqa: BLE001  (arbitrary user code: untraceable means "no chains")
        return []
    nodes = [n for n in graph.nodes if n.op == "call_module" and "." not in str(n.target)]
    calls = Counter(str(n.target) for n in nodes)
    chains = []
    for node in nodes:
        name = str(node.target)
        module = parent._modules.get(name)
        if module is None or not is_conv(module) or calls[name] != 1:
            continue
        first = _sole_module_user(node, calls)
        second = None if first is None else _sole_module_user(first, calls)
        chains.append((name, None if first is None else str(first.target),
                       None if second is None else str(second.target)))
    return chains
