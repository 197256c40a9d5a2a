"""BatchNorm (batch statistics) + activation as one CPU op, forward and backward, against the
float64 reference: the fused block's training path runs on these."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    BACKWARD_TOL,
    FORWARD_TOL,
    assert_close_to_reference,
    make_input,
    results_at_thread_counts,
    scaled_error,
)

from mobilefuse import reference
from mobilefuse._extension import has_extension

pytestmark = pytest.mark.skipif(not has_extension(), reason="C++ extension not built")

ACTIVATIONS = ["none", "relu", "relu6", "hardswish", "silu"]
EPS = 1e-5


def _forward(*args):
    return torch.ops.mobilefuse.batch_norm_activation(*args)


def _backward(*args):
    return torch.ops.mobilefuse.batch_norm_activation_backward(*args)


def _statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # With float32 running statistics (BatchNorm2d's buffers) the batch statistics of a
    # float16/bfloat16 x come back in float32, as the fused block gets them.
    c = x.shape[1]
    kind = torch.float64 if x.dtype == torch.float64 else torch.float32
    mean, var = torch.batch_norm_update_stats(x, x.new_zeros(c, dtype=kind),
                                              x.new_ones(c, dtype=kind), 0.0)
    return mean, torch.rsqrt(var + EPS)


def _case(rng: random.Random, dtype: torch.dtype, layout: str):
    # Channel counts below, at and past one vector block; odd spatial sizes down to 1x1.
    n, c = rng.choice([1, 2, 3, 5]), rng.choice([1, 3, 8, 17, 32, 33, 70, 130])
    h, w = rng.choice([1, 2, 5, 7, 12]), rng.choice([1, 3, 6, 9, 13])
    # Seeded from rng, so each case is the same whatever ran before it.
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    x = make_input((n, c, h, w), dtype, "cpu", layout, gen, scale=2.0) + 0.5
    # BatchNorm parameters stay float32 under reduced-precision inputs (autocast).
    pdtype = torch.float64 if dtype == torch.float64 else torch.float32
    weight = torch.rand(c, dtype=pdtype, generator=gen) + 0.5 if rng.random() < 0.8 else None
    bias = torch.randn(c, dtype=pdtype, generator=gen) if rng.random() < 0.8 else None
    return x, weight, bias, rng.choice(ACTIVATIONS)


def _reference(x, weight, bias, act):
    """act(batch_norm(x)) in float64 on batch statistics, and its inputs needing gradients."""
    x64 = x.detach().double().requires_grad_()
    w64 = None if weight is None else weight.double().requires_grad_()
    b64 = None if bias is None else bias.double().requires_grad_()
    y = reference.activation(F.batch_norm(x64, None, None, w64, b64, True, 0.0, EPS), act)
    return y, x64, w64, b64


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("seed", range(8))
def test_forward_matches_float64_reference(seed, dtype, layout):
    x, weight, bias, act = _case(random.Random(seed * 7 + len(layout)), dtype, layout)
    mean, invstd = _statistics(x)
    out = _forward(x, mean, invstd, weight, bias, act)
    expected = _reference(x, weight, bias, act)[0]
    assert out.dtype == dtype
    if layout != "strided":
        fmt = torch.channels_last if layout == "channels_last" and x.shape[1] > 1 and (
            x.shape[2] * x.shape[3] > 1) else torch.contiguous_format
        assert out.is_contiguous(memory_format=fmt)
    assert_close_to_reference(out, expected, FORWARD_TOL[dtype], f"seed {seed}, {act}")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("seed", range(8))
def test_backward_matches_float64_reference(seed, dtype, layout):
    x, weight, bias, act = _case(random.Random(seed * 11 + len(layout)), dtype, layout)
    mean, invstd = _statistics(x)
    grad = make_input(tuple(x.shape), dtype, "cpu", layout,
                      torch.Generator().manual_seed(seed))
    gx, gw, gb = _backward(grad, x, mean, invstd, weight, bias, act, [True, True, True])
    y, x64, w64, b64 = _reference(x, weight, bias, act)
    leaves = [t for t in (x64, w64, b64) if t is not None]
    expected = torch.autograd.grad(y, leaves, grad.double())
    assert gx.dtype == dtype
    assert_close_to_reference(gx, expected[0], BACKWARD_TOL[dtype], f"seed {seed} grad x")
    if weight is not None:
        assert gw.shape == weight.shape and gw.dtype == weight.dtype
        assert_close_to_reference(gw, expected[1], BACKWARD_TOL[dtype], f"seed {seed} grad w")
    if bias is not None:
        assert gb.shape == bias.shape and gb.dtype == bias.dtype
        assert_close_to_reference(gb, expected[-1], BACKWARD_TOL[dtype], f"seed {seed} grad b")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_input_gradient_is_as_precise_as_eager_when_the_mean_dwarfs_the_spread(layout):
    # Values at 5 +- 0.005, and a gradient along the normalized values (the part BatchNorm's
    # backward takes out): x * beta and mean * beta are then ~1000x the result. Taking the
    # mean off x before the multiply keeps the error at eager float32's (2.3e-5 of max |ref|);
    # folding mean * beta into the per-channel constant had left it 3x larger (contiguous).
    gen = torch.Generator().manual_seed(3)
    x = (5.0 + 0.005 * torch.randn(4, 8, 9, 9, generator=gen))
    x = x.contiguous(memory_format=torch.channels_last if layout == "channels_last"
                     else torch.contiguous_format)
    spread = (x - x.mean((0, 2, 3), keepdim=True)) / 0.005
    grad = torch.randn(x.shape, generator=gen) + 3.0 * spread
    weight = torch.rand(8, generator=gen) + 0.5
    mean, invstd = _statistics(x)
    gx = _backward(grad, x, mean, invstd, weight, None, "none", [True, False, False])[0]
    y, x64, _, _ = _reference(x, weight, None, "none")
    (expected,) = torch.autograd.grad(y, [x64], grad.double())
    eager_x = x.detach().requires_grad_()
    F.batch_norm(eager_x, None, None, weight, None, True, 0.0, EPS).backward(grad)
    err, _ = scaled_error(gx, expected)
    eager_err, _ = scaled_error(eager_x.grad, expected)
    assert err <= 2.0 * eager_err, f"scaled error {err:.2e}, eager float32's {eager_err:.2e}"


def _per_image(x: torch.Tensor, gen: torch.Generator, positive: bool) -> torch.Tensor:
    # (N, C) in float32 (float64 for float64): the SE gate and the pool's gradient.
    kind = torch.float64 if x.dtype == torch.float64 else torch.float32
    t = torch.rand if positive else torch.randn
    return t(x.shape[:2], dtype=kind, generator=gen)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("seed", range(5))
def test_forward_with_out_scale_matches_float64_reference(seed, dtype, layout):
    # act(batch_norm(x)) * out_scale[n, c]: squeeze-and-excitation's gate applied in the pass.
    x, weight, bias, act = _case(random.Random(seed * 13 + len(layout)), dtype, layout)
    gate = _per_image(x, torch.Generator().manual_seed(seed), positive=True)
    mean, invstd = _statistics(x)
    out = _forward(x, mean, invstd, weight, bias, act, gate)
    expected = _reference(x, weight, bias, act)[0] * gate.double()[:, :, None, None]
    assert out.dtype == dtype
    assert_close_to_reference(out, expected, FORWARD_TOL[dtype], f"seed {seed}, {act}")


@pytest.mark.parametrize("with_shift", [True, False])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("seed", range(5))
def test_backward_with_mapped_gradient_matches_float64_reference(seed, dtype, layout,
                                                                 with_shift):
    # The incoming gradient is grad * grad_scale[n, c] + grad_shift[n, c], mapped in the pass.
    x, weight, bias, act = _case(random.Random(seed * 17 + len(layout)), dtype, layout)
    gen = torch.Generator().manual_seed(seed)
    grad = make_input(tuple(x.shape), dtype, "cpu", layout, gen)
    scale = _per_image(x, gen, positive=True)
    shift = _per_image(x, gen, positive=False) if with_shift else None
    mean, invstd = _statistics(x)
    gx, gw, gb = _backward(grad, x, mean, invstd, weight, bias, act, [True] * 3, scale, shift)
    mapped = grad.double() * scale.double()[:, :, None, None]
    if shift is not None:
        mapped = mapped + shift.double()[:, :, None, None]
    y, x64, w64, b64 = _reference(x, weight, bias, act)
    leaves = [t for t in (x64, w64, b64) if t is not None]
    expected = torch.autograd.grad(y, leaves, mapped)
    assert gx.dtype == dtype
    assert_close_to_reference(gx, expected[0], BACKWARD_TOL[dtype], f"seed {seed} grad x")
    if weight is not None:
        assert_close_to_reference(gw, expected[1], BACKWARD_TOL[dtype], f"seed {seed} grad w")
    if bias is not None:
        assert_close_to_reference(gb, expected[-1], BACKWARD_TOL[dtype], f"seed {seed} grad b")


@pytest.mark.parametrize("mask", [[True, False, False], [False, True, True],
                                  [False, False, True]])
def test_backward_computes_what_the_mask_asks(mask):
    x, weight, bias, _ = _case(random.Random(5), torch.float32, "channels_last")
    weight, bias = torch.rand(x.shape[1]) + 0.5, torch.randn(x.shape[1])
    mean, invstd = _statistics(x)
    grad = torch.randn_like(x)
    full = _backward(grad, x, mean, invstd, weight, bias, "hardswish", [True] * 3)
    part = _backward(grad, x, mean, invstd, weight, bias, "hardswish", mask)
    for asked, whole, got in zip(mask, full, part, strict=True):
        if asked:
            assert torch.equal(whole, got)
        else:
            assert got.numel() == 0


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradient_sums_do_not_depend_on_the_thread_count(layout):
    # Many chunks of rows (channels_last) or planes (NCHW), summed in a fixed order.
    x = make_input((6, 24, 37, 41), torch.float32, "cpu", layout)
    grad = make_input(tuple(x.shape), torch.float32, "cpu", layout)
    weight, bias = torch.rand(24) + 0.5, torch.randn(24)
    mean, invstd = _statistics(x)
    results = results_at_thread_counts(
        lambda: _backward(grad, x, mean, invstd, weight, bias, "silu", [True] * 3))
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)


def test_large_tensor_against_float64_reference():
    # Long per-channel sums: 8 x 112 x 112 values per channel, as in a MobileNet's first block.
    # A smooth activation: among 1.6 M values some pre-activation lands within float32
    # rounding of a kink, where the float32 statistics and the float64 reference may pick
    # different sides.
    gen = torch.Generator().manual_seed(0)
    x = make_input((8, 16, 112, 112), torch.float32, "cpu", "channels_last", gen)
    weight, bias = torch.rand(16, generator=gen) + 0.5, torch.randn(16, generator=gen)
    mean, invstd = _statistics(x)
    grad = torch.randn(x.shape, generator=gen).contiguous(memory_format=torch.channels_last)
    gx, gw, gb = _backward(grad, x, mean, invstd, weight, bias, "silu", [True] * 3)
    y, x64, w64, b64 = _reference(x, weight, bias, "silu")
    expected = torch.autograd.grad(y, (x64, w64, b64), grad.double())
    tol = BACKWARD_TOL[torch.float32]
    for got, want, what in zip((gx, gw, gb), expected, ("x", "weight", "bias"), strict=True):
        assert_close_to_reference(got, want, tol, f"grad {what}")


def test_bad_inputs_raise_clear_errors():
    x = torch.randn(2, 4, 5, 5)
    mean, invstd = _statistics(x)
    with pytest.raises(RuntimeError, match="mean must have shape \\(C,\\) with C=4"):
        _forward(x, mean[:3], invstd, None, None, "relu")
    with pytest.raises(RuntimeError, match="weight must have shape \\(C,\\)"):
        _forward(x, mean, invstd, torch.ones(5), None, "relu")
    with pytest.raises(RuntimeError, match="x must have rank 4"):
        _forward(x[0], mean, invstd, None, None, "relu")
    with pytest.raises(RuntimeError, match="activation"):
        _forward(x, mean, invstd, None, None, "gelu")
    with pytest.raises(RuntimeError, match="grad_out has shape"):
        _backward(x[:1], x, mean, invstd, None, None, "none", [True] * 3)
    with pytest.raises(RuntimeError, match="x must be float16, bfloat16, float32 or float64"):
        _forward(x.int(), mean, invstd, None, None, "none")
    with pytest.raises(RuntimeError, match="out_scale must have shape \\(N, C\\)"):
        _forward(x, mean, invstd, None, None, "relu", torch.ones(4))
    with pytest.raises(RuntimeError, match="grad_scale must have shape \\(N, C\\)"):
        _backward(x, x, mean, invstd, None, None, "relu", [True] * 3, torch.ones(4, 2))
    with pytest.raises(RuntimeError, match="grad_shift must have shape \\(N, C\\)"):
        _backward(x, x, mean, invstd, None, None, "relu", [True] * 3, torch.ones(2, 4),
                  torch.ones(2, 3))
    with pytest.raises(RuntimeError, match="grad_shift needs grad_scale"):
        _backward(x, x, mean, invstd, None, None, "relu", [True] * 3, None, torch.ones(2, 4))
