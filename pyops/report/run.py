"""One row of the efficiency report per model: measure it, eager and accelerated."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

import mobilefuse
from mobilefuse.report.measure import (
    activation_bytes,
    count_flops,
    count_parameters,
    inference_latencies,
)
from mobilefuse.report.published import published_top1


@dataclass(frozen=True)
class ModelEntry:
    """A model to report: its name (the key of the accuracy data), a builder, and the input
    resolution it is measured at."""

    name: str
    build: Callable[[], nn.Module]
    resolution: int


@dataclass
class ModelResult:
    """One report row. ``macs``/``flops`` are per image, activation memory is for a training
    step of the whole batch (bytes), times are ms per batch; None where not measured."""

    model: str
    resolution: int
    batch: int
    params: int
    macs: int
    flops: int
    activation_bytes_eager: int
    activation_bytes_accelerated: int
    swapped_modules: int
    eager_ms: float | None = None
    accelerated_ms: float | None = None
    top1: float | None = None
    top1_source: str | None = None

    @property
    def speedup(self) -> float | None:
        """Eager latency / accelerated latency."""
        if self.eager_ms is None or self.accelerated_ms is None:
            return None
        return self.eager_ms / self.accelerated_ms

    def as_dict(self) -> dict[str, object]:
        """The fields plus the speedup."""
        return {**dataclasses.asdict(self), "speedup": self.speedup}


def measure_model(entry: ModelEntry, device: torch.device, batch: int, dtype: torch.dtype,
                  reps: int, latency: bool = True,
                  step: Callable[[str], None] = lambda _: None,
                  channels_last: bool = False) -> ModelResult:
    """Measure one model; ``step`` is told each stage (for a progress display).
    ``channels_last`` runs model and input in that memory format (oneDNN's fast path on CPU)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    shape = (batch, 3, entry.resolution, entry.resolution)
    step("flops")
    with torch.device("meta"):
        meta_model = entry.build()
    flops = count_flops(meta_model, (1, *shape[1:]))
    step("build")
    torch.manual_seed(0)
    model = entry.build().to(device=device, dtype=dtype, memory_format=fmt).eval()
    fast = mobilefuse.accelerate(model)
    swapped = mobilefuse.accelerate_report(fast, show=False).count("swapped")
    x = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=fmt)
    step("memory")
    eager_act, fast_act = activation_bytes(model, x), activation_bytes(fast, x)
    published = published_top1().get(entry.name)
    result = ModelResult(
        model=entry.name, resolution=entry.resolution, batch=batch,
        params=count_parameters(model), macs=flops // 2, flops=flops,
        activation_bytes_eager=eager_act, activation_bytes_accelerated=fast_act,
        swapped_modules=swapped,
        top1=None if published is None else published.top1,
        top1_source=None if published is None else published.source)
    if latency:
        step("latency")
        eager, accelerated = inference_latencies((model, fast), x, reps)
        result.eager_ms, result.accelerated_ms = eager.median_ms, accelerated.median_ms
    return result


def measure_models(entries: Iterable[ModelEntry], device: torch.device, batch: int,
                   dtype: torch.dtype, reps: int, latency: bool = True,
                   progress: bool = True, channels_last: bool = False) -> list[ModelResult]:
    """Measure every model, with a tqdm progress bar (one tick per model) when ``progress``."""
    from tqdm import tqdm

    entries = list(entries)
    results = []
    with tqdm(entries, disable=not progress, unit="model") as bar:
        for entry in bar:
            def step(stage: str, name: str = entry.name) -> None:
                bar.set_postfix_str(f"{name}: {stage}")

            results.append(measure_model(entry, device, batch, dtype, reps, latency, step,
                                         channels_last))
    return results
