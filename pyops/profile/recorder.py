"""Module ranges for the profiler, and what each module call moved and computed.

A forward pre-hook on every module opens a ``layer:<path>`` range (``torch.profiler``'s
``record_function``) and the forward hook closes it, so every op event in the trace lies inside
the ranges of the modules that ran it. The same hooks, in a separate untimed pass under
``FlopCounterMode``, take each call's minimum traffic (its tensor inputs and outputs and the
module's parameters and buffers, each read or written once) and FLOPs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

LAYER_PREFIX = "layer:"
ROOT = "(model)"


def layer_name(path: str) -> str:
    """The profiler range name of the module at ``path`` ("" is the model itself)."""
    return LAYER_PREFIX + (path or ROOT)


def path_of(range_name: str) -> str:
    """The module path a ``layer:`` range name stands for ("" for the model)."""
    path = range_name.removeprefix(LAYER_PREFIX)
    return "" if path == ROOT else path


def _tensor_bytes(values: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tree_leaves(values)
               if isinstance(t, torch.Tensor))


@dataclasses.dataclass
class CallRecord:
    """One module's calls in one forward: the first call's input shape, and the sums over
    calls of the bytes its tensors and state take and of the FLOPs counted inside it."""

    module: str
    input_shape: tuple[int, ...] | None = None
    calls: int = 0
    bytes: int = 0
    flops: int = 0


@contextmanager
def layer_ranges(model: nn.Module) -> Iterator[None]:
    """Open a ``layer:<path>`` profiler range around every module's forward."""
    stack: list[torch.profiler.record_function] = []

    def enter(path: str) -> Any:
        def hook(_module: nn.Module, _args: Any) -> None:
            rf = torch.profiler.record_function(layer_name(path))
            rf.__enter__()
            stack.append(rf)
        return hook

    def leave(_module: nn.Module, _args: Any, _out: Any) -> None:
        if stack:
            stack.pop().__exit__(None, None, None)

    handles = []
    for path, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(enter(path)))
        handles.append(module.register_forward_hook(leave))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        while stack:  # a forward that raised left its ranges open
            stack.pop().__exit__(None, None, None)


def record_calls(model: nn.Module, run: Any) -> dict[str, CallRecord]:
    """Call ``run()`` once with hooks that record every module call's traffic and FLOPs.

    Parameters and buffers count once per call, with the module's descendants' (a block's
    weights live in its children). FLOPs are the convolutions' and matrix products' (as
    ``torch.utils.flop_counter`` counts them, mobilefuse's ops included).
    """
    records: dict[str, CallRecord] = {}
    starts: list[int] = []
    counter = FlopCounterMode(display=False)

    def enter(path: str, module: nn.Module) -> Any:
        def hook(_module: nn.Module, args: Any) -> None:
            rec = records.setdefault(path, CallRecord(type(module).__name__))
            if rec.input_shape is None:
                first = next((t for t in tree_leaves(args) if isinstance(t, torch.Tensor)), None)
                rec.input_shape = None if first is None else tuple(first.shape)
            starts.append(counter.get_total_flops())
        return hook

    def leave(path: str, module: nn.Module) -> Any:
        state = _tensor_bytes(list(module.parameters())) + _tensor_bytes(list(module.buffers()))

        def hook(_module: nn.Module, args: Any, out: Any) -> None:
            rec = records[path]
            rec.calls += 1
            rec.bytes += _tensor_bytes(args) + _tensor_bytes(out) + state
            rec.flops += counter.get_total_flops() - starts.pop()
        return hook

    handles = []
    for path, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(enter(path, module)))
        handles.append(module.register_forward_hook(leave(path, module)))
    try:
        with counter:
            run()
    finally:
        for handle in handles:
            handle.remove()
    return records
