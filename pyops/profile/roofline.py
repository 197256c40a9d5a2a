"""The roofline view: each layer's achieved bandwidth and FLOP rate against the device's ceilings.

The ceilings are measured here, on the device and dtype of the run, not taken from a data
sheet: the bandwidth of ``dst.copy_(src)`` on buffers much larger than the caches, and the best
FLOP rate of a large square ``torch.mm`` and of a 1x1 convolution of the same size (on CPU
oneDNN's convolution GEMM runs about twice as fast as ``torch.mm``, and the layers use it).
A layer's point is its forward's arithmetic intensity (FLOPs over minimum bytes) and achieved
FLOP rate; the roof there is ``min(GEMM rate, copy bandwidth x intensity)``. Layers whose ops
count no FLOPs (BatchNorm, activations, the accelerated elementwise kernels) are placed by
bandwidth alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mobilefuse._plotting import pyplot, save_figure
from mobilefuse.bench import timing
from mobilefuse.bench.report import device_name, fmt, render_table
from mobilefuse.profile.result import ProfileResult

HEADERS = ("layer", "op", "fwd ms", "MB", "MFLOP", "FLOP/B", "GB/s", "% copy BW", "GFLOP/s",
           "% of roof")


@dataclasses.dataclass
class Ceilings:
    """What the device reaches at best, measured: copy bandwidth (bytes read plus bytes
    written per second) and dense matrix-product rate (the better of ``torch.mm`` and a 1x1
    convolution, both recorded), in ``dtype``."""

    device: str
    dtype: str
    copy_gbps: float
    gemm_gflops: float
    copy_bytes: int
    gemm_n: int
    mm_gflops: float = 0.0
    conv1x1_gflops: float = 0.0

    def roof_gflops(self, intensity: float) -> float:
        """The attainable GFLOP/s at ``intensity`` FLOPs per byte."""
        return min(self.gemm_gflops, self.copy_gbps * intensity)

    @property
    def ridge(self) -> float:
        """The intensity (FLOP/byte) where bandwidth stops being the limit."""
        return self.gemm_gflops / self.copy_gbps


def measure_ceilings(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                     copy_bytes: int | None = None, gemm_n: int | None = None,
                     reps: int = 10) -> Ceilings:
    """Time a large copy, a large ``torch.mm`` and a 1x1 convolution on ``device`` in ``dtype``.

    Defaults: a 256 MiB copy (past every cache); ``n = 1024`` on CPU or ``8192`` on GPU for
    the ``n x n x n`` product, and a channels_last ``(16, n, 16, 16)`` input through an
    ``n``-to-``n`` 1x1 convolution.
    """
    device = torch.device(device)
    copy_bytes = copy_bytes or 256 * 2**20
    gemm_n = gemm_n or (8192 if device.type == "cuda" else 1024)
    timing.configure_allocator_for(device)
    numel = max(1, copy_bytes // torch.empty((), dtype=dtype).element_size())
    src = torch.randn(numel, device=device).to(dtype)
    dst = torch.empty_like(src)
    copy_ms = timing.time_fn(lambda: dst.copy_(src), device, reps).median_ms
    moved = 2 * src.numel() * src.element_size()
    a = torch.randn(gemm_n, gemm_n, device=device).to(dtype)
    b = torch.randn(gemm_n, gemm_n, device=device).to(dtype)
    out = torch.empty_like(a)
    mm_ms = timing.time_fn(lambda: torch.mm(a, b, out=out), device, reps).median_ms
    image = torch.randn(16, gemm_n, 16, 16, device=device).to(dtype).contiguous(
        memory_format=torch.channels_last)
    weight = b[:, :, None, None].contiguous(memory_format=torch.channels_last)
    conv_ms = timing.time_fn(lambda: torch.nn.functional.conv2d(image, weight), device,
                             reps).median_ms
    mm_gflops = 2 * gemm_n**3 / (mm_ms * 1e-3) / 1e9
    conv_gflops = 2 * 16 * 16 * 16 * gemm_n**2 / (conv_ms * 1e-3) / 1e9
    return Ceilings(device=device_name(device), dtype=str(dtype).removeprefix("torch."),
                    copy_gbps=timing.gbps(moved, copy_ms),
                    gemm_gflops=max(mm_gflops, conv_gflops), copy_bytes=moved, gemm_n=gemm_n,
                    mm_gflops=mm_gflops, conv1x1_gflops=conv_gflops)


@dataclasses.dataclass
class RooflinePoint:
    """One layer's forward on the roofline."""

    path: str
    op: str
    forward_ms: float
    bytes: int
    flops: int
    gbps: float
    gflops: float
    copy_fraction: float
    roof_fraction: float | None

    @property
    def intensity(self) -> float:
        """FLOPs per byte moved."""
        return self.flops / self.bytes if self.bytes else 0.0

    def cells(self) -> list[str]:
        """The point's table cells, in ``HEADERS`` order."""
        return [self.path or "(model)", self.op, fmt(self.forward_ms, ".3f"),
                fmt(self.bytes / 1e6, ".2f"), fmt(self.flops / 1e6, ".1f"),
                fmt(self.intensity, ".2f"), fmt(self.gbps, ".1f"),
                f"{100 * self.copy_fraction:.0f}%", fmt(self.gflops, ".1f"),
                "-" if self.roof_fraction is None else f"{100 * self.roof_fraction:.0f}%"]


def roofline_points(result: ProfileResult, ceilings: Ceilings) -> list[RooflinePoint]:
    """The layers of ``result`` whose traffic is known, costliest first."""
    points = []
    for row in result.rows:
        if row.bytes is None or not row.bytes or row.forward_ms <= 0:
            continue
        flops = row.flops or 0
        gbps = row.bytes / (row.forward_ms * 1e-3) / 1e9
        gflops = flops / (row.forward_ms * 1e-3) / 1e9
        roof = ceilings.roof_gflops(flops / row.bytes) if flops else None
        points.append(RooflinePoint(
            path=row.path, op=row.ops[0] if row.ops else "-", forward_ms=row.forward_ms,
            bytes=row.bytes, flops=flops, gbps=gbps, gflops=gflops,
            copy_fraction=gbps / ceilings.copy_gbps,
            roof_fraction=gflops / roof if roof else None))
    return points


def roofline_title(ceilings: Ceilings, label: str) -> str:
    """The ceilings a table or plot is drawn against."""
    return (f"Roofline of {label} on {ceilings.device} ({ceilings.dtype}): copy "
            f"{ceilings.copy_gbps:.1f} GB/s, GEMM {ceilings.gemm_gflops:.1f} GFLOP/s, ridge "
            f"{ceilings.ridge:.1f} FLOP/B")


def roofline_table(points: Sequence[RooflinePoint], ceilings: Ceilings, label: str,
                   top: int | None = None) -> str:
    """The points as text, the ``top`` costliest."""
    shown = points if top is None else points[:top]
    return render_table(roofline_title(ceilings, label), HEADERS, [p.cells() for p in shown])


def plot_roofline(series: Mapping[str, Sequence[RooflinePoint]], ceilings: Ceilings,
                  path: str | Path, title: str | None = None) -> Path:
    """Draw the roof and every series' FLOP-counting layers (log-log) as a PNG at ``path``.

    Marker area follows each layer's forward time, so the layers that matter stand out.
    """
    plt = pyplot()
    counted = {name: [p for p in pts if p.flops > 0] for name, pts in series.items()}
    every = [p for pts in counted.values() for p in pts]
    low = min([p.intensity for p in every] + [ceilings.ridge / 100]) / 2
    high = max([p.intensity for p in every] + [ceilings.ridge * 10]) * 2
    fig, ax = plt.subplots(figsize=(8, 5.5))
    xs = [low * (high / low) ** (i / 200) for i in range(201)]
    ax.plot(xs, [ceilings.roof_gflops(x) for x in xs], color="black", linewidth=1.5,
            label=f"roof: copy {ceilings.copy_gbps:.0f} GB/s, GEMM "
                  f"{ceilings.gemm_gflops:.0f} GFLOP/s")
    longest = max([p.forward_ms for p in every] + [1e-9])
    for (name, pts), marker in zip(counted.items(), "os^D", strict=False):
        if pts:
            ax.scatter([p.intensity for p in pts], [p.gflops for p in pts], marker=marker,
                       s=[10 + 190 * p.forward_ms / longest for p in pts], alpha=0.6,
                       label=f"{name} ({len(pts)} layers)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte, minimum traffic)")
    ax.set_ylabel("achieved GFLOP/s (forward)")
    ax.set_title(title or roofline_title(ceilings, ", ".join(series)), fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def as_dict(ceilings: Ceilings, points: Sequence[RooflinePoint]) -> dict[str, Any]:
    """Ceilings and points for a JSON file."""
    return {"ceilings": dataclasses.asdict(ceilings),
            "points": [dict(dataclasses.asdict(p), intensity=p.intensity) for p in points]}
