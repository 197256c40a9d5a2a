"""Speedup ratios and their geometric means, shared by the runner's sections."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from mobilefuse.bench import cases


def add_ratios(entries: list[dict[str, Any]]) -> None:
    """Speedups of each implementation over eager and over torch.compile (> 1: faster)."""
    ms = {e["impl"]: e["median_ms"] for e in entries if "median_ms" in e}
    for entry in entries:
        own = entry.get("median_ms")
        for key, rival in (("ratio_vs_eager", cases.EAGER), ("ratio_vs_compile", cases.COMPILE)):
            entry[key] = ms[rival] / own if own and rival in ms else None


def _geomean(values: list[float]) -> float | None:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def geomeans(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per implementation, dtype, batch, layout and pass: the geometric means over cases
    (layers, blocks) of the speedups over eager and over torch.compile, and of the share of
    copy bandwidth where the cases have one."""
    groups: dict[tuple[str, str, int | None, str, str], list[dict[str, Any]]] = \
        defaultdict(list)
    for e in entries:
        if e["impl"] not in (cases.EAGER, cases.COPY):
            groups[(e["impl"], e["dtype"], e.get("batch"), e["memory_format"], e["pass"])].append(e)
    summary = []
    for (impl, dtype, batch, layout, pass_), group in groups.items():
        vs_eager = [e["ratio_vs_eager"] for e in group if e.get("ratio_vs_eager")]
        vs_compile = [e["ratio_vs_compile"] for e in group if e.get("ratio_vs_compile")]
        of_copy = [e["frac_of_copy_bw"] for e in group if e.get("frac_of_copy_bw")]
        summary.append({
            "impl": impl, "dtype": dtype, "batch": batch, "memory_format": layout,
            "pass": pass_, "layers": len(group), "geomean_vs_eager": _geomean(vs_eager),
            "geomean_vs_compile": None if impl == cases.COMPILE else _geomean(vs_compile),
            "geomean_frac_of_copy_bw": _geomean(of_copy),
        })
    return summary


def ratio_text(value: float | None) -> str:
    """A speedup as ``1.23x``, or '-'."""
    return "-" if value is None else f"{value:.2f}x"
