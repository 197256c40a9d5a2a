"""The runner's block section: every inverted-residual / MBConv block of MobileNetV2,
MobileNetV3-Large and EfficientNet-B0, eval and training, as ``accelerate()`` vs eager vs
``torch.compile``, with the bytes a forward must move and (on GPU) the kernels it launches."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from mobilefuse.bench import block_cases as blocks
from mobilefuse.bench import cases, report, timing
from mobilefuse.bench.summary import add_ratios, ratio_text


def time_block(case: blocks.BlockCase, dtype: torch.dtype, layout: str,
               args: argparse.Namespace, device: torch.device,
               reps: int) -> list[dict[str, Any]]:
    """Both passes of every implementation of one block in one dtype and layout."""
    entries = []
    for pass_ in blocks.PASSES:
        timed, calls = [], []
        for impl in blocks.impl_names(device, not args.no_compile):
            entry = {
                "impl": impl, "pass": pass_, "model": case.model, "block": case.path,
                "kind": case.kind, "label": case.label, "in_shape": list(case.in_shape),
                "out_shape": list(case.out_shape), "params": case.params,
                "batch": args.block_batch, "dtype": str(dtype).removeprefix("torch."),
                "memory_format": layout,
                "bytes": blocks.moved_bytes(case, args.block_batch, dtype),
            }
            try:
                call = blocks.build_call(impl, case, args.block_batch, dtype, layout, device,
                                         pass_)
            except Exception as exc:  # noqa: BLE001  (one broken case must not stop the run)
                entry["error"] = timing.error_text(exc)
                timed.append(entry)
                continue
            timed.append(entry)
            calls.append((entry, call))
        timing.measure_side_by_side(calls, device, reps, args.warmup)
        for entry, call in calls:
            entry["kernel_launches"] = blocks.count_kernel_launches(call, device)
        add_ratios(timed)
        entries += timed
    return entries


def run_blocks(args: argparse.Namespace, device: torch.device,
               reps: int) -> list[dict[str, Any]]:
    """Every dtype x selected block x layout x pass x implementation."""
    selected = blocks.select_blocks(args.block_models, args.quick, args.block_limit)
    entries: list[dict[str, Any]] = []
    for dtype_name in cases.timed_dtypes(args.dtype, device):
        for i, case in enumerate(selected, 1):
            print(f"timing block {case.label} {dtype_name} ({i}/{len(selected)}) ...",
                  flush=True)
            for layout in args.block_layouts:
                entries += time_block(case, cases.DTYPES[dtype_name], layout, args, device,
                                      reps)
    return entries


def print_blocks(entries: list[dict[str, Any]], summary: list[dict[str, Any]]) -> None:
    """One row per block, layout and pass; then the geometric means."""
    impls = list(dict.fromkeys(e["impl"] for e in entries))
    seen: dict[tuple[str, str, str, str], dict[str, dict[str, Any]]] = {}
    for e in entries:
        seen.setdefault((e["dtype"], e["label"], e["memory_format"], e["pass"]), {})[
            e["impl"]] = e
    rows = []
    for (dtype, label, layout, pass_), by_impl in seen.items():
        fused = by_impl.get(cases.MOBILEFUSE, {})
        errors = "; ".join(f"{i}: {e['error']}" for i, e in by_impl.items() if "error" in e)
        rows.append([label, layout, pass_, dtype,
                     *(report.fmt(by_impl.get(i, {}).get("median_ms"), ".4g") for i in impls),
                     report.fmt(fused.get("gbps"), ".1f"),
                     ratio_text(fused.get("ratio_vs_eager")),
                     ratio_text(fused.get("ratio_vs_compile")),
                     str(fused.get("kernel_launches") or "-"), errors])
    report.print_table(
        "MBConv blocks (ms per call; GB/s of the forward's minimum bytes; vs X = X ms / "
        "mobilefuse ms)",
        ["block", "layout", "pass", "dtype", *(f"{i} ms" for i in impls), "GB/s", "vs eager",
         "vs compile", "kernels", "error"], rows)
    report.print_table(
        "MBConv block geometric-mean speedups (> 1: faster than the rival)",
        ["impl", "dtype", "layout", "pass", "blocks", "vs eager", "vs compile"],
        [[g["impl"], g["dtype"], g["memory_format"], g["pass"], str(g["layers"]),
          ratio_text(g["geomean_vs_eager"]), ratio_text(g["geomean_vs_compile"])]
         for g in summary])
