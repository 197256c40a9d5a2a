"""Which ShuffleNetV2 units mobilefuse runs with their concatenation and shuffle fused.

A unit class is known by module path and name (torchvision's ``shufflenetv2.InvertedResidual``
and the zoo's ``ShuffleV2Unit``). Both end ``channel_shuffle(torch.cat((left, right), 1), 2)``
with ``left`` the input's first half (stride 1) or ``branch1(x)`` (stride 2) and ``right``
``branch2`` of the other half or of ``x``: :func:`mobilefuse.ops.concat_shuffle` writes that in
one pass. The branches stay the unit's own children (accelerate() fuses inside them as usual).
An ``nn.Sequential`` with two or more stride-1 units in a row (a stage) becomes a
:class:`mobilefuse.nn.ShuffleStage`, which hands those units' outputs on as dense halves.
"""

from __future__ import annotations

from itertools import pairwise

from torch import nn

from mobilefuse import nn as mfnn
from mobilefuse._swap import has_hooks

# (module, class) of the known units -> the name of the child holding their shuffle, or None
# when the forward calls a function for it.
SHUFFLE_UNIT_CLASSES: dict[tuple[str, str], str | None] = {
    ("torchvision.models.shufflenetv2", "InvertedResidual"): None,
    ("mobilefuse.models.shufflenet", "ShuffleV2Unit"): "shuffle",
}


def is_shuffle_unit_class(module: nn.Module) -> bool:
    """Whether ``module``'s class is one of the known ShuffleNetV2 unit classes."""
    return (type(module).__module__, type(module).__name__) in SHUFFLE_UNIT_CLASSES


def shuffle_unit_gap(module: nn.Module) -> str | None:
    """Why ``module`` cannot become a :class:`mobilefuse.nn.ShuffleUnit`, or None."""
    key = (type(module).__module__, type(module).__name__)
    if key not in SHUFFLE_UNIT_CLASSES:
        return "not a known ShuffleNetV2 unit class"
    stride = getattr(module, "stride", None)
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        return f"its stride attribute is not a positive int (got {stride!r})"
    branches = ("branch2",) if stride == 1 else ("branch1", "branch2")
    for name in branches:
        if not isinstance(module._modules.get(name), nn.Module):
            return f"its {name} child is missing"
    shuffle_name = SHUFFLE_UNIT_CLASSES[key]
    if shuffle_name is not None:
        shuffle = module._modules.get(shuffle_name)
        if type(shuffle) not in (nn.ChannelShuffle, mfnn.ChannelShuffle) or shuffle.groups != 2:
            return f"its {shuffle_name} child is not nn.ChannelShuffle(2)"
        if has_hooks(shuffle):
            return f"its {shuffle_name} child has hooks, which the fused shuffle would skip"
    return None


def shuffle_stage_gap(module: nn.Module) -> str | None:
    """Why ``module`` (after its units were swapped) cannot become a
    :class:`mobilefuse.nn.ShuffleStage`, or None."""
    if type(module) is not nn.Sequential:
        return "not an exact nn.Sequential"
    children = list(module._modules.values())
    chains = mfnn.ShuffleStage.chains
    if not any(chains(a) and chains(b) for a, b in pairwise(children)):
        return "no two stride-1 ShuffleUnits without hooks in a row"
    return None
