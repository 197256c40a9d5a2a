"""``accelerate_report()``: what :func:`mobilefuse.accelerate` swapped in a model, what it left
and why."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from mobilefuse import nn as mfnn
from mobilefuse._block_layout import block_gap, is_block_class
from mobilefuse._fusion import (
    FUSABLE_ACTIVATIONS,
    FoldedBatchNorm2d,
    FoldedConv2d,
    FusedActivation,
)
from mobilefuse._se_layout import se_gap, se_layout
from mobilefuse._shuffle_unit import is_shuffle_unit_class, shuffle_unit_gap
from mobilefuse._swap import origin_class
from mobilefuse.accelerate import LEAF_SWAPS, _check_call, accelerate, conv_gap

__all__ = ["AccelerateReport", "ReportRow", "accelerate_report"]


@dataclass(frozen=True)
class ReportRow:
    """One leaf module: where it is, what it was and is, and why.

    ``status`` is ``"swapped"`` (now a mobilefuse module), ``"would swap"`` (accelerate() has
    not run on it but would swap it) or ``"kept"`` (``detail`` says why).
    """

    path: str
    original: str
    current: str
    status: str
    detail: str


@dataclass(frozen=True)
class AccelerateReport:
    """The rows of :func:`accelerate_report`, one per leaf module; ``str()`` is a table."""

    rows: tuple[ReportRow, ...]

    def count(self, status: str) -> int:
        """How many rows have this status."""
        return sum(row.status == status for row in self.rows)

    def __str__(self) -> str:
        head = ("module", "was", "now", "status", "detail")
        cells = [head] + [(r.path or "(root)", r.original, r.current, r.status, r.detail)
                          for r in self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + "  "
                 + row[4] for row in cells]
        lines.insert(1, "-" * len(lines[0]))
        summary = ", ".join(f"{self.count(s)} {s}" for s in ("swapped", "would swap", "kept"))
        return "\n".join(lines + [f"{len(self.rows)} modules: {summary}"])


def _swapped_detail(module: nn.Module) -> str:
    if isinstance(module, FoldedBatchNorm2d):
        return "folded into the conv before it (eval mode)"
    if isinstance(module, FusedActivation):
        when = "in eval mode" if module.fusion.norm is not None else "always"
        return f"{module.name} runs in the conv before it {when}"
    if isinstance(module, FoldedConv2d):
        return f"vendor convolution + {module.fusion.describe()} folded"
    if isinstance(module, mfnn.SqueezeExcite):
        return f"fused squeeze-and-excitation ({module.act_name}, {module.gate_name} gate)"
    if isinstance(module, mfnn.MaxPool2d):
        return "channels_last max-pool kernel in CPU inference"
    if isinstance(module, mfnn.ShuffleUnit):
        return "concatenation + channel shuffle in one pass (concat_shuffle); branches below"
    if isinstance(module, mfnn.ShuffleStage):
        return ("stride-1 units hand their outputs on as dense halves in CPU inference "
                "(concat_shuffle_chunks); units below")
    if isinstance(module, mfnn.InvertedResidual):
        parts = ["expand" if module.layout.expand else None, "depthwise",
                 "SE" if module.layout.se else None, "project",
                 "residual" if module.layout.residual else None]
        return (f"fused block ({' + '.join(p for p in parts if p)}): BatchNorms folded in eval, "
                "recomputed activations in training")
    fusion = getattr(module, "fusion", None)
    detail = "fused kernel" if fusion is None else f"fused kernel + {fusion.describe()}"
    backend = getattr(module, "backend", "auto")
    return detail if backend == "auto" else f"{detail}, backend={backend!r}"


def _kept_reason(module: nn.Module) -> str:
    """Why accelerate() leaves ``module`` as it is."""
    kind = type(module)
    if is_block_class(module):
        return block_gap(module) or "no fused backend takes the model's device and dtype"
    if is_shuffle_unit_class(module):
        return shuffle_unit_gap(module) or "no fused backend takes the model's device and dtype"
    if se_layout(module) is not None:
        return se_gap(module) or "no fused backend takes the model's device and dtype"
    if isinstance(module, (mfnn.DepthwiseConv2d, mfnn.HardSwish, mfnn.HardSigmoid,
                           mfnn.ChannelShuffle, mfnn.MaxPool2d)):
        return "already a mobilefuse module"
    if isinstance(module, nn.Conv2d):
        return conv_gap(module, "auto") or "no fused backend takes it"
    if kind is nn.BatchNorm2d:
        if not module.track_running_stats:
            return "track_running_stats=False: batch statistics in eval mode too"
        return "folds only right after an nn.Conv2d in an nn.Sequential, without hooks"
    if kind in FUSABLE_ACTIVATIONS:
        return ("fuses only right after a depthwise conv, or a conv and its BatchNorm, in an "
                "nn.Sequential, without hooks")
    if kind in LEAF_SWAPS:
        return "no fused backend takes the model's device and dtype"
    return f"no mobilefuse kernel for {kind.__name__}"


def accelerate_report(model: nn.Module, *, show: bool = True) -> AccelerateReport:
    """What :func:`mobilefuse.accelerate` swapped in ``model`` and why the rest was kept.

    Works on any model: on one not yet accelerated, rows say ``"would swap"`` for what
    ``accelerate()`` would take. One row per leaf module (containers are left out). Reasons are
    given for the ``"auto"`` backend.

    Args:
        model: an ``nn.Module``.
        show: print the table.
    """
    _check_call(model, "auto", "accelerate_report")
    # What accelerate() would do to the modules not yet swapped: ask it, on a copy.
    trial = dict(accelerate(model).named_modules())
    rows = []
    fused_whole = (mfnn.SqueezeExcite, mfnn.InvertedResidual)
    wholes = [m for path, m in model.named_modules()
              if isinstance(m, fused_whole) or isinstance(trial.get(path), fused_whole)]
    inside = {id(child) for m in wholes for child in m.modules() if child is not m}
    for path, module in model.named_modules():
        # Leaves, plus the containers swapped whole (squeeze-and-excitation, MBConv blocks);
        # not the layers inside a fused one, whose parameters it reads itself.
        whole = (isinstance(module, (*fused_whole, mfnn.ShuffleUnit, mfnn.ShuffleStage))
                 or isinstance(trial.get(path), mfnn.ShuffleStage)
                 or se_layout(module) is not None or is_block_class(module)
                 or is_shuffle_unit_class(module))
        if (module._modules and not whole) or id(module) in inside:
            continue
        name = type(module).__name__
        origin = origin_class(module)
        if origin is not None:
            rows.append(ReportRow(path, origin.__name__, name, "swapped",
                                  _swapped_detail(module)))
        elif path in trial and origin_class(trial[path]) is not None:
            rows.append(ReportRow(path, name, type(trial[path]).__name__, "would swap",
                                  _swapped_detail(trial[path])))
        else:
            rows.append(ReportRow(path, name, name, "kept", _kept_reason(module)))
    report = AccelerateReport(tuple(rows))
    if show:
        print(report)
    return report
