"""Clocks: steady-state timings on CPU and GPU, and the CPU allocator setting.

Every implementation and the ``dst.copy_(src)`` baseline go through the same function here, so their
numbers compare like with like: each is warmed up for a minimum time and call count (compilation
and the allocator's first calls stay out of the samples), then sampled.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import gc
import math
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_HUGE_TRIM = 2**31 - 1  # mallopt takes an int: the largest one means "never trim"
ALLOCATOR_REUSE = "glibc mallopt: mmap off, trim off (freed blocks reused)"
ALLOCATOR_SYSTEM = "system default (glibc may return large freed blocks to the OS)"
ALLOCATOR_CUDA = "PyTorch CUDA caching allocator"
_L2_FLUSH_BYTES = 256 * 2**20  # larger than the L2 of any current GPU
_MIN_SAMPLE_S = 1e-3
# With freed blocks kept (mallopt above), the first calls of an op with large outputs still
# run several times slower while the heap grows and its pages fault in; about 10 calls settle
# it. Warm up for whichever is longer, this many seconds or this many calls.
WARMUP_S = 0.3
WARMUP_CALLS = 10
# Rounds of time_cpu_side_by_side: each implementation's samples in this many blocks.
SIDE_BY_SIDE_ROUNDS = 3


@dataclasses.dataclass
class Timing:
    """Milliseconds per call: median and the 20% / 80% quantiles over ``samples`` samples,
    taken after ``warmup_calls`` untimed calls that lasted ``warmup_s`` seconds."""

    median_ms: float
    q20_ms: float
    q80_ms: float
    samples: int
    method: str
    warmup_calls: int = 0
    warmup_s: float = 0.0


def configure_allocator(system: bool = False) -> str:
    """Make glibc keep freed blocks for reuse (unless ``system``); returns what was done.

    By default glibc serves large blocks with mmap and hands them back on free, so each
    large output page-faults afresh. Disabling mmap and trimming lets every implementation
    reuse freed memory alike.
    """
    if system:
        return ALLOCATOR_SYSTEM
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return f"{ALLOCATOR_SYSTEM}; mallopt skipped: not glibc"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(
            _M_TRIM_THRESHOLD, _HUGE_TRIM) == 1
    except (OSError, AttributeError) as exc:
        return f"{ALLOCATOR_SYSTEM}; mallopt unavailable: {exc}"
    return ALLOCATOR_REUSE if ok else f"{ALLOCATOR_SYSTEM}; mallopt refused the settings"


def configure_allocator_for(device: torch.device, system: bool = False) -> str:
    """:func:`configure_allocator` on CPU; on a GPU the caching allocator already reuses
    blocks. Returns what the timings ran with."""
    return configure_allocator(system) if device.type == "cpu" else ALLOCATOR_CUDA


def _quantiles(times_s: list[float]) -> tuple[float, float, float]:
    q = torch.tensor(times_s, dtype=torch.float64).quantile(
        torch.tensor([0.5, 0.2, 0.8], dtype=torch.float64))
    return q[0].item() * 1e3, q[1].item() * 1e3, q[2].item() * 1e3


def warm_up(fn: Callable[[], object], min_s: float = WARMUP_S,
            min_calls: int = WARMUP_CALLS,
            sync: Callable[[], None] | None = None) -> tuple[int, float, float]:
    """Call ``fn`` until both ``min_calls`` calls and ``min_s`` seconds have passed.

    The first call (compilation, lazy initialization) is made before the clock starts.
    Returns the calls made after it, the seconds they took, and the median seconds per call
    of their second half (the settled ones), an estimate for sizing samples.
    """
    fn()
    if sync is not None:
        sync()
    times: list[float] = []
    begin = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - begin < min_s:
        start = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - start)
    settled = sorted(times[len(times) // 2:])
    return len(times), time.perf_counter() - begin, settled[len(settled) // 2]


def _sample_s(fn: Callable[[], object], number: int) -> float:
    """Seconds per call of ``number`` back-to-back calls of ``fn``."""
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


def time_cpu(fn: Callable[[], object], reps: int, warmup_s: float = WARMUP_S) -> Timing:
    """``reps`` wall-clock samples of ``fn``, each long enough (>= 1 ms) to time precisely.

    A fixed sample count, unlike ``Timer.blocked_autorange``, whose block size can swallow
    a short run into one or two samples and leave no quantiles.
    """
    calls, spent, estimate = warm_up(fn, warmup_s)
    number = max(1, math.ceil(_MIN_SAMPLE_S / max(estimate, 1e-9)))
    times = []
    gc_was_enabled = gc.isenabled()
    gc.disable()  # as timeit does: a collection inside a sample is noise, not the op
    try:
        for _ in range(max(reps, 1)):
            times.append(_sample_s(fn, number))
    finally:
        if gc_was_enabled:
            gc.enable()
    median, q20, q80 = _quantiles(times)
    return Timing(median, q20, q80, len(times),
                  f"time.perf_counter, {number} call(s) per sample", calls, spent)


def time_cpu_side_by_side(fns: Sequence[Callable[[], object]], reps: int,
                          warmup_s: float = WARMUP_S,
                          rounds: int = SIDE_BY_SIDE_ROUNDS) -> list[Timing | Exception]:
    """:func:`time_cpu` of several functions at once: each warmed up, then ``rounds`` rounds
    in which each function, in an order rotated round by round, makes one untimed call (its
    data back in cache) and takes its share of the ``reps`` samples.

    A slow spell of a shared machine (another tenant's memory traffic, a migrated thread)
    then falls on every function alike instead of on whichever was being timed, so the
    ratios between them hold where absolute times drift; within a round each function runs
    back to back, as with :func:`time_cpu` (one sample each, alternating, would time every
    call with the caches the other function left). A function that raises is left out and
    its exception returned in its place.
    """
    errors: dict[int, Exception] = {}
    numbers: dict[int, int] = {}  # calls per sample, from each function's warm-up
    warm: dict[int, tuple[int, float]] = {}
    for i, fn in enumerate(fns):
        try:
            calls, spent, estimate = warm_up(fn, warmup_s)
        except Exception as exc:  # noqa: BLE001  (returned in its place)
            errors[i] = exc
            continue
        numbers[i] = max(1, math.ceil(_MIN_SAMPLE_S / max(estimate, 1e-9)))
        warm[i] = (calls, spent)
    samples: dict[int, list[float]] = {i: [] for i in numbers}
    order = list(numbers)
    rounds = max(1, min(rounds, reps))
    per_round = math.ceil(max(reps, 1) / rounds)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # as in time_cpu
    try:
        for r in range(rounds if order else 0):
            shift = r % len(order)
            for i in order[shift:] + order[:shift]:
                fns[i]()
                samples[i] += [_sample_s(fns[i], numbers[i]) for _ in range(per_round)]
    finally:
        if gc_was_enabled:
            gc.enable()
    results: list[Timing | Exception] = []
    for i in range(len(fns)):
        if i in errors:
            results.append(errors[i])
            continue
        median, q20, q80 = _quantiles(samples[i])
        method = (f"time.perf_counter, {numbers[i]} call(s) per sample, in {rounds} rounds "
                  "with the case's other implementations")
        results.append(Timing(median, q20, q80, len(samples[i]), method, *warm[i]))
    return results


def _cuda_estimate_ms(fn: Callable[[], object], calls: int = 5) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / calls


def time_cuda(fn: Callable[[], object], reps: int, warmup_s: float = WARMUP_S) -> Timing:
    """``triton.testing.do_bench`` (flushes L2 between calls) or, without Triton, CUDA events."""
    calls, spent, _ = warm_up(fn, warmup_s, sync=torch.cuda.synchronize)
    estimate_ms = _cuda_estimate_ms(fn)
    try:
        from triton.testing import do_bench
    except ImportError:
        return dataclasses.replace(_time_cuda_events(fn, reps), warmup_calls=calls,
                                   warmup_s=spent)
    # do_bench repeats for a time budget; size it for about `reps` calls.
    rep_ms = max(reps * estimate_ms, 1.0)
    median, q20, q80 = do_bench(fn, warmup=max(5 * estimate_ms, 1.0), rep=rep_ms,
                                quantiles=[0.5, 0.2, 0.8])
    samples = max(1, int(rep_ms / max(estimate_ms, 1e-6)))
    return Timing(median, q20, q80, samples, "triton.testing.do_bench (L2 flushed)", calls,
                  spent)


def _time_cuda_events(fn: Callable[[], object], reps: int) -> Timing:
    flush = torch.empty(_L2_FLUSH_BYTES, dtype=torch.int8, device="cuda")
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(reps)]
    for start, end in events:
        flush.zero_()  # evict the inputs from L2, as do_bench does
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    times = [start.elapsed_time(end) / 1e3 for start, end in events]
    median, q20, q80 = _quantiles(times)
    return Timing(median, q20, q80, reps, "CUDA events (L2 flushed)")


def time_fn(fn: Callable[[], object], device: torch.device, reps: int,
            warmup_s: float = WARMUP_S) -> Timing:
    """Time ``fn`` on ``device``'s clock (CUDA work is timed on the GPU, not the host)."""
    timer = time_cuda if device.type == "cuda" else time_cpu
    return timer(fn, reps, warmup_s)


def error_text(exc: BaseException, limit: int = 300) -> str:
    """``Type: message``, first line only, at most ``limit`` characters: for result files."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:limit]


def measure(entry: dict[str, Any], fn: Callable[[], object], device: torch.device, reps: int,
            warmup_s: float = WARMUP_S) -> None:
    """Time ``fn`` into ``entry`` (ms, quantiles, warm-up, and GB/s of ``entry["bytes"]``), or
    record its error there: one broken implementation must not stop a run."""
    try:
        t = time_fn(fn, device, reps, warmup_s)
    except Exception as exc:  # noqa: BLE001
        t = exc
    _record(entry, t)


def _record(entry: dict[str, Any], t: Timing | Exception) -> None:
    """``t`` into ``entry``: ms, quantiles, warm-up and GB/s, or the error."""
    if isinstance(t, Exception):
        entry["error"] = error_text(t)
        return
    entry.update(median_ms=t.median_ms, q20_ms=t.q20_ms, q80_ms=t.q80_ms, samples=t.samples,
                 method=t.method, warmup_calls=t.warmup_calls, warmup_s=t.warmup_s,
                 gbps=gbps(entry["bytes"], t.median_ms))


def time_side_by_side(fns: Sequence[Callable[[], object]], device: torch.device, reps: int,
                      warmup_s: float = WARMUP_S) -> list[Timing | Exception]:
    """:func:`time_fn` of several functions compared with each other: in rotating rounds on
    CPU (see :func:`time_cpu_side_by_side`); on a GPU, one after another on its own clock. A
    function that raises gets its exception in its place."""
    if device.type == "cpu":
        return time_cpu_side_by_side(fns, reps, warmup_s)
    results: list[Timing | Exception] = []
    for fn in fns:
        try:
            results.append(time_fn(fn, device, reps, warmup_s))
        except Exception as exc:  # noqa: BLE001  (returned in its place)
            results.append(exc)
    return results


def measure_side_by_side(timed: Sequence[tuple[dict[str, Any], Callable[[], object]]],
                         device: torch.device, reps: int, warmup_s: float = WARMUP_S) -> None:
    """:func:`measure` of several implementations of one case, timed by
    :func:`time_side_by_side`."""
    results = time_side_by_side([fn for _, fn in timed], device, reps, warmup_s)
    for (entry, _), t in zip(timed, results, strict=True):
        _record(entry, t)


def gbps(nbytes: int, ms: float) -> float:
    """Bytes per millisecond as GB/s (10^9 bytes per second)."""
    return nbytes / (ms * 1e-3) / 1e9 if ms > 0 else float("nan")
