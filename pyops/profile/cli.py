"""``python -m mobilefuse.profile``: a zoo model per layer, its trace and its roofline."""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mobilefuse.bench import timing
from mobilefuse.bench.cases import DTYPES
from mobilefuse.bench.report import device_slug, environment, write_json
from mobilefuse.profile import roofline
from mobilefuse.profile.compare import ProfileComparison
from mobilefuse.profile.result import ProfileResult
from mobilefuse.profile.run import profile, run_under_nvtx


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m mobilefuse.profile",
        description="Profile a mobilefuse.models model per layer (time, share, bytes, GB/s), "
                    "write its Chrome trace, and optionally compare it with its accelerated "
                    "copy and place its layers on the device's roofline.")
    parser.add_argument("--model", required=True, help="a mobilefuse.models name")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=None,
                        help="input size (default: the model's own)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--train", action="store_true",
                        help="profile training steps (forward + backward)")
    parser.add_argument("--steps", type=int, default=5, help="profiled steps")
    parser.add_argument("--warmup", type=int, default=3, help="unprofiled steps first")
    parser.add_argument("--compare", action="store_true",
                        help="profile mobilefuse.accelerate(model) beside it")
    parser.add_argument("--backend", default="auto", help="the accelerated copy's backend")
    parser.add_argument("--roofline", action="store_true",
                        help="measure the device's copy bandwidth and mm rate; write the "
                             "roofline table and roofline.png")
    parser.add_argument("--nvtx", action="store_true",
                        help="CUDA only: run the steps with NVTX ranges for nsys / ncu instead "
                             "of torch.profiler (no table); with --compare, eager then "
                             "accelerated")
    parser.add_argument("--top", type=int, default=25, help="rows printed (0: all)")
    parser.add_argument("--system-allocator", action="store_true",
                        help="leave glibc malloc at its defaults on CPU")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: benchmarks/results/profile/"
                             "<model>-<device>-<date>)")
    args = parser.parse_args(argv)
    for name in ("batch", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.warmup < 0 or args.top < 0 or (args.resolution is not None and args.resolution < 1):
        parser.error("--warmup and --top must be >= 0, --resolution >= 1")
    return args


def _build(args: argparse.Namespace, device: torch.device
           ) -> tuple[torch.nn.Module, torch.Tensor]:
    from mobilefuse import models

    if args.model not in models.list_models():
        raise SystemExit(f"mobilefuse.profile: unknown model {args.model!r}; choose from "
                         f"{', '.join(models.list_models())}")
    size = args.resolution or models.model_info(args.model).input_size[1]
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    dtype = DTYPES[args.dtype]
    model = models.create_model(args.model).to(device=device, dtype=dtype, memory_format=fmt)
    x = torch.randn(args.batch, 3, size, size, device=device, dtype=dtype)
    return model, x.contiguous(memory_format=fmt)


def _roofline(result: ProfileResult | ProfileComparison, args: argparse.Namespace,
              device: torch.device, out: Path) -> dict[str, Any]:
    ceilings = roofline.measure_ceilings(device, DTYPES[args.dtype])
    profiles = ([result.eager, result.accelerated] if isinstance(result, ProfileComparison)
                else [result])
    series = {("accelerated" if "accelerated" in p.label else "eager"):
              roofline.roofline_points(p, ceilings) for p in profiles}
    for name, points in series.items():
        print(roofline.roofline_table(points, ceilings, f"{args.model} ({name})",
                                      args.top or None), flush=True)
    png = roofline.plot_roofline(series, ceilings, out / "roofline.png",
                                 roofline.roofline_title(ceilings, args.model))
    print(f"wrote {png}")
    return {name: roofline.as_dict(ceilings, points) for name, points in series.items()}


def _nvtx(model: torch.nn.Module, x: torch.Tensor, args: argparse.Namespace) -> int:
    if x.device.type != "cuda":
        raise SystemExit("mobilefuse.profile: --nvtx needs a CUDA device (NVTX ranges are for "
                         "Nsight); on CPU run without it for the torch.profiler table")
    runs = [("eager", model)]
    if args.compare:
        from mobilefuse.accelerate import accelerate

        runs.append(("accelerated", accelerate(model, backend=args.backend)))
    for name, subject in runs:
        run_under_nvtx(subject, x, train=args.train, steps=args.steps, warmup=args.warmup,
                       name=f"{args.model} {name}")
        print(f"ran {args.steps} step(s) of {args.model} ({name}) under NVTX ranges")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the profile; returns the exit status."""
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    allocator = timing.configure_allocator_for(device, args.system_allocator)
    model, x = _build(args, device)
    if args.nvtx:
        return _nvtx(model, x, args)
    mode = "train" if args.train else "eval"
    out = args.out or Path("benchmarks/results/profile") / (
        f"{args.model}-{mode}-{device_slug(device)}-{datetime.date.today().isoformat()}")
    out.mkdir(parents=True, exist_ok=True)
    result = profile(model, x, train=args.train, steps=args.steps, warmup=args.warmup,
                     compare=args.compare, backend=args.backend, trace_path=out / "trace.json",
                     top=args.top or None, label=args.model)
    record: dict[str, Any] = {
        "environment": {**environment(device), "allocator": allocator},
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "profile": result.as_dict()}
    if args.roofline:
        record["roofline"] = _roofline(result, args, device, out)
    (out / "profile.md").write_text(result.table() + "\n")
    write_json(out / "profile.json", record)
    print(f"wrote {out / 'profile.json'}, {out / 'profile.md'}")
    return 0
