"""``mobilefuse.profile``: run a model under ``torch.profiler``, see where each step went."""

from __future__ import annotations

import contextlib
import copy
import itertools
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from mobilefuse.bench.report import device_name
from mobilefuse.profile.attribution import PSEUDO_ROWS, STEP_RANGE, Attribution, attribute
from mobilefuse.profile.compare import ProfileComparison
from mobilefuse.profile.compare import compare as compare_profiles
from mobilefuse.profile.recorder import CallRecord, layer_ranges, record_calls
from mobilefuse.profile.result import LayerRow, ProfileResult

Inputs = torch.Tensor | Sequence[torch.Tensor]
_trace_numbers = itertools.count()


def _as_args(example_input: Inputs) -> tuple[torch.Tensor, ...]:
    args = (example_input,) if isinstance(example_input, torch.Tensor) else tuple(example_input)
    if not args or not all(isinstance(a, torch.Tensor) for a in args):
        raise TypeError("mobilefuse.profile: example_input must be a tensor or a sequence of "
                        f"tensors, got {type(example_input).__name__}")
    return args


def _check_count(name: str, value: object, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"mobilefuse.profile: {name} must be an int >= {least}, got {value!r}")
    return value


def _subject(model: nn.Module, train: bool) -> nn.Module:
    """What a run profiles: the model itself for inference (its modes are restored after),
    a copy in train mode for training, which changes gradients and BatchNorm statistics."""
    return copy.deepcopy(model).train() if train else model


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode for the block, each module's own flag restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes:
            module.train(mode)


def _step_fn(model: nn.Module, args: tuple[torch.Tensor, ...], train: bool
             ) -> Callable[[], None]:
    """One forward (no gradient) or one forward and backward, with a fixed random gradient."""
    if not train:
        def infer() -> None:
            with torch.no_grad():
                model(*args)
        return infer

    grads: list[torch.Tensor] = []

    def step() -> None:
        model.zero_grad(set_to_none=True)
        outs = [t for t in tree_leaves(model(*args))
                if isinstance(t, torch.Tensor) and t.requires_grad]
        if not grads:
            grads.extend(torch.randn_like(t) for t in outs)
        torch.autograd.backward(outs, grads)
    return step


def _trace_file(trace_path: str | Path | None, label: str) -> Path:
    if trace_path is not None:
        return Path(trace_path)
    name = f"mobilefuse-profile-{label}-{os.getpid()}-{next(_trace_numbers)}.json"
    return Path(tempfile.gettempdir()) / name


def _rows(model: nn.Module, found: Attribution, records: dict[str, CallRecord],
          steps: int) -> list[LayerRow]:
    modules = dict(model.named_modules())
    ran = {p for p, t in found.layers.items() if t.ops}
    rows = []
    for path, times in found.layers.items():
        if not times.ops:  # a container: only the Python between its children's calls
            continue
        whole = path not in PSEUDO_ROWS and not any(
            q != path and q not in PSEUDO_ROWS and (not path or q.startswith(path + "."))
            for q in ran)
        record = records.get(path)
        rows.append(LayerRow(
            path=path,
            module=type(modules[path]).__name__ if path in modules else "-",
            ops=[op for op, _ in times.ops.most_common()],
            input_shape=None if record is None else record.input_shape,
            forward_ms=times.forward_us / 1e3 / steps,
            backward_ms=times.backward_us / 1e3 / steps,
            bytes=record.bytes if whole and record else None,
            flops=record.flops if whole and record else None))
    total = sum(r.total_ms for r in rows) or 1.0
    for r in rows:
        r.share = r.total_ms / total
    rows.sort(key=lambda r: -r.total_ms)
    return rows


def profile_model(model: nn.Module, args: tuple[torch.Tensor, ...], *, train: bool, steps: int,
                  warmup: int, trace_path: Path | None, label: str) -> ProfileResult:
    """Profile ``steps`` steps of ``model`` after ``warmup`` unprofiled ones (the model is
    used as given: the caller copies it when training would change it)."""
    device = args[0].device
    on_cuda = device.type == "cuda"
    context = contextlib.nullcontext() if train else _eval_mode(model)
    with context:
        step = _step_fn(model, args, train)
        for _ in range(warmup):
            step()
        with torch.no_grad():
            records = record_calls(model, lambda: model(*args))
        activities = [torch.profiler.ProfilerActivity.CPU]
        if on_cuda:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with layer_ranges(model), torch.profiler.profile(activities=activities) as prof:
            for _ in range(steps):
                with torch.profiler.record_function(STEP_RANGE):
                    step()
                    if on_cuda:
                        torch.cuda.synchronize(device)
    found = attribute(prof.events(), on_cuda)
    if trace_path is not None:
        trace_path.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(trace_path))
    return ProfileResult(label=label, rows=_rows(model, found, records, steps), steps=steps,
                         train=train, device=device_name(device),
                         step_ms=found.steps_us / 1e3 / max(found.steps, 1),
                         trace_path=trace_path)


def profile(model: nn.Module, example_input: Inputs, *, train: bool = False, steps: int = 5,
            warmup: int = 2, compare: bool = False, backend: str = "auto",
            trace_path: str | Path | None = None, print_table: bool = True,
            top: int | None = 25, label: str | None = None
            ) -> ProfileResult | ProfileComparison:
    """Run ``model`` under ``torch.profiler`` and return where the time of a step went, per layer.

    Each row is a module that ran ops itself (a convolution, a BatchNorm, an accelerated
    block): its path, its costliest op (``mobilefuse::<op>`` for mobilefuse's kernels), its
    input shape, forward and backward milliseconds per step, its share of the step, and for
    a module that did all its work itself the minimum bytes its forward moved and the GB/s and
    GFLOP/s it reached. The trace of the run is written as a Chrome trace (open it in
    ``chrome://tracing`` or Perfetto); modules appear there as ``layer:<path>`` ranges.

    Args:
        model: any ``nn.Module``. Inference runs it in eval mode under ``torch.no_grad()``
            (each module's mode is restored after); training (``train=True``) runs forward
            and backward with a fixed random output gradient on a copy in train mode, so
            the model's gradients and BatchNorm statistics are not touched.
        example_input: the input tensor, or a sequence of positional input tensors.
        train: profile training steps instead of inference.
        steps: profiled steps (>= 1); times are per step.
        warmup: unprofiled steps first (>= 0), for one-time costs (allocation, caches).
        compare: also profile ``mobilefuse.accelerate(model, backend=backend)`` and return a
            :class:`ProfileComparison` with per-layer speedups.
        backend: the backend the accelerated copy uses when ``compare`` is set.
        trace_path: where the Chrome trace goes; with ``compare`` it is the stem of two files,
            ``<stem>-eager.json`` and ``<stem>-accelerated.json``. Default: the temp folder.
        print_table: print the table (the ``top`` costliest rows) and the trace path.
        top: rows printed; None prints all.
        label: the name in the table's title (default: the model's class name).

    Returns:
        A :class:`ProfileResult`, or with ``compare`` a :class:`ProfileComparison`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"mobilefuse.profile: model must be an nn.Module, got "
                        f"{type(model).__name__}")
    args = _as_args(example_input)
    steps = _check_count("steps", steps, 1)
    warmup = _check_count("warmup", warmup, 0)
    label = label or type(model).__name__
    if not compare:
        subject = _subject(model, train)
        result: ProfileResult | ProfileComparison = profile_model(
            subject, args, train=train, steps=steps, warmup=warmup,
            trace_path=_trace_file(trace_path, label), label=label)
    else:
        from mobilefuse.accelerate import accelerate

        eager = _subject(model, train)
        fused = accelerate(eager, backend=backend)  # a copy: inplace=False
        stem = _trace_file(trace_path, label).with_suffix("")
        result = compare_profiles(
            profile_model(eager, args, train=train, steps=steps, warmup=warmup,
                          trace_path=stem.with_name(stem.name + "-eager.json"), label=label),
            profile_model(fused, args, train=train, steps=steps, warmup=warmup,
                          trace_path=stem.with_name(stem.name + "-accelerated.json"),
                          label=f"{label} (accelerated)"))
    if print_table:
        print(result.table(top), flush=True)
        paths = result.trace_paths if isinstance(result, ProfileComparison) else [
            result.trace_path]
        print("Chrome trace: " + ", ".join(str(p) for p in paths), flush=True)
    return result



def run_under_nvtx(model: nn.Module, example_input: Inputs, *, train: bool = False,
                   steps: int = 5, warmup: int = 2, name: str = "model") -> None:
    """Run ``steps`` steps of ``model`` on CUDA with every op and module as an NVTX range.

    For Nsight Systems and Nsight Compute, which read NVTX rather than ``torch.profiler``:
    inside ``torch.autograd.profiler.emit_nvtx()`` each dispatcher op (``mobilefuse::<op>``
    among them) and each ``layer:<path>`` module range becomes an NVTX range, nested in one
    ``<name>`` range per run and one ``mobilefuse.profile:step`` range per step, so
    ``ncu --nvtx --nvtx-include "mobilefuse::inverted_residual/"`` profiles just those
    kernels. Training runs on a copy, as in :func:`profile`.
    """
    args = _as_args(example_input)
    if args[0].device.type != "cuda":
        raise ValueError("mobilefuse.profile: NVTX ranges need CUDA inputs, got "
                         f"{args[0].device.type} (use profile() on CPU)")
    steps = _check_count("steps", steps, 1)
    warmup = _check_count("warmup", warmup, 0)
    subject = _subject(model, train)
    with contextlib.nullcontext() if train else _eval_mode(subject):
        step = _step_fn(subject, args, train)
        for _ in range(warmup):
            step()
        torch.cuda.synchronize()
        with layer_ranges(subject), torch.autograd.profiler.emit_nvtx(), \
                torch.cuda.nvtx.range(name):
            for _ in range(steps):
                with torch.cuda.nvtx.range(STEP_RANGE):
                    step()
            torch.cuda.synchronize()
