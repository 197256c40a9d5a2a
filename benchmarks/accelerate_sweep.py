"""accelerate() on torchvision's and timm's classifiers: for each, what was swapped, the eval
output against the model's float64 copy, and eager vs accelerated latency timed side by side
(CPU, no gradient).

    python benchmarks/accelerate_sweep.py --layout channels_last --batch 8
    python benchmarks/accelerate_sweep.py --models timm:mixnet_s,torchvision:resnet50 --batch 1

Weights are random and each BatchNorm's statistics and affine parameters are drawn at random, so
every folded BatchNorm changes the numbers. The output error is shown beside eager float32's
own (a deep random network can amplify rounding far past the float32 tolerance: there the
accelerated model passes when its error stays within twice eager's). Needs torchvision and
timm (``scripts/install-vision-cpu.sh`` on CPU). Writes JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import warnings
from collections import Counter
from pathlib import Path

import torch
from torch import nn

import mobilefuse
from mobilefuse.bench import report, timing
from mobilefuse.bench.verify import FORWARD_TOL, relative_error

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from vision_models import define_missing_torchvision_ops  # noqa: E402

MODELS = ("torchvision:mobilenet_v2", "torchvision:mobilenet_v3_large",
          "torchvision:efficientnet_b0", "torchvision:shufflenet_v2_x1_0",
          "torchvision:mnasnet1_0", "torchvision:regnet_y_400mf", "torchvision:resnet50",
          "torchvision:convnext_tiny", "timm:mobilenetv3_large_100", "timm:efficientnet_b0",
          "timm:tf_efficientnet_b0", "timm:mixnet_s", "timm:ghostnet_100",
          "timm:efficientnet_es", "timm:mobilenetv4_conv_small", "timm:lcnet_050",
          "timm:fbnetc_100", "timm:hardcorenas_a", "timm:rexnet_100", "timm:repvit_m1",
          "timm:mobileone_s0", "timm:efficientvit_b0")
LAYOUTS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
CHECK_BATCH = 2


def build(spec: str) -> nn.Module:
    """``torchvision:<name>`` or ``timm:<name>`` with random weights, in eval mode."""
    source, _, name = spec.partition(":")
    define_missing_torchvision_ops()
    torch.manual_seed(0)
    if source == "torchvision":
        import torchvision

        model = getattr(torchvision.models, name)()
    elif source == "timm":
        import timm

        model = timm.create_model(name)
    else:
        raise ValueError(f"--models: expected torchvision:<name> or timm:<name>, got {spec!r}")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model.eval()


def logits(out: object) -> torch.Tensor:
    """The classifier output (some models return a tuple in eval mode)."""
    return out[0] if isinstance(out, (tuple, list)) else out


def sweep_one(spec: str, batch: int, size: int, layout: str, reps: int) -> dict:
    """Swaps, output errors and side-by-side latencies of one model."""
    fmt = LAYOUTS[layout]
    eager = build(spec).to(memory_format=fmt)
    fast = mobilefuse.accelerate(eager)
    swapped = Counter(type(m).__name__ for m in fast.modules()
                      if type(m).__module__.startswith("mobilefuse"))
    check = torch.randn(CHECK_BATCH, 3, size, size).contiguous(memory_format=fmt)
    with torch.no_grad():
        expected = logits(copy.deepcopy(eager).double()(check.double()))
        eager_error = relative_error(logits(eager(check)), expected)
        fast_error = relative_error(logits(fast(check)), expected)
        x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
        t_eager, t_fast = timing.time_cpu_side_by_side([lambda: eager(x), lambda: fast(x)],
                                                       reps=reps)
    bound = max(FORWARD_TOL[torch.float32], 2 * eager_error)
    return {"model": spec, "batch": batch, "size": size, "layout": layout,
            "swapped": dict(swapped), "eager_error": eager_error, "error": fast_error,
            "status": "PASS" if fast_error <= bound else "FAIL",
            "eager_ms": t_eager.median_ms, "accelerated_ms": t_fast.median_ms,
            "speedup": t_eager.median_ms / t_fast.median_ms}


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS),
                        help="comma-separated torchvision:<name> / timm:<name>")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--layout", choices=tuple(LAYOUTS), default="channels_last")
    parser.add_argument("--reps", type=int, default=15, help="timed samples per variant")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # models' own deprecation notices
    allocator = timing.configure_allocator()
    rows = []
    for spec in args.models.split(","):
        row = sweep_one(spec, args.batch, args.size, args.layout, args.reps)
        rows.append(row)
        print(f"{row['status']} {spec:34s} error {row['error']:.1e} "
              f"(eager {row['eager_error']:.1e})  eager {row['eager_ms']:7.2f} ms  "
              f"accelerated {row['accelerated_ms']:7.2f} ms"
              f"  {row['speedup']:.2f}x  swapped {sum(row['swapped'].values())}", flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"environment": report.environment(torch.device("cpu")),
                                        "allocator": allocator, "results": rows}, indent=2))
    if any(row["status"] != "PASS" for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
