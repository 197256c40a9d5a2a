"""The report's plots: accuracy vs FLOPs, accuracy vs parameters, speedup per model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mobilefuse._plotting import pyplot, save_figure
from mobilefuse.report.run import ModelResult


def _accuracy_scatter(results: Sequence[ModelResult], x_of, xlabel: str, path: Path) -> Path:
    plt = pyplot()
    points = [(x_of(r), r.top1, r.model) for r in results if r.top1 is not None]
    fig, ax = plt.subplots(figsize=(7, 5))
    if points:
        xs, ys, names = zip(*points, strict=True)
        ax.scatter(xs, ys)
        for x, y, name in points:
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    else:
        ax.text(0.5, 0.5, "no published accuracy for these models", ha="center",
                transform=ax.transAxes)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("ImageNet top-1 (%)")
    ax.grid(alpha=0.3, which="both")
    return save_figure(fig, path)


def accuracy_vs_flops(results: Sequence[ModelResult], path: Path) -> Path:
    """Top-1 against multiply-adds per image (log scale)."""
    return _accuracy_scatter(results, lambda r: r.macs / 1e6,
                             "multiply-adds per image (M, log scale)", path)


def accuracy_vs_params(results: Sequence[ModelResult], path: Path) -> Path:
    """Top-1 against parameter count (log scale)."""
    return _accuracy_scatter(results, lambda r: r.params / 1e6, "parameters (M, log scale)",
                             path)


def speedup_bars(results: Sequence[ModelResult], path: Path, device: str) -> Path:
    """Accelerated vs eager latency per model, one bar each (1.0 marked)."""
    plt = pyplot()
    timed = [r for r in results if r.speedup is not None]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(timed) + 2), 4.5))
    ax.bar([r.model for r in timed], [r.speedup for r in timed])
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_ylabel("speedup over eager (×)")
    ax.set_title(f"mobilefuse.accelerate() inference speedup, {device}")
    ax.tick_params(axis="x", rotation=45)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    return save_figure(fig, path)
