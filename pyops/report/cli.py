"""``python -m mobilefuse.report``: the efficiency table, its files and plots."""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Sequence
from pathlib import Path

import torch

from mobilefuse.bench import timing
from mobilefuse.bench.cases import DTYPES
from mobilefuse.bench.report import device_slug, environment, print_table
from mobilefuse.report.output import HEADERS, table_rows, title, write_outputs
from mobilefuse.report.run import ModelEntry, measure_models

# The efficient nets this package serves, and two baselines; `--models all` takes the whole zoo.
DEFAULT_MODELS = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
                  "efficientnet_b0", "shufflenet_v1", "shufflenet_v2_x1_0", "resnet18",
                  "resnet50")


def zoo_entry(name: str, resolution: int | None = None) -> ModelEntry:
    """A :mod:`mobilefuse.models` model, at its own input resolution unless one is given."""
    from mobilefuse import models

    if name not in models.list_models():
        raise SystemExit(f"mobilefuse.report: unknown model {name!r}; choose from "
                         f"{', '.join(models.list_models())}")
    size = resolution or models.model_info(name).input_size[1]
    return ModelEntry(name, lambda: models.create_model(name), size)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m mobilefuse.report",
        description="Parameters, multiply-adds, training activation memory, eager vs "
                    "accelerated latency and published top-1 of the model zoo, as a table, "
                    "CSV/Markdown/JSON files and plots.")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help="comma-separated model names, or 'all' (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=None,
                        help="input size for every model (default: each model's own)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--reps", type=int, default=10, help="timed samples per latency")
    parser.add_argument("--channels-last", action="store_true",
                        help="run models and inputs in channels_last (oneDNN's fast CPU path)")
    parser.add_argument("--no-latency", action="store_true", help="skip the timings")
    parser.add_argument("--system-allocator", action="store_true",
                        help="leave glibc malloc at its defaults on CPU (large outputs then "
                             "page-fault afresh on every call, in eager and accelerated alike)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: benchmarks/results/"
                             "efficiency-<device>-<date>)")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.reps < 1 or (args.resolution is not None and args.resolution < 1):
        parser.error("--batch, --reps and --resolution must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the report; returns the exit status."""
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.models == "all":
        from mobilefuse import models

        names = models.list_models()
    else:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
    entries = [zoo_entry(name, args.resolution) for name in names]
    # As the benchmark runner does: freed blocks are reused, so timings are not page faults.
    allocator = timing.configure_allocator_for(device, args.system_allocator)
    results = measure_models(entries, device, args.batch, DTYPES[args.dtype], args.reps,
                             latency=not args.no_latency, progress=not args.no_progress,
                             channels_last=args.channels_last)
    env = {**environment(device), "allocator": allocator}
    layout = f"{args.dtype}, {'channels_last' if args.channels_last else 'NCHW'}"
    print_table(title(env, args.batch, layout), HEADERS, table_rows(results))
    out = args.out or Path("benchmarks/results") / (
        f"efficiency-{device_slug(device)}-{'cl-' if args.channels_last else ''}"
        f"{datetime.date.today().isoformat()}")
    files = write_outputs(results, out, env, args.batch, layout)
    print("wrote " + ", ".join(str(p) for p in files.values()))
    return 0
