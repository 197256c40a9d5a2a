"""accelerate()'s squeeze-and-excitation swap: a module of a known layout (see
:mod:`mobilefuse._se_layout`) becomes :class:`mobilefuse.nn.SqueezeExcite`, keeping its children
and their names."""

from __future__ import annotations

from torch import nn

from mobilefuse._se_layout import se_layout, se_options
from mobilefuse._swap import clone_as
from mobilefuse.nn import SqueezeExcite


def to_squeeze_excite(module: nn.Module, backend: str) -> SqueezeExcite:
    """The SqueezeExcite taking ``module``'s place (``se_gap(module)`` must be None)."""
    reduce_name, _, expand_name, _ = se_layout(module)
    activation, gate = se_options(module)
    return clone_as(module, SqueezeExcite, reduce_name=reduce_name, expand_name=expand_name,
                    act_name=activation, gate_name=gate, backend=backend)
