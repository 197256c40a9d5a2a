"""BatchNorm's batch statistics as one CPU op (mobilefuse::batch_norm_statistics): mean, 1 / std
and the running-statistics update against float64 and nn.BatchNorm2d, the fused block's training
path runs on it."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from conftest import FORWARD_TOL, make_input, results_at_thread_counts

from mobilefuse._extension import has_extension

pytestmark = pytest.mark.skipif(not has_extension(), reason="C++ extension not built")

EPS = 1e-5


def _statistics(*args):
    return torch.ops.mobilefuse.batch_norm_statistics(*args)


def _expected(x: torch.Tensor, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    var, mean = torch.var_mean(x.double(), dim=(0, 2, 3), correction=0)
    return mean, torch.rsqrt(var + eps)


def _assert_close(got: torch.Tensor, want: torch.Tensor, tol: float, what: str) -> None:
    # Relative to each channel's own size: means near zero next to large ones still count.
    err = ((got.double() - want).abs() / (want.abs() + 1.0)).max().item()
    assert err <= tol, f"{what}: {err:.2e} > {tol:.0e}"


def _case(rng: random.Random, dtype: torch.dtype, layout: str) -> torch.Tensor:
    # Channel counts below, at and past one vector block; odd spatial sizes down to 1x1; an
    # offset per channel so the means are not all near zero.
    n, c = rng.choice([1, 2, 3, 5]), rng.choice([1, 3, 8, 17, 32, 33, 70, 130, 257])
    h, w = rng.choice([1, 2, 5, 7, 12, 29]), rng.choice([1, 3, 6, 9, 13, 31])
    if n * h * w == 1:
        n = 2
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    offset = (torch.randn(1, c, 1, 1, generator=gen) * 4).to(dtype)
    return make_input((n, c, h, w), dtype, "cpu", layout, gen, scale=2.0) + offset


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("seed", range(8))
def test_statistics_match_float64_reference(seed, dtype, layout):
    x = _case(random.Random(seed * 11 + len(layout)), dtype, layout)
    mean, invstd = _statistics(x, None, None, 0.0, EPS)
    kind = torch.float64 if dtype == torch.float64 else torch.float32
    assert mean.dtype == invstd.dtype == kind and mean.shape == (x.shape[1],)
    want_mean, want_invstd = _expected(x)
    # The values of x are exact in every dtype; the sums run in float32 (float64).
    tol = FORWARD_TOL[kind]
    _assert_close(mean, want_mean, tol, f"mean, seed {seed}")
    _assert_close(invstd, want_invstd, tol, f"invstd, seed {seed}")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("momentum", [0.1, 0.5, 1.0])
def test_running_statistics_update_as_batch_norm(layout, momentum):
    x = _case(random.Random(3), torch.float32, layout)
    c = x.shape[1]
    gen = torch.Generator().manual_seed(1)
    running = (torch.randn(c, generator=gen), torch.rand(c, generator=gen) + 0.5)
    ours = [t.clone() for t in running]
    theirs = [t.double() for t in running]
    versions = [t._version for t in ours]
    _statistics(x, ours[0], ours[1], momentum, EPS)
    # Caches keyed on version counters (the blocks' eval plans) see the update.
    assert all(t._version > v for t, v in zip(ours, versions, strict=True))
    F.batch_norm(x.double(), theirs[0], theirs[1], None, None, True, momentum, EPS)
    _assert_close(ours[0], theirs[0], FORWARD_TOL[torch.float32], "running_mean")
    _assert_close(ours[1], theirs[1], FORWARD_TOL[torch.float32], "running_var")


def test_running_statistics_keep_their_dtype():
    # float16 input, float32 buffers (autocast); float64 buffers of a float32 input.
    x = _case(random.Random(4), torch.float16, "channels_last")
    rm, rv = torch.zeros(x.shape[1]), torch.ones(x.shape[1])
    _statistics(x, rm, rv, 0.5, EPS)
    assert rm.dtype == rv.dtype == torch.float32
    want = torch.var_mean(x.double(), dim=(0, 2, 3), correction=1)
    _assert_close(rm, 0.5 * want[1], 1e-6, "running_mean")
    _assert_close(rv, 0.5 + 0.5 * want[0], 1e-6, "running_var")


def test_large_offset_does_not_cancel():
    # A mean 1000 standard deviations away from zero: sums of squares would lose the variance
    # to cancellation in float32; deviations from each chunk's own mean keep it.
    gen = torch.Generator().manual_seed(0)
    for layout in ("channels_last", "contiguous"):
        x = make_input((8, 24, 56, 56), torch.float32, "cpu", layout, gen) + 1000.0
        mean, invstd = _statistics(x, None, None, 0.0, EPS)
        want_mean, want_invstd = _expected(x)
        _assert_close(mean, want_mean, 1e-6, f"mean {layout}")
        assert ((invstd.double() - want_invstd).abs() / want_invstd).max() < 1e-4, layout


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_statistics_do_not_depend_on_the_thread_count(layout):
    x = make_input((6, 24, 37, 41), torch.float32, "cpu", layout)

    def run():
        rm, rv = torch.zeros(24), torch.ones(24)
        return (*_statistics(x, rm, rv, 0.1, EPS), rm, rv)

    results = results_at_thread_counts(run)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)


def test_large_tensor_against_float64_reference():
    # 8 x 112 x 112 values per channel, as in a MobileNet's first block.
    gen = torch.Generator().manual_seed(2)
    x = make_input((8, 16, 112, 112), torch.float32, "cpu", "channels_last", gen) * 3 - 1
    mean, invstd = _statistics(x, None, None, 0.0, EPS)
    want_mean, want_invstd = _expected(x)
    _assert_close(mean, want_mean, FORWARD_TOL[torch.float32], "mean")
    _assert_close(invstd, want_invstd, FORWARD_TOL[torch.float32], "invstd")


def test_bad_inputs_raise_clear_errors():
    x = torch.randn(2, 4, 5, 5)
    rm, rv = torch.zeros(4), torch.ones(4)
    with pytest.raises(RuntimeError, match="x must have rank 4"):
        _statistics(x[0], rm, rv, 0.1, EPS)
    with pytest.raises(RuntimeError, match="x must be float16, bfloat16, float32 or float64"):
        _statistics(x.int(), rm, rv, 0.1, EPS)
    with pytest.raises(RuntimeError, match="running_mean must have shape \\(C,\\) with C=4"):
        _statistics(x, torch.zeros(3), rv, 0.1, EPS)
    with pytest.raises(RuntimeError, match="running_var must be a floating-point tensor"):
        _statistics(x, rm, torch.ones(4, dtype=torch.int64), 0.1, EPS)
    with pytest.raises(RuntimeError, match="give both running_mean and running_var"):
        _statistics(x, rm, None, 0.1, EPS)
    with pytest.raises(RuntimeError, match="eps must be >= 0"):
        _statistics(x, rm, rv, 0.1, -1.0)
    with pytest.raises(RuntimeError, match="no values per channel"):
        _statistics(x[:0], rm, rv, 0.1, EPS)
