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

    def get(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
            ) -> Call | None:
        """The call built for these tensors, or None. Call only where no gradient is recorded
        and no ``torch.compile`` trace runs."""
        entry = self._entry
        if entry is None or entry[0] is not weight or entry[1] is not bias:
            return None
        return entry[3] if _state(x, weight) == entry[2] else None

    def put(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
            call: Call) -> None:
        """Keep ``call``, built for ``x``, ``weight`` and ``bias``. A weight without a version
        counter (made under ``torch.inference_mode``) is not kept: its in-place changes could
        not be seen."""
        if not weight.is_inference():
            self._entry = (weight, bias, _state(x, weight), call)

    def run(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
            build: Callable[[], Call]) -> torch.Tensor:
        """The kept call on ``x`` where it was built for these tensors, else ``build()``'s call,
        kept. Only where no gradient is recorded and no ``torch.compile`` trace runs."""
        call = self.get(x, weight, bias)
        if call is None:
            call = build()
            self.put(x, weight, bias, call)
        return call(x)
