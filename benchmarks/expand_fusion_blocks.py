"""Each inverted residual block of zoo models in CPU inference, its expansion run inside the
depthwise op (``mobilefuse::expand_depthwise``) against the unfused route (oneDNN expansion,
then the depthwise op), the two timed side by side; whether the block's rule
(``mobilefuse._expand_fusion.expansion_fuses``) takes it.

    python benchmarks/expand_fusion_blocks.py --models efficientnet_b0 --batch 8

Prints one line per block and writes JSON (``--out``). Float32, channels_last, eval, no
gradient; the blocks' inputs come from the model's own forward on a random image batch.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
from torch import nn

import mobilefuse
from mobilefuse import _block_plan
from mobilefuse._expand_fusion import expansion_fuses
from mobilefuse.bench import report, timing
from mobilefuse.models import create_model


def _planned(block: nn.Module, x: torch.Tensor, fuse: bool) -> nn.Module:
    """An accelerated copy of ``block`` whose inference plan, built now for ``x``, fuses the
    expansion or not."""
    saved = _block_plan.expansion_fuses
    _block_plan.expansion_fuses = lambda x_shape: fuse
    try:
        fast = mobilefuse.accelerate(copy.deepcopy(block))
        fast(x)
    finally:
        _block_plan.expansion_fuses = saved
    return fast


def _blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's feature layers in forward order (stages opened into their blocks)."""
    layers = []
    for name, stage in model.features.named_children():
        if type(stage) is nn.Sequential:
            layers += [(f"features.{name}.{i}", b) for i, b in enumerate(stage)]
        else:
            layers.append((f"features.{name}", stage))
    return layers


def measure(name: str, batch: int, reps: int, size: int = 224) -> list[dict]:
    """One row per block that has an expansion and a plan: both routes' median ms."""
    torch.manual_seed(0)
    model = create_model(name).eval().to(memory_format=torch.channels_last)
    h = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    rows = []
    with torch.no_grad():
        for path, block in _blocks(model):
            variants = [_planned(block, h, fuse) for fuse in (False, True)]
            plan = variants[1].__dict__.get("_plan")
            if plan is not None and plan.depthwise is torch.ops.mobilefuse.expand_depthwise:
                mid = plan.depthwise_args[0].shape[0]
                fns = [lambda v=v, x=h: v(x) for v in variants]
                timings = timing.time_cpu_side_by_side(fns, reps)
                for t in timings:
                    if isinstance(t, Exception):
                        raise t
                unfused, fused = (t.median_ms for t in timings)
                rows.append({"model": name, "block": path, "input": list(h.shape), "mid": mid,
                             "rule_fuses": expansion_fuses(tuple(h.shape)),
                             "unfused_ms": unfused, "fused_ms": fused,
                             "speedup": unfused / fused})
                print(f"{name} {path} {tuple(h.shape)} -> {mid}: unfused {unfused:.3f} ms, "
                      f"fused {fused:.3f} ms ({unfused / fused:.2f}x)"
                      f"{'  [rule fuses]' if rows[-1]['rule_fuses'] else ''}", flush=True)
            h = block(h)
    return rows


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="efficientnet_b0,mobilenet_v3_large,mobilenet_v2")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    allocator = timing.configure_allocator()
    rows = [row for name in args.models.split(",")
            for row in measure(name, args.batch, args.reps, args.size)]
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"environment": report.environment(torch.device("cpu")),
                                        "allocator": allocator, "batch": args.batch,
                                        "size": args.size, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
