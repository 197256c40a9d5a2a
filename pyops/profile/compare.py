"""Side-by-side per-layer times of a model and its accelerated copy.

The two models' rows need not match one to one: an accelerated MBConv block is one row where
eager has a row for each convolution, BatchNorm and activation inside it. Rows are grouped
under the outermost module path that has a row in either profile, so each group is the same
work in both models.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from mobilefuse.bench.report import fmt, render_table
from mobilefuse.profile.attribution import PSEUDO_ROWS
from mobilefuse.profile.recorder import ROOT
from mobilefuse.profile.result import LayerRow, ProfileResult, op_summary

HEADERS = ("layer", "eager op", "accelerated op", "eager ms", "accel. ms", "speedup",
           "eager share")


@dataclasses.dataclass
class ComparedRow:
    """One group of layers: the same module subtree in both models."""

    path: str
    eager_ops: list[str]
    accelerated_ops: list[str]
    eager_ms: float
    accelerated_ms: float
    eager_share: float

    @property
    def speedup(self) -> float | None:
        """Eager time over accelerated time; None when the accelerated side took no time."""
        return self.eager_ms / self.accelerated_ms if self.accelerated_ms > 0 else None

    def cells(self) -> list[str]:
        """The row's table cells, in ``HEADERS`` order."""
        return [self.path or ROOT, op_summary(self.eager_ops), op_summary(self.accelerated_ops),
                fmt(self.eager_ms, ".3f"), fmt(self.accelerated_ms, ".3f"),
                "-" if self.speedup is None else f"{self.speedup:.2f}x",
                f"{100 * self.eager_share:.1f}%"]


def _is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root + ".")


def _outermost(paths: set[str]) -> set[str]:
    """The paths no other path of the set contains; the model's own row ("") and the
    backward-only rows stand alone rather than containing everything."""
    nested = {p for p in paths if p and p not in PSEUDO_ROWS}
    roots = {p for p in nested if not any(q != p and _is_under(p, q) for q in nested)}
    return roots | (paths - nested)


def group_roots(eager_paths: set[str], accelerated_paths: set[str]) -> list[str]:
    """Module paths that split both profiles into the same work.

    Start from the outermost rows of either side; a group that is empty on one side (the
    BatchNorm an accelerated convolution folded in) is lifted to its parent module, until
    every group has rows on both sides or is a top-level module.
    """
    def has_rows(root: str, paths: set[str]) -> bool:
        if not root or root in PSEUDO_ROWS:
            return root in paths
        return any(p and p not in PSEUDO_ROWS and _is_under(p, root) for p in paths)

    roots = _outermost(eager_paths | accelerated_paths)
    while True:
        lifted = set()
        for root in roots:
            both = has_rows(root, eager_paths) and has_rows(root, accelerated_paths)
            parent = root.rpartition(".")[0]
            lifted.add(root if both or root in PSEUDO_ROWS or not parent else parent)
        lifted = _outermost(lifted)
        if lifted == roots:
            return sorted(roots)
        roots = lifted


def _ops_of(rows: list[LayerRow]) -> list[str]:
    seen: dict[str, float] = {}
    for r in sorted(rows, key=lambda r: -r.total_ms):
        for op in r.ops:
            seen.setdefault(op, r.total_ms)
    return list(seen)


def _group(rows: list[LayerRow], root: str) -> list[LayerRow]:
    if not root or root in PSEUDO_ROWS:
        return [r for r in rows if r.path == root]
    return [r for r in rows if r.path and r.path not in PSEUDO_ROWS and _is_under(r.path, root)]


@dataclasses.dataclass
class ProfileComparison:
    """The profiles of a model (``eager``) and of ``mobilefuse.accelerate`` of it, and their
    per-layer speedups, costliest eager groups first."""

    eager: ProfileResult
    accelerated: ProfileResult
    rows: list[ComparedRow]

    @property
    def speedup(self) -> float | None:
        """Whole-step speedup: eager wall time per step over accelerated."""
        return self.eager.step_ms / self.accelerated.step_ms if self.accelerated.step_ms else None

    @property
    def trace_paths(self) -> list[Path]:
        """Both Chrome trace files."""
        return [p for p in (self.eager.trace_path, self.accelerated.trace_path) if p]

    def title(self) -> str:
        """Both step times and the whole-step speedup."""
        speed = "-" if self.speedup is None else f"{self.speedup:.2f}x"
        return (f"{self.eager.label}: eager {self.eager.step_ms:.3f} ms vs accelerated "
                f"{self.accelerated.step_ms:.3f} ms per step ({speed}) on {self.eager.device}")

    def table(self, top: int | None = None) -> str:
        """The per-group comparison as text, the ``top`` costliest eager groups."""
        rows = self.rows if top is None else self.rows[:top]
        text = render_table(self.title(), HEADERS, [r.cells() for r in rows])
        if len(rows) < len(self.rows):
            text += f"\n... {len(self.rows) - len(rows)} more groups"
        return text

    def as_dict(self) -> dict[str, Any]:
        """Both profiles and the grouped rows, for a JSON file."""
        return {"speedup": self.speedup, "eager": self.eager.as_dict(),
                "accelerated": self.accelerated.as_dict(),
                "groups": [dict(dataclasses.asdict(r), speedup=r.speedup) for r in self.rows]}

    def __str__(self) -> str:
        return self.table()


def compare(eager: ProfileResult, accelerated: ProfileResult) -> ProfileComparison:
    """Group both profiles' rows by module subtree and pair them."""
    total = eager.attributed_ms or 1.0
    rows = []
    for root in group_roots({r.path for r in eager.rows}, {r.path for r in accelerated.rows}):
        mine, theirs = _group(eager.rows, root), _group(accelerated.rows, root)
        eager_ms = sum(r.total_ms for r in mine)
        rows.append(ComparedRow(root, _ops_of(mine), _ops_of(theirs), eager_ms,
                                sum(r.total_ms for r in theirs), eager_ms / total))
    rows.sort(key=lambda r: -r.eager_ms)
    return ProfileComparison(eager, accelerated, rows)
