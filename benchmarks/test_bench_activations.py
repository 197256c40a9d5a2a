"""hardswish / hardsigmoid: mobilefuse vs eager PyTorch vs torch.compile of the reference."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from mobilefuse.bench import cases

IMPLS = cases.impl_names("hardswish", cases.bench_device())


@pytest.mark.parametrize("layout", list(cases.LAYOUTS))
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", cases.ACTIVATIONS)
def test_activation(run_benchmark: Callable[..., None],
                    bench_input: Callable[[torch.dtype, str], torch.Tensor],
                    op: str, impl: str, layout: str) -> None:
    """Forward time of one implementation of one activation, float32."""
    run_benchmark(op, impl, bench_input(torch.float32, layout), layout)
