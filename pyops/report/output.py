"""The report's files: table rows, CSV, Markdown, JSON, and the plots."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mobilefuse.bench.report import fmt, render_table, write_json
from mobilefuse.report import plots
from mobilefuse.report.run import ModelResult

HEADERS = ("model", "res", "params (M)", "MACs (M)", "GFLOPs", "train act. MB eager",
           "train act. MB accel.", "eager ms", "accel. ms", "speedup", "top-1 %")


def table_rows(results: Sequence[ModelResult]) -> list[list[str]]:
    """One row of formatted cells per model, in ``HEADERS`` order."""
    return [[r.model, str(r.resolution), fmt(r.params / 1e6, ".3f"), fmt(r.macs / 1e6, ".0f"),
             fmt(r.flops / 1e9, ".3f"), fmt(r.activation_bytes_eager / 2**20, ".1f"),
             fmt(r.activation_bytes_accelerated / 2**20, ".1f"), fmt(r.eager_ms, ".2f"),
             fmt(r.accelerated_ms, ".2f"),
             "-" if r.speedup is None else f"{r.speedup:.2f}x",
             fmt(r.top1, ".2f")] for r in results]


def title(env: dict[str, Any], batch: int, dtype: str) -> str:
    """What the table measured, on what."""
    allocator = f"; allocator: {env['allocator']}" if env.get("allocator") else ""
    return (f"Efficiency report: {env['device']}, {dtype}, batch {batch} "
            f"(latency: eval forward, on CPU eager and "
            f"accelerated timed side by side; activation memory: training step{allocator})")


def markdown(results: Sequence[ModelResult], heading: str) -> str:
    """The table as Markdown, with the accuracy sources listed under it."""
    lines = [f"**{heading}**", "", "| " + " | ".join(HEADERS) + " |",
             "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    sources = [f"- {r.model}: {r.top1_source}" for r in results if r.top1_source]
    if sources:
        lines += ["", "Top-1 sources:", *sources]
    return "\n".join(lines) + "\n"


def write_outputs(results: Sequence[ModelResult], out_dir: Path, env: dict[str, Any],
                  batch: int, dtype: str) -> dict[str, Path]:
    """Write ``efficiency.{csv,md,json}`` and the three PNG plots under ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    heading = title(env, batch, dtype)
    files = {"csv": out_dir / "efficiency.csv", "markdown": out_dir / "efficiency.md",
             "json": out_dir / "efficiency.json"}
    rows = [r.as_dict() for r in results]
    with files["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["model"])
        writer.writeheader()
        writer.writerows(rows)
    files["markdown"].write_text(markdown(results, heading))
    write_json(files["json"], {"environment": env, "batch": batch, "dtype": dtype,
                               "models": rows})
    files["accuracy_vs_flops"] = plots.accuracy_vs_flops(results,
                                                         out_dir / "accuracy_vs_flops.png")
    files["accuracy_vs_params"] = plots.accuracy_vs_params(results,
                                                           out_dir / "accuracy_vs_params.png")
    files["speedup"] = plots.speedup_bars(results, out_dir / "speedup.png", env["device"])
    return files


def text_table(results: Sequence[ModelResult], env: dict[str, Any], batch: int,
               dtype: str) -> str:
    """The table as plain text."""
    return render_table(title(env, batch, dtype), HEADERS, table_rows(results))
