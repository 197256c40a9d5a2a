"""The inference op 1x1 expansion + depthwise convolution (+ squeeze-and-excitation), the
expanded map kept in a ring of rows in cache, against the float64 reference."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    FORWARD_TOL,
    assert_close_to_reference,
    make_input,
    results_at_thread_counts,
)

from mobilefuse import reference
from mobilefuse._extension import has_extension

pytestmark = pytest.mark.skipif(not has_extension(), reason="C++ extension not built")

ACTIVATIONS = ["none", "relu", "relu6", "hardswish", "silu"]


def _op(*args):
    return torch.ops.mobilefuse.expand_depthwise(*args)


def _reference(x, ew, eb, e_act, w, b, stride, padding, dilation, act, w1, b1, w2, b2, se_act,
               gate):
    def d(t):
        return None if t is None else t.double()
    ew = ew.double().reshape(ew.shape[0], ew.shape[1], 1, 1)
    h = reference.activation(F.conv2d(x.double(), ew, d(eb)), e_act)
    h = reference.depthwise_conv2d(h, w.double(), d(b), stride, padding, dilation, act)
    if w1 is None:
        return h
    return reference.squeeze_excite(h, w1.double(), d(b1), w2.double(), d(b2), se_act, gate)


def _se_weights(c: int, r: int, dtype: torch.dtype, gen: torch.Generator, biases: bool = True):
    w1 = torch.randn(r, c, generator=gen).to(dtype) / c ** 0.5
    w2 = torch.randn(c, r, generator=gen).to(dtype) / r ** 0.5
    b1 = torch.randn(r, generator=gen).to(dtype) if biases else None
    b2 = torch.randn(c, generator=gen).to(dtype) if biases else None
    return w1, b1, w2, b2


def _case(rng: random.Random, dtype: torch.dtype, layout: str, batch: int | None = None):
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    n = batch if batch is not None else rng.choice([1, 2, 3, 4, 5])
    c_in, c = rng.choice([1, 3, 8, 16, 24]), rng.choice([1, 5, 16, 17, 40, 72, 100])
    k, stride = rng.choice([3, 5, 7]), rng.choice([1, 2])
    h, w = rng.randint(k // 2 + 1, 19), rng.randint(k // 2 + 1, 23)
    padding = rng.choice([k // 2, 0, 1]) if min(h, w) >= k else k // 2
    x = make_input((n, c_in, h, w), dtype, "cpu", layout, generator=gen)
    ew = (torch.randn(c, c_in, 1, 1, generator=gen) / c_in ** 0.5).to(dtype)
    if rng.random() < 0.3:
        ew = ew.reshape(c, c_in)  # the 2-D form the op also takes
    eb = torch.randn(c, generator=gen).to(dtype) if rng.random() < 0.8 else None
    weight = (torch.randn(c, 1, k, k, generator=gen) / k).to(dtype)
    b = torch.randn(c, generator=gen).to(dtype) if rng.random() < 0.7 else None
    se = (_se_weights(c, rng.choice([1, 3, 8]), dtype, gen, rng.random() < 0.7)
          if rng.random() < 0.6 else (None, None, None, None))
    return (x, ew, eb, rng.choice(ACTIVATIONS), weight, b, [stride, stride], [padding, padding],
            [1, 1], rng.choice(ACTIVATIONS), *se, rng.choice(["relu", "silu"]),
            rng.choice(["sigmoid", "hardsigmoid"]))


def _expected(args):
    x, ew, eb, e_act, w, b, stride, padding, dilation, act, w1, b1, w2, b2, se_act, gate = args
    return _reference(x, ew, eb, e_act, w, b, stride[0], padding[0], dilation[0], act, w1, b1,
                      w2, b2, se_act, gate)


def _check(args, dtype, what):
    out = _op(*args)
    expected = _expected(args)
    assert out.dtype == dtype and out.shape == expected.shape, what
    assert_close_to_reference(out, expected, FORWARD_TOL[dtype], what)
    return out


@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("seed", range(12))
def test_matches_float64_reference(seed, dtype, layout):
    args = _case(random.Random(seed * 37 + len(layout)), dtype, layout)
    out = _check(args, dtype, f"seed {seed}")
    x = args[0]
    # As every kernel of the package: channels_last where x is that and not also contiguous
    # (C_in = 1 or 1x1 maps are both).
    fmt = (torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
           and not x.is_contiguous() else torch.contiguous_format)
    assert out.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("batch", [1, 2, 4, 5])
def test_images_groups_and_bands_match_float64_reference(batch):
    # Images that keep the threads busy run whole, one thread each; otherwise each image
    # splits into channel groups or bands of rows, so the tasks are a multiple of the threads.
    for seed in range(4):
        args = _case(random.Random(1000 * batch + seed), torch.float32, "channels_last", batch)
        expected = _expected(args)
        counts = (1, 2, 3, 4)
        for threads, out in zip(counts, results_at_thread_counts(lambda a=args: _op(*a), counts),
                                strict=True):
            assert_close_to_reference(out, expected, FORWARD_TOL[torch.float32],
                                      f"batch {batch}, {threads} threads, seed {seed}")


@pytest.mark.parametrize("shape, c, threads", [
    ((1, 16, 40, 44), 24, 2),   # tall map: two bands, which expand 4 of 40 rows twice
    ((1, 16, 7, 7), 100, 2),    # 7x7: bands would expand every row twice; two channel groups
    ((1, 8, 9, 10), 40, 3),     # three groups: 16, 16 and 8 channels
    ((1, 8, 9, 9), 17, 4),      # two 16-channel units for four threads: 2 groups x 2 bands
    ((3, 8, 14, 14), 100, 2),   # three images on two threads: each in two groups
])
@pytest.mark.parametrize("se", [False, True])
def test_channel_groups_and_bands_match_float64_reference(shape, c, threads, se):
    gen = torch.Generator().manual_seed(c + threads)
    x = torch.randn(*shape, generator=gen).contiguous(memory_format=torch.channels_last)
    c_in = shape[1]
    ew, eb = torch.randn(c, c_in, generator=gen) / c_in ** 0.5, torch.randn(c, generator=gen)
    w, b = torch.randn(c, 1, 3, 3, generator=gen) / 3, torch.randn(c, generator=gen)
    excite = _se_weights(c, 5, torch.float32, gen) if se else (None,) * 4
    args = (x, ew, eb, "relu6", w, b, [1, 1], [1, 1], [1, 1], "hardswish", *excite, "silu",
            "hardsigmoid")
    first, second = results_at_thread_counts(lambda: _op(*args), (threads, threads))
    assert torch.equal(first, second)
    assert_close_to_reference(first, _expected(args), FORWARD_TOL[torch.float32],
                              f"{shape} -> {c} on {threads} threads")


@pytest.mark.parametrize("c_in", [63, 64, 65, 130, 192])
@pytest.mark.parametrize("batch", [1, 4])
def test_input_channel_chunks_match_float64_reference(c_in, batch):
    # The expansion sums 64 input channels at a time, storing partial sums in between: one
    # chunk, one and a bit, three chunks; 100 channels end in a partial vector.
    gen = torch.Generator().manual_seed(c_in)
    x = torch.randn(batch, c_in, 9, 11, generator=gen).contiguous(
        memory_format=torch.channels_last)
    ew, eb = torch.randn(100, c_in, 1, 1, generator=gen) / c_in ** 0.5, torch.randn(100)
    w, b = torch.randn(100, 1, 5, 5, generator=gen) / 5, torch.randn(100, generator=gen)
    se = _se_weights(100, 8, torch.float32, gen)
    args = (x, ew, eb, "silu", w, b, [1, 1], [2, 2], [1, 1], "relu", *se, "relu", "sigmoid")
    for threads, out in zip((1, 2), results_at_thread_counts(lambda: _op(*args), (1, 2)),
                            strict=True):
        assert_close_to_reference(out, _expected(args), FORWARD_TOL[torch.float32],
                                  f"C_in={c_in}, {threads} threads")


@pytest.mark.parametrize("c", [96, 100, 144, 200])
@pytest.mark.parametrize("k, stride", [(3, 2), (5, 1), (3, 1)])
def test_expansion_blocks_match_float64_reference(c, k, stride):
    # The expansion runs in blocks of up to 6 (AVX-512) or 3 channel vectors: 96 and 144 fill
    # whole blocks, 100 and 200 end in a partial vector; 5x5 at stride 1 convolves in tiles.
    gen = torch.Generator().manual_seed(c * 10 + k)
    x = torch.randn(4, 16, 29, 31, generator=gen).contiguous(memory_format=torch.channels_last)
    ew, eb = torch.randn(c, 16, 1, 1, generator=gen) / 4, torch.randn(c, generator=gen)
    w, b = torch.randn(c, 1, k, k, generator=gen) / k, torch.randn(c, generator=gen)
    se = _se_weights(c, 8, torch.float32, gen)
    args = (x, ew, eb, "silu", w, b, [stride] * 2, [k // 2] * 2, [1, 1], "silu", *se, "silu",
            "sigmoid")
    _check(args, torch.float32, f"C={c}, k={k}, stride {stride}")


@pytest.mark.parametrize("dilation, stride", [(2, 1), (3, 2)])
def test_dilated_taps_match_float64_reference(dilation, stride):
    # Dilated taps span more input rows: the ring holds (kh - 1) * dilation + 1 + stride.
    gen = torch.Generator().manual_seed(dilation)
    x = torch.randn(3, 8, 21, 17, generator=gen).contiguous(memory_format=torch.channels_last)
    ew, w = torch.randn(24, 8, 1, 1, generator=gen) / 3, torch.randn(24, 1, 3, 3, generator=gen)
    args = (x, ew, None, "relu6", w, None, [stride] * 2, [dilation] * 2, [dilation] * 2,
            "hardswish", None, None, None, None, "relu", "sigmoid")
    _check(args, torch.float32, f"dilation {dilation}")


def test_bands_give_the_same_bits_run_to_run():
    # One tall image over two threads goes in two bands, whose pool sums are added in band
    # order.
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 16, 57, 43, generator=gen).contiguous(memory_format=torch.channels_last)
    ew, w = torch.randn(40, 16, generator=gen) / 4, torch.randn(40, 1, 5, 5, generator=gen)
    se = _se_weights(40, 8, torch.float32, gen)
    args = (x, ew, None, "hardswish", w, None, [2, 2], [2, 2], [1, 1], "relu", *se, "relu",
            "hardsigmoid")
    first, second = results_at_thread_counts(lambda: _op(*args), (2, 2))
    assert torch.equal(first, second)
    assert_close_to_reference(first, _expected(args), FORWARD_TOL[torch.float32], "bands")


@pytest.mark.parametrize("e_act", ACTIVATIONS)
def test_nonfinite_inputs_propagate_as_in_the_reference(e_act):
    # NaN and +-inf in x: the same outputs come out NaN, +inf and -inf as in float64.
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 6, 11, 9, generator=gen)
    flat = x.view(-1)
    for i, value in enumerate((float("nan"), float("inf"), float("-inf"))):
        flat[int(torch.randint(flat.numel(), (1,), generator=gen)) - i] = value
    x = x.contiguous(memory_format=torch.channels_last)
    ew, w = torch.randn(20, 6, generator=gen), torch.randn(20, 1, 3, 3, generator=gen)
    args = (x, ew, None, e_act, w, None, [1, 1], [1, 1], [1, 1], "none", None, None, None,
            None, "relu", "sigmoid")
    out = _op(*args).double()
    ref = _reference(x, ew, None, e_act, w, None, 1, 1, 1, "none", None, None, None, None,
                     "relu", "sigmoid")
    for name, test in (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
        assert torch.equal(test(out), test(ref)), f"{e_act}: {name} places differ"
    finite = torch.isfinite(ref)
    assert finite.any()
    assert_close_to_reference(out[finite], ref[finite], FORWARD_TOL[torch.float32], e_act)


def test_empty_batch_gives_an_empty_output():
    x = torch.randn(0, 8, 9, 9).contiguous(memory_format=torch.channels_last)
    out = _op(x, torch.randn(16, 8), None, "relu", torch.randn(16, 1, 3, 3), None, [2, 2],
              [1, 1], [1, 1], "relu", None, None, None, None, "relu", "sigmoid")
    assert out.shape == (0, 16, 5, 5)


def _good_args():
    return {"x": torch.randn(2, 8, 9, 9), "ew": torch.randn(16, 8, 1, 1), "eb": torch.randn(16),
            "e_act": "silu", "w": torch.randn(16, 1, 3, 3), "b": torch.randn(16),
            "stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "act": "relu",
            "w1": torch.randn(4, 16), "b1": torch.randn(4), "w2": torch.randn(16, 4),
            "b2": torch.randn(16), "se_act": "relu", "gate": "sigmoid"}


@pytest.mark.parametrize("bad, message", [
    ({"x": torch.randn(8, 9, 9)}, "x must have rank 4"),
    ({"x": torch.randint(0, 5, (2, 8, 9, 9))}, "x must be float16, bfloat16, float32"),
    ({"ew": torch.randn(16, 7, 1, 1)}, "expand_weight must have shape"),
    ({"ew": torch.randn(16, 8, 3, 3)}, "expand_weight must have shape"),
    ({"ew": torch.randn(16, 8).double()}, "expand_weight must match x's dtype"),
    ({"ew": torch.randn(16, 8, device="meta")}, "expand_weight must match x's dtype and device"),
    ({"eb": torch.randn(16).double()}, "expand_bias must match x's dtype"),
    ({"eb": torch.randn(15)}, "expand_bias must have shape"),
    ({"e_act": "gelu"}, "expand_activation must be none, relu, relu6, hardswish or silu"),
    ({"w": torch.randn(8, 1, 3, 3)}, "weight must have shape (C, 1, kh, kw) with C=16"),
    ({"b": torch.randn(8)}, "bias must have shape"),
    ({"stride": [0, 1]}, "stride must be >= 1"),
    ({"padding": [-1, 0]}, "padding must be >= 0"),
    ({"act": "tanh"}, "activation must be none, relu, relu6, hardswish or silu, got tanh"),
    ({"w1": torch.randn(4, 8)}, "w_reduce must have shape"),
    ({"w2": None}, "give both w_reduce and w_expand"),
    ({"w1": None, "w2": None}, "b_reduce and b_expand need w_reduce"),
    ({"se_act": "gelu"}, "se_activation must be relu or silu"),
    ({"gate": "tanh"}, "gate must be sigmoid or hardsigmoid"),
    ({"w": torch.randn(16, 1, 13, 13)}, "kernel is larger than the padded input"),
])
def test_bad_inputs_raise_clear_errors(bad, message):
    args = _good_args()
    args.update(bad)
    with pytest.raises(RuntimeError, match="expand_depthwise: .*" + re.escape(message)):
        _op(*args.values())


AVX2_CHECK = r"""
import random, sys
import torch
sys.path.insert(0, TESTS)
import test_expand_depthwise as t

for seed in range(12):
    args = t._case(random.Random(seed), torch.float32, "channels_last", batch=seed % 5 + 1)
    t._check(args, torch.float32, f"seed {seed}")
t.test_input_channel_chunks_match_float64_reference(130, 1)
t.test_channel_groups_and_bands_match_float64_reference((1, 16, 7, 7), 100, 2, True)
t.test_channel_groups_and_bands_match_float64_reference((1, 8, 9, 9), 17, 4, False)
print(torch.backends.cpu.get_cpu_capability())
"""


def test_avx2_kernels_match_float64_reference():
    # Where the build has AVX-512 copies, the rest of this file runs them on an AVX-512 CPU;
    # ATEN_CPU_CAPABILITY=avx2 sends a process to the AVX2 build (3-vector expansion blocks).
    import mobilefuse

    if not mobilefuse.build_info().get("avx512_kernels"):
        pytest.skip("built without the AVX-512 kernels: the rest of this file runs AVX2")
    code = AVX2_CHECK.replace("TESTS", repr(str(Path(__file__).parent)))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "AVX2"
