"""Per-layer times from a ``torch.profiler`` run recorded with :func:`recorder.layer_ranges`.

Forward: a layer's time is its ``layer:`` range less the ranges of the layers nested in it, so
each moment of the forward counts once, in the innermost module running; Python work between
ops counts where it ran. Backward: each autograd node (``autograd::engine::evaluate_function``)
belongs to the layer whose forward op created it, found through the profiler's sequence
numbers; gradient accumulation into parameters is its own row. On CUDA, times are the device
times of the kernels those events launched; on CPU, wall time.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from torch.autograd import DeviceType

from mobilefuse.profile.recorder import LAYER_PREFIX, path_of

STEP_RANGE = "mobilefuse.profile:step"
BACKWARD_PREFIX = "autograd::engine::evaluate_function: "
ACCUMULATE_GRADS = "(accumulate grads)"
OTHER_BACKWARD = "(backward, no layer)"
PSEUDO_ROWS = (ACCUMULATE_GRADS, OTHER_BACKWARD)


@dataclasses.dataclass
class LayerTime:
    """Microseconds spent for one layer over the whole run, and on which ops."""

    forward_us: float = 0.0
    backward_us: float = 0.0
    ops: Counter[str] = dataclasses.field(default_factory=Counter)


@dataclasses.dataclass
class Attribution:
    """Every layer's time, and the time of the profiled steps the layers should add up to."""

    layers: dict[str, LayerTime]
    steps_us: float
    steps: int


def _is_layer(event: Any) -> bool:
    return event.name.startswith(LAYER_PREFIX)


def _nearest(event: Any, want: Any) -> Iterator[Any]:
    """Descendants of ``event`` that satisfy ``want``, not looking inside those found."""
    for child in event.cpu_children:
        if want(child):
            yield child
        else:
            yield from _nearest(child, want)


def _subtree(event: Any) -> Iterator[Any]:
    yield event
    for child in event.cpu_children:
        yield from _subtree(child)


def _has_ancestor(event: Any, want: Any) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if want(parent):
            return True
        parent = parent.cpu_parent
    return False


def _backward_owner(node_event: Any, owners: dict[tuple[Any, int], str]) -> str:
    name = node_event.name.removeprefix(BACKWARD_PREFIX)
    if "AccumulateGrad" in name:
        return ACCUMULATE_GRADS
    for child in node_event.cpu_children:
        if child.sequence_nr is not None and child.sequence_nr >= 0:
            thread = getattr(child, "fwd_thread", None) or child.thread
            owner = owners.get((thread, child.sequence_nr))
            if owner is not None:
                return owner
    return OTHER_BACKWARD


def _backward_op(node_event: Any, timer: Any) -> str:
    """The op a backward node ran: its costliest child's child (the node's own event is
    the autograd node, e.g. ``ConvolutionBackward0``; below it the op, e.g.
    ``aten::convolution_backward``), else the node's name."""
    nodes = node_event.cpu_children
    inner = [c for node in nodes for c in node.cpu_children]
    if inner:
        return max(inner, key=timer).name
    return nodes[0].name if nodes else node_event.name.removeprefix(BACKWARD_PREFIX)


def attribute(events: Iterable[Any], on_cuda: bool) -> Attribution:
    """Layer times from the profiler's events (``prof.events()``)."""
    cpu_events = [e for e in events if e.device_type == DeviceType.CPU]

    def timer(event: Any) -> float:
        return event.device_time_total if on_cuda else event.cpu_time_total

    layers: dict[str, LayerTime] = {}
    owners: dict[tuple[Any, int], str] = {}
    for event in cpu_events:
        if not _is_layer(event):
            continue
        path = path_of(event.name)
        row = layers.setdefault(path, LayerTime())
        nested = sum(timer(c) for c in _nearest(event, _is_layer))
        row.forward_us += timer(event) - nested
        for op in event.cpu_children:
            if _is_layer(op):
                continue
            row.ops[op.name] += timer(op)
            for inner in _subtree(op):
                if inner.sequence_nr is not None and inner.sequence_nr >= 0:
                    owners[(inner.thread, inner.sequence_nr)] = path

    def is_backward(event: Any) -> bool:
        return event.name.startswith(BACKWARD_PREFIX)

    for event in cpu_events:
        if not is_backward(event) or _has_ancestor(event, is_backward):
            continue
        row = layers.setdefault(_backward_owner(event, owners), LayerTime())
        row.backward_us += timer(event)
        row.ops[_backward_op(event, timer)] += timer(event)

    step_events = [e for e in cpu_events if e.name == STEP_RANGE]
    steps_us = sum(e.cpu_time_total for e in step_events)
    return Attribution(layers, steps_us, len(step_events))
