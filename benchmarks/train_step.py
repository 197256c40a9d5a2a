"""Training-step (or eval) time of zoo models: eager, accelerate(), and accelerate() with
per-layer swaps only (no fused blocks), interleaved in one process.

    python benchmarks/train_step.py --models mobilenet_v3_large,efficientnet_b0 --mode train
    python benchmarks/train_step.py --mode eval --features --reps 15   # feature extractors

Prints the medians and ratios (and, for training, each variant's peak memory during a step
and the activations it keeps for the backward) and writes them as JSON (``--out``). CPU runs
reuse freed heap blocks (see ``mobilefuse.bench.timing.configure_allocator``), as the
benchmark runner does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

import mobilefuse
from mobilefuse.bench import report, timing
from mobilefuse.models import create_model
from mobilefuse.report.measure import activation_bytes, training_step_peak_bytes


def _per_layer_only(model: nn.Module) -> nn.Module:
    """accelerate() with the whole-block swaps turned off (MBConv blocks and ShuffleNetV2
    branches run layer by layer)."""
    accelerate_module = sys.modules["mobilefuse.accelerate"]
    saved = {name: getattr(accelerate_module, name)
             for name in ("block_gap", "sequential_block_gap")}
    for name in saved:
        setattr(accelerate_module, name, lambda module: "block swap off for this comparison")
    try:
        return mobilefuse.accelerate(model)
    finally:
        for name, gap in saved.items():
            setattr(accelerate_module, name, gap)


def measure(name: str, train: bool, batch: int, channels_last: bool, reps: int,
            features: bool = False) -> dict:
    """Median milliseconds per step of each variant, measured in rotating rounds;
    ``features``: the model's feature extractor (``model.features``) only."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    eager = create_model(name).train(train).to(memory_format=fmt)
    if features:
        eager = eager.features
    variants = {"eager": eager, "blocks": mobilefuse.accelerate(eager),
                "per_layer": _per_layer_only(eager)}
    x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=fmt)

    def step(model: nn.Module) -> None:
        if train:
            model(x).sum().backward()
        else:
            with torch.no_grad():
                model(x)

    for model in variants.values():
        for _ in range(2):
            step(model)
    times: dict[str, list[float]] = {k: [] for k in variants}
    keys = list(variants)
    for rep in range(reps):
        # Each variant takes each place in the round in turn, forwards and backwards: what
        # runs just before a variant (caches, freed memory) shifts its time by a few percent.
        order = keys[rep % len(keys):] + keys[:rep % len(keys)]
        for key in order[::-1] if (rep // len(keys)) % 2 else order:
            start = time.perf_counter()
            step(variants[key])
            times[key].append(time.perf_counter() - start)
    ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    row = {"model": name, "mode": "train" if train else "eval", "batch": batch,
           "layout": "channels_last" if channels_last else "NCHW",
           "part": "features" if features else "model", "median_ms": ms,
           "speedup_blocks": ms["eager"] / ms["blocks"],
           "speedup_per_layer": ms["eager"] / ms["per_layer"]}
    if train:
        # After the timing: the profiled step's memory events would slow the steps around it.
        row["peak_mb"] = {k: training_step_peak_bytes(m, x) / 2**20 for k, m in variants.items()}
        row["activation_mb"] = {k: activation_bytes(m, x) / 2**20 for k, m in variants.items()}
    return row


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models",
                        default="mobilenet_v3_large,efficientnet_b0,shufflenet_v2_x1_0")
    parser.add_argument("--mode", choices=("train", "eval"), default="train")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--nchw", action="store_true", help="NCHW instead of channels_last")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--features", action="store_true",
                        help="time the feature extractor (model.features) only")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    allocator = timing.configure_allocator()
    rows = []
    for name in args.models.split(","):
        row = measure(name, args.mode == "train", args.batch, not args.nchw, args.reps,
                      args.features)
        rows.append(row)
        ms = row["median_ms"]
        print(f"{name} {row['part']} {row['mode']} {row['layout']}: eager {ms['eager']:.1f} "
              f"ms, blocks {ms['blocks']:.1f} ms ({row['speedup_blocks']:.2f}x), per-layer "
              f"{ms['per_layer']:.1f} ms ({row['speedup_per_layer']:.2f}x)")
        if "peak_mb" in row:
            peak, act = row["peak_mb"], row["activation_mb"]
            print(f"  training-step peak memory: eager {peak['eager']:.1f} MB, blocks "
                  f"{peak['blocks']:.1f} MB ({peak['blocks'] / peak['eager'] - 1:+.0%}); saved "
                  f"activations {act['eager']:.1f} -> {act['blocks']:.1f} MB")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"environment": report.environment(torch.device("cpu")),
                                        "allocator": allocator, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
