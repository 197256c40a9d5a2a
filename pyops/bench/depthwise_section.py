"""The runner's depthwise section: every depthwise layer of MobileNetV2, MobileNetV3-Large and
EfficientNet-B0 (one per distinct cost), forward and forward + backward, each layout, timed
as mobilefuse vs eager vs ``torch.compile``, summarized by geometric means of the speedups.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch

from mobilefuse.bench import cases, report, timing
from mobilefuse.bench import depthwise_cases as dw
from mobilefuse.bench.summary import add_ratios, ratio_text
from mobilefuse.models.specs import DepthwiseLayer


def _entry(layer: DepthwiseLayer, impl: str, dtype: torch.dtype, layout: str, pass_: str,
           batch: int, models: list[str]) -> dict[str, Any]:
    return {
        "op": dw.OP, "impl": impl, "pass": pass_, "model": layer.model, "layer": layer.name,
        "shared_by": dw.shared_by(layer, models), "label": dw.label(layer),
        "channels": layer.channels, "input_size": layer.input_size, "kernel": layer.kernel,
        "stride": layer.stride, "padding": layer.padding, "activation": layer.activation,
        "batch": batch, "shape": list(dw.input_shape(layer, batch)),
        "dtype": str(dtype).removeprefix("torch."), "memory_format": layout,
        "bytes": dw.moved_bytes(layer, batch, dtype, pass_),
    }


def _copy_call(nbytes: int, dtype: torch.dtype, device: torch.device) -> Callable[[], object]:
    """``dst.copy_(src)`` reading and writing ``nbytes`` in all: the bandwidth a layer that
    moves as many bytes could reach, in the same cache level."""
    numel = max(1, nbytes // (2 * torch.empty((), dtype=dtype).element_size()))
    src = torch.randn(numel, device=device).to(dtype)
    dst = torch.empty_like(src)
    if device.type != "cuda":
        return lambda: dst.copy_(src)

    def synced() -> object:
        out = dst.copy_(src)
        torch.cuda.synchronize(device)
        return out

    return synced


def time_layer(layer: DepthwiseLayer, dtype: torch.dtype, layout: str, batch: int,
               args: argparse.Namespace, device: torch.device,
               reps: int) -> list[dict[str, Any]]:
    """Both passes of every implementation on one layer's inputs in one dtype, layout and
    batch, each pass beside a copy of as many bytes (its entry first)."""
    inputs = dw.make_inputs(layer, batch, dtype, layout, device)
    entries = []
    for pass_ in dw.PASSES:
        calls = []
        for impl in dw.impl_names(device, not args.no_compile):
            entry = _entry(layer, impl, dtype, layout, pass_, batch, args.dw_models)
            if impl == cases.MOBILEFUSE:
                entry["backend"] = cases.auto_backend(dw.OP, inputs.x)
            calls.append((entry, dw.build_call(impl, layer, inputs, pass_)))
        copy = _entry(layer, cases.COPY, dtype, layout, pass_, batch, args.dw_models)
        calls.append((copy, _copy_call(copy["bytes"], dtype, device)))
        timing.measure_side_by_side(calls, device, reps, args.warmup)
        timed = [entry for entry, _ in calls[:-1]]
        add_ratios(timed)
        for entry in timed:
            both = entry.get("gbps") and copy.get("gbps")
            entry["frac_of_copy_bw"] = entry["gbps"] / copy["gbps"] if both else None
        entries += [copy, *timed]
    return entries


def run_depthwise(args: argparse.Namespace, device: torch.device,
                  reps: int) -> list[dict[str, Any]]:
    """Every dtype x batch x selected layer x layout x pass x implementation."""
    layers = dw.select_layers(args.dw_models, args.quick, args.dw_limit)
    entries: list[dict[str, Any]] = []
    for dtype_name in cases.timed_dtypes(args.dtype, device):
        for batch in args.dw_batch:
            for i, layer in enumerate(layers, 1):
                print(f"timing depthwise {dw.label(layer)} batch {batch} {dtype_name} "
                      f"({i}/{len(layers)}) ...", flush=True)
                for layout in cases.LAYOUTS:
                    entries += time_layer(layer, cases.DTYPES[dtype_name], layout, batch,
                                          args, device, reps)
    return entries


def print_depthwise(entries: list[dict[str, Any]], summary: list[dict[str, Any]]) -> None:
    """One row per layer, batch, layout and pass; then the geometric means."""
    impls = list(dict.fromkeys(e["impl"] for e in entries))
    cases_seen: dict[tuple[str, int, str, str, str], dict[str, dict[str, Any]]] = {}
    for e in entries:
        key = (e["dtype"], e["batch"], e["label"], e["memory_format"], e["pass"])
        cases_seen.setdefault(key, {})[e["impl"]] = e
    rows = []
    for (dtype, batch, label, layout, pass_), by_impl in cases_seen.items():
        fused = by_impl.get(cases.MOBILEFUSE, {})
        fallback = " (FALLBACK)" if fused.get("backend") == "reference" else ""
        errors = "; ".join(f"{i}: {e['error']}" for i, e in by_impl.items() if "error" in e)
        rows.append([label + fallback, str(batch), layout, pass_, dtype,
                     *(report.fmt(by_impl.get(i, {}).get("median_ms"), ".4g") for i in impls),
                     report.fmt(fused.get("gbps"), ".1f"),
                     _percent(fused.get("frac_of_copy_bw")),
                     ratio_text(fused.get("ratio_vs_eager")),
                     ratio_text(fused.get("ratio_vs_compile")),
                     errors])
    report.print_table(
        "Depthwise conv layers (ms per call; GB/s of mobilefuse and its share of a copy of "
        "as many bytes; vs X = X ms / mobilefuse ms)",
        ["layer", "batch", "layout", "pass", "dtype", *(f"{i} ms" for i in impls), "GB/s",
         "of copy", "vs eager", "vs compile", "error"], rows)
    report.print_table(
        "Depthwise geometric-mean speedups (> 1: faster than the rival) and share of copy "
        "bandwidth",
        ["impl", "dtype", "batch", "layout", "pass", "layers", "vs eager", "vs compile",
         "of copy"],
        [[g["impl"], g["dtype"], str(g.get("batch")), g["memory_format"], g["pass"],
          str(g["layers"]), ratio_text(g["geomean_vs_eager"]),
          ratio_text(g["geomean_vs_compile"]), _percent(g.get("geomean_frac_of_copy_bw"))]
         for g in summary])


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"
