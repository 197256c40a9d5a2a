"""What the efficiency report measures for one model: size, work, memory and latency."""

from __future__ import annotations

import copy
from collections.abc import Sequence

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
