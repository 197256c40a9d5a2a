"""What the efficiency report measures for one model: size, work, memory and latency."""

from __future__ import annotations

import copy
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mobilefuse.bench.timing import Timing, time_side_by_side


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass as ``torch.utils.flop_counter`` counts them (2 per multiply-add
    of convolutions and matrix products; elementwise work, BatchNorm and pooling are not
    counted, as in the papers' multiply-add figures).

    Runs on the meta device (a model built there, or a copy moved there): no memory, no
    arithmetic.
    """
    on_meta = all(p.is_meta for p in model.parameters())
    meta_model = (model if on_meta else copy.deepcopy(model).to("meta")).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta_model(torch.empty(input_shape, device="meta"))
    return int(counter.get_total_flops())


def activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps from a training-mode forward pass for the backward:
    the activation memory of a training step, parameters excluded, each storage counted once.

    The model is run on a copy (its BatchNorm running statistics are not touched).
    """
    model = copy.deepcopy(model).train()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr and ptr not in weights:
            saved[ptr] = max(saved.get(ptr, 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    del out
    return sum(saved.values())


def training_step_peak_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Peak bytes allocated during one training step (forward, ``.sum().backward()``) above
    what was allocated before it: the saved activations, the parameters' gradients (made
    afresh, as after ``zero_grad(set_to_none=True)``) and every temporary, as the allocator
    sees them. CPU: the profiler's memory events (their running total); CUDA:
    ``torch.cuda.max_memory_allocated``.

    The step runs on a copy of ``model`` in training mode, after one unmeasured step that
    builds whatever a module caches on its first call.
    """
    model = copy.deepcopy(model).train()

    def step() -> None:
        for p in model.parameters():
            p.grad = None
        model(x).sum().backward()

    step()
    for p in model.parameters():
        p.grad = None
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
        base = torch.cuda.memory_allocated(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        step()
        torch.cuda.synchronize(x.device)
        return torch.cuda.max_memory_allocated(x.device) - base
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    # Each allocation and free is a "[memory]" event carrying the total allocated since the
    # profiler started.
    totals = [e["args"]["Total Allocated"] for e in events
              if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0]
    if not totals:
        raise RuntimeError("the profiler recorded no CPU memory event during the step")
    return max(totals)


def inference_latencies(models: Sequence[nn.Module], x: torch.Tensor, reps: int,
                        warmup_s: float = 0.3) -> list[Timing]:
    """Forward latency of each model in eval mode under ``torch.inference_mode``.

    Timed by :func:`~mobilefuse.bench.timing.time_side_by_side`: on CPU in rotating rounds,
    so a slow spell of a shared machine falls on all of them and their ratios hold; CUDA work
    one model after another on the device clock.
    """
    def forward_of(model: nn.Module):
        model = model.eval()

        def run() -> torch.Tensor:
            with torch.inference_mode():
                return model(x)
        return run

    timings = time_side_by_side([forward_of(model) for model in models], x.device, reps,
                                warmup_s)
    for timing in timings:
        if isinstance(timing, Exception):
            raise timing
    return timings
