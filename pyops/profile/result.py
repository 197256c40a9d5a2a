"""What :func:`mobilefuse.profile` returns: per-layer rows, their table and their files."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from mobilefuse.bench.report import fmt, render_table
from mobilefuse.profile.recorder import ROOT


def op_summary(ops: list[str]) -> str:
    """The costliest op, with how many others ran beside it ("aten::conv2d +2"), or "-"."""
    if not ops:
        return "-"
    return ops[0] + (f" +{len(ops) - 1}" if len(ops) > 1 else "")


HEADERS = ("layer", "module", "op", "input shape", "fwd ms", "bwd ms", "share", "MB", "GB/s",
           "GFLOP/s")


@dataclasses.dataclass
class LayerRow:
    """One module's share of a step.

    ``path`` is the module's name in ``model.named_modules()`` ("" for the model itself, whose
    row holds the work its ``forward`` does outside its children). Times are per step (one
    forward, plus its backward when training), in milliseconds: on CUDA the device time of
    the kernels its ops launched, on CPU wall time. ``bytes`` and ``flops`` are per forward:
    the minimum traffic (inputs, outputs, parameters and buffers, each once) and the
    convolution / matrix-product FLOPs; None where the row is not a whole module's work (a
    module whose children also ran ops).
    """

    path: str
    module: str
    ops: list[str]
    input_shape: tuple[int, ...] | None
    forward_ms: float
    backward_ms: float
    share: float = 0.0
    bytes: int | None = None
    flops: int | None = None

    @property
    def name(self) -> str:
        """The path as shown: the model itself is ``(model)``."""
        return self.path or ROOT

    @property
    def total_ms(self) -> float:
        """Forward plus backward milliseconds per step."""
        return self.forward_ms + self.backward_ms

    @property
    def gbps(self) -> float | None:
        """Achieved forward bandwidth (minimum bytes over forward time), GB/s."""
        if self.bytes is None or self.forward_ms <= 0:
            return None
        return self.bytes / (self.forward_ms * 1e-3) / 1e9

    @property
    def gflops(self) -> float | None:
        """Achieved forward FLOP rate, GFLOP/s; None without FLOPs to count."""
        if not self.flops or self.forward_ms <= 0:
            return None
        return self.flops / (self.forward_ms * 1e-3) / 1e9

    def cells(self) -> list[str]:
        """The row's table cells, in ``HEADERS`` order."""
        shape = "-" if self.input_shape is None else "x".join(map(str, self.input_shape))
        return [self.name, self.module, op_summary(self.ops), shape, fmt(self.forward_ms, ".3f"),
                fmt(self.backward_ms, ".3f") if self.backward_ms else "-",
                f"{100 * self.share:.1f}%",
                "-" if self.bytes is None else fmt(self.bytes / 1e6, ".2f"),
                fmt(self.gbps, ".1f"), fmt(self.gflops, ".1f")]

    def as_dict(self) -> dict[str, Any]:
        """The row for a JSON file."""
        out = dataclasses.asdict(self)
        out.update(input_shape=None if self.input_shape is None else list(self.input_shape),
                   total_ms=self.total_ms, gbps=self.gbps, gflops=self.gflops)
        return out


@dataclasses.dataclass
class ProfileResult:
    """One model's profile: rows by time, costliest first, and where its trace went.

    ``step_ms`` is the wall (CPU) time of one profiled step; ``attributed_ms`` the rows' sum.
    On CPU they differ by the hooks' own cost and the work outside any module (the loss);
    on CUDA ``attributed_ms`` counts kernel time only, so their ratio shows idle GPU time.
    """

    label: str
    rows: list[LayerRow]
    steps: int
    train: bool
    device: str
    step_ms: float
    trace_path: Path | None

    @property
    def attributed_ms(self) -> float:
        """The rows' milliseconds per step, summed."""
        return sum(r.total_ms for r in self.rows)

    def row(self, path: str) -> LayerRow:
        """The row of the module at ``path``; KeyError when that module ran no work."""
        for r in self.rows:
            if r.path == path:
                return r
        raise KeyError(f"no row for module {path!r}")

    def title(self) -> str:
        """What was profiled, on what, and how much of the step the rows account for."""
        mode = "training step (forward + backward)" if self.train else "inference (forward)"
        return (f"{self.label}: {mode} on {self.device}, {self.steps} step(s); "
                f"{self.attributed_ms:.3f} ms attributed of {self.step_ms:.3f} ms per step")

    def table(self, top: int | None = None) -> str:
        """The per-layer table as text, the ``top`` costliest rows (all when None)."""
        rows = self.rows if top is None else self.rows[:top]
        text = render_table(self.title(), HEADERS, [r.cells() for r in rows])
        left = len(self.rows) - len(rows)
        if left > 0:
            rest = sum(r.share for r in self.rows[len(rows):])
            text += f"\n... {left} more rows, {100 * rest:.1f}% of the time"
        return text

    def as_dict(self) -> dict[str, Any]:
        """The whole profile for a JSON file."""
        return {"label": self.label, "train": self.train, "device": self.device,
                "steps": self.steps, "step_ms": self.step_ms,
                "attributed_ms": self.attributed_ms,
                "trace_path": None if self.trace_path is None else str(self.trace_path),
                "rows": [r.as_dict() for r in self.rows]}

    def __str__(self) -> str:
        return self.table()
