"""Shared fixtures for the pytest-benchmark suites (``pytest benchmarks/``).

Inputs and implementations come from :mod:`mobilefuse.bench.cases`, the same ones the
``python -m mobilefuse.bench`` runner times. Shape: ``MOBILEFUSE_BENCH_SHAPE="N,C,H,W"``
(default 32,96,56,56); set ``MOBILEFUSE_BENCH_SYSTEM_ALLOCATOR=1`` to leave glibc malloc alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import torch

from mobilefuse.bench import cases, timing

DEVICE = cases.bench_device()


@pytest.fixture(scope="session", autouse=True)
def allocator_note() -> str:
    """Keep freed CPU blocks for reuse, as the runner does, so outputs don't page-fault."""
    if DEVICE.type != "cpu":
        return timing.ALLOCATOR_CUDA
    system = os.environ.get("MOBILEFUSE_BENCH_SYSTEM_ALLOCATOR", "0") == "1"
    return timing.configure_allocator(system=system)


@pytest.fixture(scope="session")
def bench_shape() -> tuple[int, ...]:
    """The benchmark shape (N, C, H, W)."""
    return cases.shape_from_env()


@pytest.fixture(scope="session")
def bench_input(bench_shape: tuple[int, ...]) -> Callable[[torch.dtype, str], torch.Tensor]:
    """``make(dtype, layout)``: one random input per (dtype, layout), shared by every impl."""
    made: dict[tuple[torch.dtype, str], torch.Tensor] = {}

    def make(dtype: torch.dtype, layout: str) -> torch.Tensor:
        key = (dtype, layout)
        if key not in made:
            made[key] = cases.make_input(bench_shape, dtype, layout, DEVICE)
        return made[key]

    return make


@pytest.fixture
def run_benchmark(benchmark: Any) -> Callable[[str, str, torch.Tensor, str], None]:
    """``run(op, impl, x, layout)``: time ``impl`` of ``op`` on ``x`` beside its rivals."""

    def run(op: str, impl: str, x: torch.Tensor, layout: str) -> None:
        call = cases.synchronized(cases.build_impl(op, impl), x)
        if benchmark.disabled:
            call()  # a smoke run: one call is enough
        else:
            # Outside the timing: torch.compile compiles, kernels load, the allocator settles.
            timing.warm_up(call)
        # One group per (op, layout, dtype), so the implementations sit side by side.
        benchmark.group = f"{op} {layout} {str(x.dtype).removeprefix('torch.')}"
        benchmark.extra_info.update(bytes=cases.moved_bytes(x), shape=list(x.shape),
                                    memory_format=layout, impl=impl)
        benchmark(call)

    return run
