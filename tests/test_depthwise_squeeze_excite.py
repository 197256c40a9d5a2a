"""The inference op depthwise convolution + squeeze-and-excitation (the SE pool taken in the
depthwise kernel's epilogue) against the float64 reference, and the block route that uses it."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import FORWARD_TOL, assert_close_to_reference, make_input

import mobilefuse
from mobilefuse import reference
from mobilefuse._extension import has_extension

pytestmark = pytest.mark.skipif(not has_extension(), reason="C++ extension not built")

ACTIVATIONS = ["none", "relu", "relu6", "hardswish", "silu"]


def _op(*args):
    return torch.ops.mobilefuse.depthwise_squeeze_excite(*args)


def _reference(x, w, b, stride, padding, act, w1, b1, w2, b2, se_act, gate):
    def d(t):
        return None if t is None else t.double()
    h = reference.depthwise_conv2d(x.double(), w.double(), d(b), stride, padding, 1, act)
    return reference.squeeze_excite(h, w1.double(), d(b1), w2.double(), d(b2), se_act, gate)


def _case(rng: random.Random, dtype: torch.dtype, layout: str):
    n, c, r = rng.choice([1, 2, 3, 4, 5]), rng.choice([1, 5, 16, 17, 40, 72]), rng.choice([1, 3, 8])
    k, stride = rng.choice([3, 5, 7]), rng.choice([1, 2])
    h, w = rng.randint(k // 2 + 1, 19), rng.randint(k // 2 + 1, 23)
    padding = rng.choice([k // 2, 0, 1]) if min(h, w) >= k else k // 2
    bias = rng.random() < 0.7
    x = make_input((n, c, h, w), dtype, "cpu", layout)
    weight = torch.randn(c, 1, k, k, dtype=dtype) / k
    b = torch.randn(c, dtype=dtype) if bias else None
    w1, b1 = torch.randn(r, c, dtype=dtype) / c ** 0.5, torch.randn(r, dtype=dtype)
    w2, b2 = torch.randn(c, r, dtype=dtype) / r ** 0.5, torch.randn(c, dtype=dtype)
    if rng.random() < 0.3:
        b1 = None
    if rng.random() < 0.3:
        b2 = None
    return (x, weight, b, [stride, stride], [padding, padding], [1, 1], rng.choice(ACTIVATIONS),
            w1, b1, w2, b2, rng.choice(["relu", "silu"]), rng.choice(["sigmoid", "hardsigmoid"]))


@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("seed", range(12))
def test_matches_float64_reference(seed, dtype, layout):
    args = _case(random.Random(seed * 31 + len(layout)), dtype, layout)
    x, w, b, stride, padding, _, act, w1, b1, w2, b2, se_act, gate = args
    out = _op(*args)
    expected = _reference(x, w, b, stride[0], padding[0], act, w1, b1, w2, b2, se_act, gate)
    assert out.dtype == dtype and out.shape == expected.shape
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    assert out.is_contiguous(memory_format=fmt)
    assert_close_to_reference(out, expected, FORWARD_TOL[dtype], f"seed {seed}")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch", [1, 2, 4, 5])
def test_both_routes_match_float64_reference(batch, threads):
    # Two images or more per thread: each image is convolved, excited and gated on one thread
    # in a row (the excitation in C++ loops); fewer: rows spread over threads, torch excites.
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for seed in range(3):
            args = list(_case(random.Random(100 * batch + seed), torch.float32,
                              "channels_last"))
            x = args[0]
            args[0] = torch.randn(batch, *x.shape[1:]).contiguous(
                memory_format=torch.channels_last)
            out = _op(*args)
            x, w, b, stride, padding, _, act, w1, b1, w2, b2, se_act, gate = args
            expected = _reference(x, w, b, stride[0], padding[0], act, w1, b1, w2, b2, se_act,
                                  gate)
            assert_close_to_reference(out, expected, FORWARD_TOL[torch.float32],
                                      f"batch {batch}, {threads} threads, seed {seed}")
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("k, height, width, channels", [(7, 9, 130, 70), (5, 11, 28, 200)])
def test_channel_tiles_match_float64_reference(batch, k, height, width, channels):
    # 7 rows of 130 pixels of 70 channels outgrow the forward's 256 KB, and 5 rows of 28 pixels
    # of 200 channels its 32 KB for 5x5 at stride 1: the image is convolved in channel tiles
    # (the last partial), each adding its own channels' pool sums.
    gen = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, channels, height, width, generator=gen).contiguous(
        memory_format=torch.channels_last)
    w = torch.randn(channels, 1, k, k, generator=gen) / k
    b = torch.randn(channels, generator=gen)
    w1 = torch.randn(8, channels, generator=gen) / 8
    w2 = torch.randn(channels, 8, generator=gen) / 3
    pad = k // 2
    out = _op(x, w, b, [1, 1], [pad, pad], [1, 1], "silu", w1, None, w2, None, "relu", "sigmoid")
    expected = _reference(x, w, b, 1, pad, "silu", w1, None, w2, None, "relu", "sigmoid")
    assert_close_to_reference(out, expected, FORWARD_TOL[torch.float32], f"batch {batch}")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("r, size", [(40, 5), (20, 9), (33, 6)])
def test_wide_excitations_match_float64_reference(r, size, threads):
    # R above the output's pixel count (5x5 -> 40, 6x6 -> 33 at stride 1) excites all images
    # at once after the convolution; R = 20 on 9x9 goes image by image. R and C = 72 leave
    # partial vectors in the excitation's activation and gate.
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(r)
        x = torch.randn(4, 72, size, size, generator=gen).contiguous(
            memory_format=torch.channels_last)
        w = torch.randn(72, 1, 3, 3, generator=gen) / 3
        w1, b1 = torch.randn(r, 72, generator=gen) / 8, torch.randn(r, generator=gen)
        w2, b2 = torch.randn(72, r, generator=gen) / r ** 0.5, torch.randn(72, generator=gen)
        for se_act, gate in [("silu", "sigmoid"), ("relu", "hardsigmoid")]:
            out = _op(x, w, None, [1, 1], [1, 1], [1, 1], "hardswish", w1, b1, w2, b2, se_act,
                      gate)
            expected = _reference(x, w, None, 1, 1, "hardswish", w1, b1, w2, b2, se_act, gate)
            assert_close_to_reference(out, expected, FORWARD_TOL[torch.float32],
                                      f"R={r}, {size}x{size}, {se_act}/{gate}")
    finally:
        torch.set_num_threads(before)


def test_many_bands_sum_alike_run_to_run():
    # A single image and few channels split the rows into bands, each summed on its own.
    x = torch.randn(1, 24, 61, 37).contiguous(memory_format=torch.channels_last)
    w, w1, w2 = torch.randn(24, 1, 3, 3), torch.randn(6, 24) / 5, torch.randn(24, 6) / 3
    args = (x, w, None, [1, 1], [1, 1], [1, 1], "relu6", w1, None, w2, None, "relu", "sigmoid")
    first = _op(*args)
    assert torch.equal(first, _op(*args))
    expected = _reference(x, w, None, 1, 1, "relu6", w1, None, w2, None, "relu", "sigmoid")
    assert_close_to_reference(first, expected, FORWARD_TOL[torch.float32], "bands")


@pytest.mark.parametrize("bad, message", [
    ({"w1": torch.randn(4, 7)}, "w_reduce must have shape"),
    ({"w2": torch.randn(4, 8)}, "w_expand must have shape"),
    ({"b1": torch.randn(5)}, "b_reduce must have shape"),
    ({"b2": torch.randn(3)}, "b_expand must have shape"),
    ({"w1": torch.randn(4, 8).double()}, "must match x's dtype"),
    ({"se_act": "gelu"}, "se_activation must be relu or silu"),
    ({"gate": "tanh"}, "gate must be sigmoid or hardsigmoid"),
    ({"act": "gelu"}, "activation must be"),
    ({"weight": torch.randn(8, 2, 3, 3)}, "weight must have shape"),
])
def test_bad_arguments_raise_clear_errors(bad, message):
    parts = {"x": torch.randn(2, 8, 6, 6), "weight": torch.randn(8, 1, 3, 3), "act": "relu",
             "w1": torch.randn(4, 8), "b1": None, "w2": torch.randn(8, 4), "b2": None,
             "se_act": "relu", "gate": "sigmoid", **bad}
    with pytest.raises(RuntimeError, match=message):
        _op(parts["x"], parts["weight"], None, [1, 1], [1, 1], [1, 1], parts["act"],
            parts["w1"], parts["b1"], parts["w2"], parts["b2"], parts["se_act"], parts["gate"])


def _se_block():
    # MobileNetV3-Large's fourth block: expand 24 -> 72, 5x5 depthwise stride 2, SE, project.
    return mobilefuse.models.create_model("mobilenet_v3_large").features[4].eval()


def _fused_calls(fn, op: str) -> tuple[torch.Tensor, int]:
    """fn()'s result and how many times it called the fused op ``mobilefuse::<op>``."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = fn()
    calls = sum(e.count for e in prof.key_averages() if e.key == f"mobilefuse::{op}")
    return out, calls


@pytest.mark.parametrize("expansion_fuses", [True, False])
@pytest.mark.parametrize("channels_last", [True, False])
def test_block_inference_takes_the_fused_route_where_it_serves(channels_last, expansion_fuses,
                                                               monkeypatch):
    # 24 input channels: the expansion rule takes the block, whose expansion, depthwise and SE
    # then run as one op; where the rule leaves it, the depthwise conv and SE are one op.
    if not expansion_fuses:
        for module in (mobilefuse._block_plan, mobilefuse.ops):
            monkeypatch.setattr(module, "expansion_fuses", lambda x_shape: False)
    op = "expand_depthwise" if expansion_fuses else "depthwise_squeeze_excite"
    block = _se_block()
    x = torch.randn(2, 24, 13, 11)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = block.double()(x.double())
    fast = mobilefuse.accelerate(block.float())
    for call in range(2):  # the general path, then the cached plan
        with torch.no_grad():
            out, calls = _fused_calls(lambda: fast(x), op)
        assert calls == int(channels_last), f"call {call}"
        assert_close_to_reference(out, expected, FORWARD_TOL[torch.float32], "block")
    # With gradients recorded the autograd route runs and gives the same numbers.
    again, calls = _fused_calls(lambda: fast(x.clone().requires_grad_()), op)
    assert calls == 0
    assert_close_to_reference(again, expected, FORWARD_TOL[torch.float32], "block (grad)")
