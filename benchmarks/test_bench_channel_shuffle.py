"""channel_shuffle: mobilefuse vs F.channel_shuffle vs the view/transpose idiom vs torch.compile;
concat_shuffle (ShuffleNetV2's unit end) vs ``torch.cat`` + ``F.channel_shuffle`` vs
torch.compile."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from mobilefuse.bench import cases

SHUFFLE_IMPLS = cases.impl_names("channel_shuffle", cases.bench_device())
CONCAT_IMPLS = cases.impl_names("concat_shuffle", cases.bench_device())


@pytest.mark.parametrize("layout", list(cases.LAYOUTS))
@pytest.mark.parametrize("impl", SHUFFLE_IMPLS)
def test_channel_shuffle(run_benchmark: Callable[..., None],
                         bench_input: Callable[[torch.dtype, str], torch.Tensor],
                         impl: str, layout: str) -> None:
    """Forward time of one implementation of channel_shuffle (groups=2), float32."""
    run_benchmark("channel_shuffle", impl, bench_input(torch.float32, layout), layout)


@pytest.mark.parametrize("layout", list(cases.LAYOUTS))
@pytest.mark.parametrize("impl", CONCAT_IMPLS)
def test_concat_shuffle(run_benchmark: Callable[..., None],
                        bench_input: Callable[[torch.dtype, str], torch.Tensor],
                        impl: str, layout: str) -> None:
    """Forward time of one implementation of concat_shuffle on the input's two channel halves
    (views, as in a ShuffleNetV2 unit), float32."""
    run_benchmark("concat_shuffle", impl, bench_input(torch.float32, layout), layout)
