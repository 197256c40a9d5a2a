"""The last inference call a folded convolution module built, replayed while its inputs hold.

In eval mode a folded convolution (:class:`~mobilefuse._fusion.FoldedConv2d`,
:class:`~mobilefuse.nn.DepthwiseConv2d` with a BatchNorm folded in) decides on every call how to
run: argument checks, backend choice, whether oneDNN serves the input, which reordered weight to
use. At batch 1 that costs 5-10 us a call, as much as a small layer's kernel. With no gradient
recorded the decision depends only on the folded weight and bias, the input's shape, strides,
dtype and device, and a few global switches, so :class:`CallMemo` keeps the call it produced
(a function of the input alone) and replays it while all of those are the same: the same weight
and bias tensors (identity; the weight's version too, since its reordered copy is derived from
it), the same input metadata, the same mobilefuse backend, oneDNN switch and autocast state.
Anything else builds the call again.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mobilefuse.backends import get_backend

Call = Callable[[torch.Tensor], torch.Tensor]


def _state(x: torch.Tensor, weight: torch.Tensor) -> tuple:
    """What a built call depends on besides the weight's and bias's identity."""
    return (weight.data_ptr(), weight._version, x.shape, x.stride(), x.dtype, x.device,
            get_backend(), torch.backends.mkldnn.enabled, torch.is_autocast_enabled(x.device.type))


class CallMemo:
    """One module's last built inference call and what it was built for (see module doc).

    Kept as one tuple, replaced whole, so threads calling the module at once each see a
    consistent entry.
    """

    __slots__ = ("_entry",)

    def __init__(self) -> None:
        self._entry: tuple[torch.Tensor, torch.Tensor | None, tuple, Call] | None = None

    def run(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
            build: Callable[[], Call]) -> torch.Tensor:
        """The kept call on ``x`` where it was built for these tensors, else ``build()``'s call,
        kept. Only where no gradient is recorded and no ``torch.compile`` trace runs. A weight
        without a version counter (made under ``torch.inference_mode``) is not kept: its
        in-place changes could not be seen."""
        if weight.is_inference():
            return build()(x)
        state = _state(x, weight)
        entry = self._entry
        if (entry is not None and entry[0] is weight and entry[1] is bias
                and entry[2] == state):
            return entry[3](x)
        call = build()
        self._entry = (weight, bias, state, call)
        return call(x)
