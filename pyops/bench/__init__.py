"""Benchmark runner: ``python -m mobilefuse.bench``.

It first verifies every op on every fused backend this machine can run against the float64
reference, then times each op side by side as mobilefuse, PyTorch eager and ``torch.compile``
of the reference, on the same inputs, and writes ``benchmarks/results/<device>-<date>.json``.

Modules: :mod:`~mobilefuse.bench.cases` (what runs), :mod:`~mobilefuse.bench.depthwise_cases`
(the depthwise layers of real networks and their calls), :mod:`~mobilefuse.bench.verify`
(correctness), :mod:`~mobilefuse.bench.timing` (warm-up, clocks, allocator),
:mod:`~mobilefuse.bench.depthwise_section` (the depthwise timings and their geometric means),
:mod:`~mobilefuse.bench.report` (tables, environment, JSON), :mod:`~mobilefuse.bench.runner`
(the command line).
"""

from __future__ import annotations

from mobilefuse.bench.runner import main

__all__ = ["main"]
