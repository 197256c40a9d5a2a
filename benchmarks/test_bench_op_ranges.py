"""What the ``mobilefuse::<op>`` profiler ranges cost when no profiler runs.

The fused MBConv block (``ops.inverted_residual``, small enough that per-call overhead shows)
timed as users call it (range gated off), without the range code at all, and with a
``record_function`` opened on every call as an always-on range would; plus the gate alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
import torch

from mobilefuse import ops
from mobilefuse._block_args import check_block_args
from mobilefuse._ranges import op_range


def _block() -> tuple[tuple[torch.Tensor, ...], dict]:
    g = torch.Generator().manual_seed(0)
    t = lambda *s: torch.randn(s, generator=g) * 0.3  # noqa: E731
    se = (t(4, 16), t(4), t(16, 4), t(16))
    tensors = (t(1, 8, 14, 14), t(16, 8), t(16), t(16, 1, 3, 3), t(16), t(8, 16), t(8), se)
    return tensors, dict(activation="hardswish")


def _calls() -> dict[str, Callable[[], object]]:
    tensors, kwargs = _block()
    x, we, be, wd, bd, wp, bp, se = tensors
    args = check_block_args(x, we, be, wd, bd, wp, bp, se, 1, None, 1, "hardswish", "relu",
                            "hardsigmoid", None, None)
    rest = (x, we, be, wd, bd, wp, bp, se, args, "relu", "hardsigmoid")

    def always_on() -> object:
        with torch.profiler.record_function("mobilefuse::inverted_residual"):
            return ops._run_block(*rest)

    return {
        "gated (as shipped)": lambda: ops.run_inverted_residual(*rest),
        "no range": lambda: ops._run_block(*rest),
        "record_function always": always_on,
        "gate alone": lambda: op_range("inverted_residual").__enter__(),
        "empty context": lambda: contextlib.nullcontext().__enter__(),
    }


@pytest.mark.parametrize("variant", list(_calls()))
def test_op_range_overhead(benchmark, variant: str) -> None:
    """One no-grad call of the variant."""
    fn = _calls()[variant]
    with torch.no_grad():
        benchmark(fn)
