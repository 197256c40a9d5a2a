"""The command line: verify, then time, then print and write the results.

    python -m mobilefuse.bench [--quick] [--shape N C H W] [--reps R] [--warmup S] [--out DIR]
                               [--dtype D ...] [--groups G] [--no-compile] [--verify-only]
                               [--system-allocator] [--skip-depthwise] [--dw-batch N [N ...]]
                               [--dw-models M,M] [--dw-limit K] [--blocks] [--block-batch N]
                               [--block-models M,M] [--block-limit K] [--block-layouts L,L]

The elementwise ops and channel_shuffle are timed on ``--shape``; depthwise_conv2d on the
depthwise layers of real networks (see :mod:`mobilefuse.bench.depthwise_section`); with
``--blocks``, whole MBConv blocks (:mod:`mobilefuse.bench.block_section`).
Exit status 1 when a verification fails or an implementation errors, else 0.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mobilefuse.bench import block_cases as blocks
from mobilefuse.bench import cases, report, timing
from mobilefuse.bench import depthwise_cases as dw
from mobilefuse.bench.block_section import print_blocks, run_blocks
from mobilefuse.bench.depthwise_section import print_depthwise, run_depthwise
from mobilefuse.bench.summary import geomeans
from mobilefuse.bench.verify import Check, verify_all

DTYPES = cases.DTYPES
# Timed calls per measurement.
DEFAULT_REPS: dict[tuple[str, bool], int] = {
    ("cpu", False): 100, ("cpu", True): 20, ("cuda", False): 200, ("cuda", True): 50}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The runner's options (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m mobilefuse.bench",
                                     description="Verify and benchmark mobilefuse ops.")
    parser.add_argument("--quick", action="store_true",
                        help="few repetitions; a quarter of the depthwise layers")
    parser.add_argument("--shape", nargs=4, type=int, metavar=("N", "C", "H", "W"),
                        default=list(cases.DEFAULT_SHAPE))
    parser.add_argument("--reps", type=int, default=None,
                        help="timed calls per measurement (default depends on device, --quick)")
    parser.add_argument("--dtype", action="append", choices=sorted(DTYPES), default=None,
                        help="dtype to time, repeatable (default: float32; on CUDA also bfloat16)")
    parser.add_argument("--groups", type=int, default=cases.SHUFFLE_GROUPS,
                        help="channel_shuffle groups")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"),
                        help="folder for the JSON result")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--verify-only", action="store_true", help="verify, time nothing")
    parser.add_argument("--system-allocator", action="store_true",
                        help="leave glibc malloc at its defaults on CPU")
    parser.add_argument("--warmup", type=float, default=timing.WARMUP_S, metavar="S",
                        help=f"warm-up seconds before each measurement (at least "
                             f"{timing.WARMUP_CALLS} calls; default {timing.WARMUP_S})")
    depthwise = parser.add_argument_group("depthwise_conv2d on the layers of real networks")
    depthwise.add_argument("--skip-depthwise", action="store_true",
                           help="time no depthwise layer")
    depthwise.add_argument("--dw-batch", type=int, nargs="+", default=[dw.DEFAULT_BATCH],
                           metavar="N", help=f"batch sizes, each timed in turn "
                                             f"(default {dw.DEFAULT_BATCH})")
    depthwise.add_argument("--dw-models", type=_model_list, default=list(dw.MODELS),
                           metavar="M,M", help=f"networks (default {','.join(dw.MODELS)})")
    depthwise.add_argument("--dw-limit", type=int, default=None, metavar="K",
                           help="time only the first K distinct layers (after --quick's subset)")
    block = parser.add_argument_group("MBConv / inverted-residual blocks of real networks")
    block.add_argument("--blocks", action="store_true",
                       help="time every block: accelerate() vs eager vs torch.compile")
    block.add_argument("--block-batch", type=int, default=blocks.DEFAULT_BATCH, metavar="N",
                       help=f"batch size (default {blocks.DEFAULT_BATCH})")
    block.add_argument("--block-models", type=_block_model_list, default=list(blocks.MODELS),
                       metavar="M,M", help=f"networks (default {','.join(blocks.MODELS)})")
    block.add_argument("--block-limit", type=int, default=None, metavar="K",
                       help="time only the first K blocks (after --quick's subset)")
    block.add_argument("--block-layouts", type=_layout_list, default=list(cases.LAYOUTS),
                       metavar="L,L", help=f"layouts (default {','.join(cases.LAYOUTS)})")
    args = parser.parse_args(argv)
    if args.block_batch <= 0 or (args.block_limit is not None and args.block_limit <= 0):
        parser.error("--block-batch and --block-limit take positive ints")
    if min(args.dw_batch) <= 0 or (args.dw_limit is not None and args.dw_limit <= 0):
        parser.error("--dw-batch and --dw-limit take positive ints")
    if args.warmup < 0:
        parser.error("--warmup takes seconds >= 0")
    if min(args.shape) <= 0:
        parser.error("--shape takes four positive ints")
    if args.groups <= 0 or args.shape[1] % args.groups:
        parser.error(f"--groups {args.groups} must divide C={args.shape[1]}")
    return args


def _names(text: str, allowed: Sequence[str], what: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in allowed]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {', '.join(unknown) or text!r}; choose from {', '.join(allowed)}")
    return names


def _model_list(text: str) -> list[str]:
    return _names(text, dw.MODELS, "model(s)")


def _block_model_list(text: str) -> list[str]:
    return _names(text, blocks.MODELS, "model(s)")


def _layout_list(text: str) -> list[str]:
    return _names(text, list(cases.LAYOUTS), "layout(s)")


def print_verification(checks: list[Check]) -> None:
    """The PASS/FAIL table of the verification."""
    rows = [[c.backend, c.device, f"{c.op} {c.case}".strip(), c.dtype, c.memory_format,
             report.fmt(c.forward_error, ".1e"), report.fmt(c.backward_error, ".1e"),
             c.status, c.detail] for c in checks]
    if not rows:
        print("verification: no fused backend can run on this machine", flush=True)
        return
    report.print_table("Verification against the float64 reference (error / max|ref|)",
                       ["backend", "device", "op", "dtype", "layout", "fwd err", "bwd err",
                        "status", "detail"], rows)


def _entry(op: str, impl: str, x: torch.Tensor, layout: str, groups: int) -> dict[str, Any]:
    return {"op": op, "impl": impl, "shape": list(x.shape),
            "dtype": str(x.dtype).removeprefix("torch."), "memory_format": layout,
            "groups": groups if op == "channel_shuffle" else None,
            "bytes": cases.moved_bytes(x)}


def time_case(op: str, x: torch.Tensor, layout: str, args: argparse.Namespace,
              reps: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Copy bandwidth, then every implementation of ``op``, on the one input ``x``.

    The copy baseline is taken beside the implementations, on a buffer of ``x``'s size and
    layout, so drift in a shared machine's clock or memory bandwidth hits both alike.
    """
    copy = _entry(op, cases.COPY, x, layout, args.groups)
    dst = torch.empty_like(x)
    timing.measure(copy, lambda: dst.copy_(x), x.device, reps, args.warmup)
    copy_gbps = copy.get("gbps")
    entries = []
    for name, fn in cases.build_impls(op, x.device, not args.no_compile, args.groups).items():
        entry = _entry(op, name, x, layout, args.groups)
        if name == cases.MOBILEFUSE:
            entry["backend"] = cases.auto_backend(op, x)
        timing.measure(entry, lambda fn=fn: fn(x), x.device, reps, args.warmup)
        if "gbps" in entry:
            entry["frac_of_copy_bw"] = entry["gbps"] / copy_gbps if copy_gbps else None
        entries.append(entry)
    eager = next((e for e in entries if e["impl"] == cases.EAGER and "median_ms" in e), None)
    for entry in entries:
        ok = eager is not None and "median_ms" in entry
        entry["ratio_vs_eager"] = eager["median_ms"] / entry["median_ms"] if ok else None
    return copy, entries


def _percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.0f}%"


def _row(e: dict[str, Any]) -> list[str]:
    impl = e["impl"] + (" (FALLBACK)" if e.get("backend") == "reference" else "")
    spread = f"{report.fmt(e.get('q20_ms'), '.4g')}-{report.fmt(e.get('q80_ms'), '.4g')}"
    ratio = e.get("ratio_vs_eager")
    return [e["op"], impl, e["memory_format"], e["dtype"], report.fmt(e.get("median_ms"), ".4g"),
            spread, report.fmt(e.get("gbps"), ".1f"),
            "100%" if e["impl"] == cases.COPY else _percent(e.get("frac_of_copy_bw")),
            "" if ratio is None else f"{ratio:.2f}x", e.get("error", "")]


def print_timings(copies: list[dict[str, Any]], entries: list[dict[str, Any]]) -> None:
    """The timing table, each case's copy baseline first; ratio > 1 is faster than eager."""
    rows = []
    for copy in copies:
        rows.append(_row(copy))
        rows += [_row(e) for e in entries if all(
            e[k] == copy[k] for k in ("op", "dtype", "memory_format"))]
    report.print_table(
        "Forward timings (GB/s counts read + write; copy BW = dst.copy_(src) of the same bytes; "
        "vs eager = eager ms / impl ms)",
        ["op", "impl", "layout", "dtype", "median ms", "q20-q80 ms", "GB/s", "copy BW",
         "vs eager", "error"], rows)


def run_timings(args: argparse.Namespace, device: torch.device,
                reps: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every dtype x op x layout: its copy baseline and its implementations."""
    copies, entries = [], []
    for dtype_name in cases.timed_dtypes(args.dtype, device):
        for op in cases.OPS:
            for layout in cases.LAYOUTS:
                x = cases.make_input(tuple(args.shape), DTYPES[dtype_name], layout, device)
                print(f"timing {op} {layout} {dtype_name} ...", flush=True)
                copy, timed = time_case(op, x, layout, args, reps)
                copies.append(copy)
                entries += timed
                del x
    return copies, entries


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    args = parse_args(argv)
    checks = verify_all()
    print_verification(checks)
    failed = any(c.status != "PASS" for c in checks)
    if args.verify_only:
        return 1 if failed else 0
    device = cases.bench_device()
    allocator = timing.configure_allocator_for(device, args.system_allocator)
    reps = args.reps or DEFAULT_REPS[(device.type, args.quick)]
    copies, entries = run_timings(args, device, reps)
    print_timings(copies, entries)
    depthwise = [] if args.skip_depthwise else run_depthwise(args, device, reps)
    summary = geomeans(depthwise)
    if depthwise:
        print_depthwise(depthwise, summary)
    block_entries = run_blocks(args, device, reps) if args.blocks else []
    block_summary = geomeans(block_entries)
    if block_entries:
        print_blocks(block_entries, block_summary)
    payload = {
        **report.environment(device), "allocator": allocator, "quick": args.quick,
        "shape": list(args.shape), "groups": args.groups, "reps": reps,
        "warmup": {"min_s": args.warmup, "min_calls": timing.WARMUP_CALLS},
        "copy_bandwidth": copies, "verification": [c.to_dict() for c in checks],
        "timings": entries,
        "depthwise_settings": None if args.skip_depthwise else {
            "models": args.dw_models, "batches": args.dw_batch, "resolution": dw.RESOLUTION,
            "limit": args.dw_limit,
            "layers": [dw.label(layer) for layer in dw.select_layers(
                args.dw_models, args.quick, args.dw_limit)]},
        "depthwise": depthwise, "depthwise_geomeans": summary,
        "block_settings": None if not args.blocks else {
            "models": args.block_models, "batch": args.block_batch,
            "resolution": blocks.RESOLUTION, "limit": args.block_limit,
            "layouts": args.block_layouts},
        "blocks": block_entries, "block_geomeans": block_summary,
    }
    path = report.write_json(report.result_path(args.out, device), payload)
    print(f"wrote {path}", flush=True)
    errored = any("error" in e for e in entries + depthwise + block_entries)
    return 1 if failed or errored else 0


if __name__ == "__main__":
    sys.exit(main())
