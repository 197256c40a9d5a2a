"""depthwise_conv2d on every backend: values and all three gradients against the float64
reference over random configurations, layouts, fusion, saved tensors, determinism."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    BACKEND_CASES,
    BACKWARD_TOL,
    DTYPES,
    FORWARD_TOL,
    HAS_CUDA,
    assert_close_to_reference,
    make_input,
    on_backend,
    poison_for,
    profiled_calls,
)

import mobilefuse
from mobilefuse import reference

ACTIVATIONS = (None, "relu", "relu6", "hardswish", "silu")
KERNELS = ((3, 3), (5, 5), (7, 7), (1, 1), (1, 3), (3, 1))
LAYOUTS = ("contiguous", "channels_last", "strided")


def _random_config(rng: random.Random, small: bool) -> dict:
    """One random layer: odd sizes, every kernel/stride/padding/dilation/activation/dtype."""
    kh, kw = rng.choice(KERNELS)
    dilation = rng.choice((1, 1, 2))
    stride = rng.choice((1, 2))
    padding = rng.choice((0, 1, 2, 3, "same" if stride == 1 else 1))
    channels = rng.choice((1, 3, 8, 17) if small else (1, 3, 8, 17, 32, 40))
    limit = 9 if small else 15
    span_h, span_w = dilation * (kh - 1) + 1, dilation * (kw - 1) + 1
    pad = 0 if padding == "same" else padding
    height = rng.randint(max(1, span_h - 2 * pad), max(span_h, limit))
    width = rng.randint(max(1, span_w - 2 * pad), max(span_w, limit))
    if padding == "same":
        height, width = max(height, span_h), max(width, span_w)
    return {
        "shape": (rng.choice((1, 2, 3)), channels, height, width), "kernel": (kh, kw),
        "stride": stride, "padding": padding, "dilation": dilation,
        "activation": rng.choice(ACTIVATIONS), "bias": rng.random() < 0.7,
        "dtype": rng.choice(DTYPES), "layout": rng.choice(LAYOUTS),
    }


def _configs(count: int, seed: int, small: bool) -> list[dict]:
    rng = random.Random(seed)
    configs = []
    while len(configs) < count:
        cfg = _random_config(rng, small)
        if cfg["padding"] == "same" and any(
                cfg["dilation"] * (k - 1) % 2 for k in cfg["kernel"]):
            continue  # asymmetric "same": the reference runs it (tested separately)
        configs.append(cfg)
    return configs


def _check(cfg: dict, backend: str, device: str, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    dtype = cfg["dtype"]
    x = make_input(cfg["shape"], dtype, device, cfg["layout"], gen, scale=2.0).requires_grad_()
    channels = cfg["shape"][1]
    weight = (torch.randn(channels, 1, *cfg["kernel"], generator=gen) * 0.5).to(device, dtype)
    weight.requires_grad_()
    bias = torch.randn(channels, generator=gen).to(device, dtype).requires_grad_() if cfg[
        "bias"] else None
    args = (cfg["stride"], cfg["padding"], cfg["dilation"])
    poison_for(x)
    with on_backend(backend):
        out = mobilefuse.ops.depthwise_conv2d(x, weight, bias, *args, activation=cfg["activation"])
    leaves64 = [t.detach().double().requires_grad_() for t in (x, weight, bias) if t is not None]
    ref = reference.depthwise_conv2d(leaves64[0], leaves64[1],
                                     leaves64[2] if bias is not None else None, *args,
                                     cfg["activation"])
    what = f"{cfg}"
    assert_close_to_reference(out, ref, FORWARD_TOL[dtype], f"forward {what}")
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    if cfg["layout"] == "channels_last" and channels_last:
        assert out.is_contiguous(memory_format=torch.channels_last), out.stride()
    grad = torch.randn(ref.shape, generator=gen).to(device)
    leaves = [t for t in (x, weight, bias) if t is not None]
    grads = torch.autograd.grad(out, leaves, grad.to(dtype))
    refs = torch.autograd.grad(ref, leaves64, grad.double())
    for name, got, expected in zip(("grad x", "grad weight", "grad bias"), grads, refs,
                                    strict=False):
        assert got.dtype == dtype
        assert_close_to_reference(got, expected, BACKWARD_TOL[dtype], f"{name} {what}")


CPU_CONFIGS = _configs(120, seed=1, small=False)
INTERPRETER_CONFIGS = _configs(24, seed=2, small=True)


# NCHW planes past 2^17 pixels take the CPU plane kernels instead of the channel blocks.
LARGE_PLANE_CONFIGS = [
    {"shape": (1, 3, 363, 365), "kernel": (3, 3), "stride": 2, "padding": 1, "dilation": 1,
     "activation": "relu6", "bias": True, "dtype": torch.float32, "layout": "contiguous"},
    {"shape": (2, 2, 371, 359), "kernel": (5, 5), "stride": 1, "padding": 2, "dilation": 1,
     "activation": "silu", "bias": False, "dtype": torch.bfloat16, "layout": "contiguous"},
]


# channels_last rows wide enough that the CPU kernels split the channels into several tiles
# (kh rows of a tile, and the backward's dz ring, within 256 KB: the 7x7 and 5x5 stride-2
# cases of 70 and 150 channels; the forward of 5x5 at stride 1 within 32 KB: the last two;
# the others when tiles were sized for L1), the last one partial; batch 1 splits rows into
# bands.
TILED_CONFIGS = [
    {"shape": (1, 37, 23, 61), "kernel": (3, 3), "stride": 1, "padding": 1, "dilation": 1,
     "activation": "relu6", "bias": True, "dtype": torch.float32, "layout": "channels_last"},
    {"shape": (2, 50, 17, 45), "kernel": (5, 5), "stride": 2, "padding": 2, "dilation": 1,
     "activation": "silu", "bias": True, "dtype": torch.bfloat16, "layout": "channels_last"},
    {"shape": (1, 21, 12, 130), "kernel": (7, 7), "stride": 1, "padding": 3, "dilation": 1,
     "activation": "hardswish", "bias": False, "dtype": torch.float32,
     "layout": "channels_last"},
    {"shape": (3, 24, 9, 200), "kernel": (3, 3), "stride": 2, "padding": 0, "dilation": 1,
     "activation": None, "bias": True, "dtype": torch.float16, "layout": "channels_last"},
    {"shape": (1, 33, 10, 70), "kernel": (3, 3), "stride": 1, "padding": 2, "dilation": 2,
     "activation": "relu", "bias": True, "dtype": torch.float64, "layout": "channels_last"},
    {"shape": (1, 70, 9, 130), "kernel": (7, 7), "stride": 1, "padding": 3, "dilation": 1,
     "activation": "silu", "bias": True, "dtype": torch.float32, "layout": "channels_last"},
    {"shape": (2, 150, 6, 160), "kernel": (5, 5), "stride": 2, "padding": 2, "dilation": 1,
     "activation": "relu6", "bias": False, "dtype": torch.float16, "layout": "channels_last"},
    {"shape": (2, 200, 11, 28), "kernel": (5, 5), "stride": 1, "padding": 2, "dilation": 1,
     "activation": "relu6", "bias": True, "dtype": torch.float32, "layout": "channels_last"},
    {"shape": (1, 101, 7, 19), "kernel": (5, 5), "stride": 1, "padding": 1, "dilation": 1,
     "activation": "hardswish", "bias": False, "dtype": torch.bfloat16,
     "layout": "channels_last"},
]


def _channels_last_config(shape: tuple[int, int, int, int], k: int, stride: int, padding,
                          activation: str | None, dtype: torch.dtype, bias: bool) -> dict:
    return {"shape": shape, "kernel": (k, k), "stride": stride, "padding": padding,
            "dilation": 1, "activation": activation, "bias": bias, "dtype": dtype,
            "layout": "channels_last"}


def _pair_config(shape: tuple[int, int, int, int], k: int, activation: str | None,
                 dtype: torch.dtype = torch.float32, bias: bool = True) -> dict:
    return _channels_last_config(shape, k, 2, k // 2, activation, dtype, bias)


# channels_last grad_x at stride 2 with padding k // 2 walks the input pixels in pairs: odd
# and even widths (a last pixel without its pair), rows shorter than one group of pairs,
# pair counts that end in groups of 2 and 1, partial channel vectors.
STRIDE2_PAIR_CONFIGS = [
    _pair_config((2, 17, 7, 7), 3, "relu6"),
    _pair_config((1, 40, 6, 14), 3, "hardswish"),
    _pair_config((2, 17, 5, 15), 5, "silu"),
    _pair_config((1, 33, 9, 1), 3, None),
    _pair_config((1, 16, 4, 2), 5, "relu", bias=False),
    _pair_config((3, 8, 11, 29), 3, "relu", bias=False),
    _pair_config((1, 24, 10, 56), 3, "relu6"),
    _pair_config((1, 19, 8, 3), 5, "hardswish"),
    _pair_config((2, 17, 6, 11), 3, "relu6", dtype=torch.float16),
]



def _row_pair_config(shape: tuple[int, int, int, int], padding, activation: str | None,
                     dtype: torch.dtype = torch.float32, bias: bool = True,
                     stride: int = 1, kernel: int = 5, layout: str = "channels_last") -> dict:
    config = _channels_last_config(shape, kernel, stride, padding, activation, dtype, bias)
    return {**config, "layout": layout}


# The forward of 3x3, 5x5 and 7x7 at stride 1 and 2 computes two output rows per pass: odd
# output heights (a last row alone), a single output row, batch 1 (bands of rows split the
# image, some of odd length), no padding (no missing input row) and padding past the
# kernel's reach (rows of zeros above and below), rows of 7 and 14 pixels (groups of 7 at
# stride 1, of 4, 2 and 1 at stride 2), partial vectors.
ROW_PAIR_CONFIGS = [
    _row_pair_config((2, 17, 13, 14), 2, "silu", stride=2),
    _row_pair_config((1, 40, 14, 14), 2, "hardswish", stride=2),
    _row_pair_config((1, 24, 12, 9), 0, "relu", bias=False, stride=2),
    _row_pair_config((3, 19, 6, 15), (3, 1), None, stride=2),
    _row_pair_config((1, 16, 11, 28), 2, "relu6", dtype=torch.bfloat16, stride=2),
    _row_pair_config((2, 17, 9, 9), 2, "relu6"),
    _row_pair_config((1, 40, 14, 14), 2, "hardswish"),
    _row_pair_config((1, 33, 5, 12), 0, "silu"),
    _row_pair_config((3, 16, 6, 7), (0, 2), None, bias=False),
    _row_pair_config((1, 21, 4, 30), 3, "relu"),
    _row_pair_config((1, 8, 15, 28), 2, "relu6", dtype=torch.bfloat16),
    _row_pair_config((2, 19, 8, 5), (1, 2), "silu", dtype=torch.float16),
    _row_pair_config((2, 17, 9, 14), 1, "relu6", kernel=3),
    _row_pair_config((1, 40, 7, 7), 1, "hardswish", kernel=3, stride=2),
    _row_pair_config((3, 19, 6, 15), 0, None, bias=False, kernel=3),
    _row_pair_config((1, 24, 5, 28), (2, 1), "silu", kernel=3, stride=2),
    _row_pair_config((1, 33, 12, 9), 1, "relu", dtype=torch.bfloat16, kernel=3),
    _row_pair_config((2, 21, 11, 13), 1, "relu6", kernel=3, layout="contiguous"),
    _row_pair_config((1, 19, 9, 10), 2, "silu", stride=2, layout="contiguous"),
    # grad_x at stride 1 in row pairs: heights 1 and 2, padding past the kernel's reach,
    # batch 1 (bands of one or two rows), a row stride of 2 with column stride 1 (single rows).
    _row_pair_config((1, 18, 1, 9), 1, "hardswish", kernel=3),
    _row_pair_config((2, 17, 2, 6), 1, None, kernel=3),
    _row_pair_config((1, 20, 11, 8), 2, "relu6", kernel=3),
    _row_pair_config((1, 16, 17, 10), 3, "silu"),
    _row_pair_config((2, 19, 9, 8), 1, "relu", kernel=3, layout="contiguous"),
    {**_row_pair_config((1, 17, 12, 9), 1, "relu6", kernel=3), "stride": (2, 1)},
    # Channel tiles whose three rows fit in 32 KB (8 and 6 vectors), the last one partial.
    _row_pair_config((1, 150, 9, 20), 1, "relu6", kernel=3),
    _row_pair_config((2, 100, 11, 25), 1, "hardswish", kernel=3, stride=2),
    # 7x7 (compile-time like 3x3 and 5x5): rows of 7, 14 and 56 pixels and odd widths, maps
    # smaller than the kernel, no padding, padding past its reach, both strides and layouts.
    _row_pair_config((2, 17, 7, 7), 3, None, kernel=7),
    _row_pair_config((1, 40, 14, 14), 3, "relu6", kernel=7),
    _row_pair_config((1, 24, 9, 56), 3, "silu", kernel=7, bias=False),
    _row_pair_config((1, 19, 11, 13), 0, "hardswish", kernel=7),
    _row_pair_config((2, 16, 3, 5), (4, 5), "relu", kernel=7),
    _row_pair_config((1, 33, 15, 14), 3, "relu6", kernel=7, stride=2),
    _row_pair_config((2, 17, 10, 9), (2, 3), None, kernel=7, stride=2),
    _row_pair_config((1, 96, 8, 8), 3, None, kernel=7, layout="contiguous"),
    _row_pair_config((1, 21, 13, 12), 3, "silu", kernel=7, stride=2, layout="contiguous"),
    _row_pair_config((1, 16, 9, 14), 3, "hardswish", dtype=torch.bfloat16, kernel=7),
    _row_pair_config((2, 19, 8, 11), 3, "relu", dtype=torch.float16, kernel=7, stride=2),
]

# The widest layers of the networks served (672-1280 channels at 7x7 and 14x14) and
# odd widths near them, on small maps down to 1x1, in every layout and dtype.
WIDE_CONFIGS = [
    _channels_last_config((1, 960, 7, 7), 5, 1, 2, "hardswish", torch.float32, True),
    {**_channels_last_config((2, 960, 1, 1), 3, 1, 1, "relu", torch.float32, False),
     "layout": "contiguous"},
    _channels_last_config((1, 672, 14, 13), 5, 2, 2, "silu", torch.bfloat16, True),
    {**_channels_last_config((1, 960, 3, 5), 3, 2, 1, "relu6", torch.float16, True),
     "layout": "contiguous"},
    {**_channels_last_config((1, 577, 4, 4), 7, 1, 3, None, torch.float64, True),
     "layout": "strided"},
    _channels_last_config((2, 1280, 2, 3), 3, 1, 1, "silu", torch.float32, True),
]

CPU_CONFIG_SETS = {"random": CPU_CONFIGS, "large_nchw_planes": LARGE_PLANE_CONFIGS,
                   "channel_tiles": TILED_CONFIGS, "stride2_pairs": STRIDE2_PAIR_CONFIGS,
                   "row_pairs": ROW_PAIR_CONFIGS, "wide": WIDE_CONFIGS}


@pytest.mark.parametrize("config_set,index", [
    (name, i) for name, configs in CPU_CONFIG_SETS.items() for i in range(len(configs))])
def test_cpu_matches_reference(config_set, index):
    _check(CPU_CONFIG_SETS[config_set][index], "cpu", "cpu", index)


@pytest.mark.parametrize("index", range(len(INTERPRETER_CONFIGS)))
def test_triton_interpreter_matches_reference(index):
    _check(INTERPRETER_CONFIGS[index], "triton", "cpu", index)


@pytest.mark.parametrize("channels_last,cap", [(True, 64), (False, 16)])
def test_triton_tiles_to_tune_fit_the_layout_and_the_problem(channels_last, cap):
    """The tiles Triton's autotuner times on a GPU: powers of two, channel blocks within the
    layout's cap and the channels, pixel blocks within the pixels, several for a real layer."""
    pytest.importorskip("triton")
    from mobilefuse.kernels import depthwise_conv as kernels

    def fits(pixels: int, channels: int) -> list:
        kept = kernels.tuned_tiles(kernels._TUNED_CONFIGS, {"P": pixels, "C": channels},
                                   CHANNELS_LAST=channels_last)
        assert kept, (pixels, channels)
        for config in kept:
            block_p, block_c = config.kwargs["BLOCK_P"], config.kwargs["BLOCK_C"]
            assert block_p & (block_p - 1) == 0 and block_c & (block_c - 1) == 0, config
            assert block_c <= cap and block_c <= max(2, 1 << (channels - 1).bit_length())
            assert block_p <= max(2, 1 << (pixels - 1).bit_length())
        return kept

    for pixels, channels in ((1, 1), (5, 3), (49, 960), (3136, 17)):
        fits(pixels, channels)
    assert len(fits(8 * 56 * 56, 144)) >= 3
    # Forward and input gradient are tuned; the weight gradient's tile is fixed (its partial
    # sums follow the tile, and its bits must not depend on a timing).
    assert kernels._depthwise_conv2d_forward_kernel.keys == kernels._TUNING_KEY
    assert kernels._depthwise_conv2d_backward_input_kernel.keys == kernels._TUNING_KEY
    assert not hasattr(kernels._depthwise_conv2d_backward_weight_kernel, "keys")


@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("index", range(len(CPU_CONFIGS)))
def test_gpu_matches_reference(backend, index):
    _check(CPU_CONFIGS[index], backend, "cuda", index)


# (kernel, stride, dilation, takes oneDNN's forward without a gradient): more than 25 taps in
# the run-time-sized loop does; 7x7 (compile-time) and small or thin kernels do not.
VENDOR_CASES = [((9, 9), 1, 1, True), ((11, 11), 2, 1, True), ((5, 7), 1, 1, True),
                ((7, 7), 1, 2, True), ((7, 7), 1, 1, False), ((7, 7), 2, 1, False),
                ((1, 9), 1, 1, False), ((5, 5), 1, 3, False)]


@pytest.mark.parametrize("kernel,stride,dilation,vendor", VENDOR_CASES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_large_kernels_take_onednn_forward_only_without_gradient(kernel, stride, dilation,
                                                                  vendor, layout):
    x = make_input((2, 12, 19, 17), torch.float32, "cpu", layout)
    w = torch.randn(12, 1, *kernel) / kernel[0]
    b = torch.randn(12)
    padding = tuple(dilation * (k - 1) // 2 for k in kernel)
    expected = reference.depthwise_conv2d(x.double(), w.double(), b.double(), stride, padding,
                                          dilation, "hardswish")

    def run() -> torch.Tensor:
        return mobilefuse.ops.depthwise_conv2d(x, w, b, stride, padding, dilation, "hardswish")

    with torch.no_grad():
        assert profiled_calls(run)["aten::conv2d"] == int(vendor)
        out = run()
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    assert out.is_contiguous(memory_format=fmt)
    assert_close_to_reference(out, expected, FORWARD_TOL[torch.float32], "no gradient")
    # Recording a gradient, or with the CPU backend chosen by name: the kernel.
    leaf = x.clone().requires_grad_()
    calls = profiled_calls(lambda: mobilefuse.ops.depthwise_conv2d(
        leaf, w, b, stride, padding, dilation, "hardswish"))
    assert calls["aten::conv2d"] == 0
    with torch.no_grad(), mobilefuse.use_backend("cpu"):
        assert profiled_calls(run)["aten::conv2d"] == 0
        assert_close_to_reference(run(), expected, FORWARD_TOL[torch.float32], "cpu backend")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_silu_is_accurate_per_element_over_the_float_range(layout, dtype):
    # The CPU kernels compute SiLU with their own exponential (exp's under- and overflow
    # included): check it value by value, not only against the largest output as the tolerance
    # table does. A 3x3 kernel that is 1 at its centre and 0 elsewhere passes each input through
    # unchanged as the pre-activation, and its input gradient is SiLU's derivative there.
    gen = torch.Generator().manual_seed(11)
    values = torch.cat([torch.linspace(-100, 100, 8400, dtype=torch.float64),
                        torch.randn(2000, generator=gen, dtype=torch.float64) * 3,
                        torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e30, -1e30, 88.7, -88.7,
                                      87.3, -87.3, 103.9, -103.9], dtype=torch.float64)])
    values = values[torch.randperm(values.numel(), generator=gen)]
    x = values[:2 * 19 * 16 * 17].to(dtype).reshape(2, 19, 16, 17)  # 19: a partial vector
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.zeros(19, 1, 3, 3, dtype=dtype)
    w[:, :, 1, 1] = 1
    x.requires_grad_(True)
    with on_backend("cpu"):
        out = mobilefuse.ops.depthwise_conv2d(x, w, None, 1, 1, activation="silu")
    (grad,) = torch.autograd.grad(out, x, torch.ones_like(out))
    z = x.detach().double()
    sig = torch.sigmoid(z)
    # (what, result, float64 value, bound on |error| / (|value| + floor)): relative to each
    # value down to 1e-6 (SiLU of z < -16 is smaller), and the derivative, which crosses 0,
    # relative to its own range (about 1).
    checks = (("silu", out.detach(), z * sig, 1e-6, 1e-6),
              ("silu'", grad, sig * (1 + z * (1 - sig)), 2e-6, 1.0))
    for name, got, ref, bound, floor in checks:
        got = got.double()
        assert torch.isfinite(got).all(), f"{name} {layout} {dtype}: a non-finite value"
        err = ((got - ref).abs() / (ref.abs() + floor)).max().item()
        bound = 1e-12 if dtype == torch.float64 else bound
        assert err <= bound, f"{name} {layout} {dtype}: relative error {err:.2e} > {bound:.0e}"


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("stride", [1, 2])
def test_gradcheck_float64(backend, device, activation, stride):
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(2, 1, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, device=device, requires_grad=True)

    def fn(x, w, b):
        return mobilefuse.ops.depthwise_conv2d(x, w, b, stride, 1, 1, activation)

    with on_backend(backend):
        assert torch.autograd.gradcheck(fn, (x, w, b), fast_mode=True)


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
@pytest.mark.parametrize("activation", [None, "silu"])
def test_backward_saves_inputs_only(backend, device, activation):
    # The pre-activation is recomputed in backward, never stored.
    x = torch.randn(2, 4, 7, 7, device=device, requires_grad=True)
    w = torch.randn(4, 1, 3, 3, device=device, requires_grad=True)
    b = torch.randn(4, device=device, requires_grad=True)
    saved: list[torch.Tensor] = []
    with on_backend(backend), torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append(t) or t, lambda t: t):
        out = mobilefuse.ops.depthwise_conv2d(x, w, b, 1, 1, activation=activation)
    assert len(saved) == 3 and saved[0] is x and saved[1] is w and saved[2] is b
    out.sum().backward()


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
def test_only_requested_gradients(backend, device):
    x = torch.randn(2, 4, 6, 6, device=device)
    w = torch.randn(4, 1, 3, 3, device=device, requires_grad=True)
    b = torch.randn(4, device=device)
    with on_backend(backend):
        out = mobilefuse.ops.depthwise_conv2d(x, w, b, 1, 1, activation="relu")
    (gw,) = torch.autograd.grad(out.sum(), [w])
    assert gw.shape == w.shape
    op = (torch.ops.mobilefuse.triton_depthwise_conv2d_backward if backend == "triton"
          else torch.ops.mobilefuse.depthwise_conv2d_backward)
    g = torch.randn_like(out)
    gx, gw, gb = op(g, x, w.detach(), b, [1, 1], [1, 1], [1, 1], "relu", [False, True, False])
    assert gx.numel() == 0 and gb.numel() == 0 and gw.shape == w.shape


@pytest.mark.parametrize("stride,kernel,activation", [
    (1, 3, "relu6"), (1, 5, "silu"), (1, 3, None), (2, 3, "hardswish"), (2, 5, "silu"),
    (2, 3, None)])
@pytest.mark.parametrize("mask", [(True, False, False), (False, True, True),
                                  (False, False, True), (True, True, False)])
def test_cpu_channels_last_gradient_subsets(stride, kernel, activation, mask):
    """Each subset of the gradients the CPU backward can be asked for matches the float64
    reference (the channels_last pass skips what is not asked for: the dz ring without grad_x,
    the weight and bias sums without them); the others come back empty."""
    gen = torch.Generator().manual_seed(stride * 10 + kernel)
    x = make_input((2, 21, 13, 15), torch.float32, "cpu", "channels_last", gen)
    w = torch.randn(21, 1, kernel, kernel, generator=gen) * 0.5
    b = torch.randn(21, generator=gen)
    pad = kernel // 2
    out_size = (13 + 2 * pad - kernel) // stride + 1, (15 + 2 * pad - kernel) // stride + 1
    g = torch.randn(2, 21, *out_size, generator=gen).contiguous(
        memory_format=torch.channels_last)
    got = torch.ops.mobilefuse.depthwise_conv2d_backward(
        g, x, w, b, [stride] * 2, [pad] * 2, [1, 1], activation or "none", list(mask))
    leaves = [t.double().requires_grad_() for t in (x, w, b)]
    ref = reference.depthwise_conv2d(*leaves, stride, pad, 1, activation)
    expected = torch.autograd.grad(ref, leaves, g.double())
    for name, asked, result, want in zip(("grad x", "grad weight", "grad bias"), mask, got,
                                         expected, strict=True):
        if not asked:
            assert result.numel() == 0, name
            continue
        assert_close_to_reference(result, want, BACKWARD_TOL[torch.float32],
                                  f"{name} stride={stride} k={kernel} {activation} {mask}")


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_weight_gradient_is_deterministic(backend, device, layout):
    x = make_input((4, 16, 21, 19), torch.float32, device, layout)
    w = torch.randn(16, 1, 3, 3, device=device, requires_grad=True)
    grad = torch.randn(4, 16, 21, 19, device=device)
    results = []
    for _ in range(2):
        with on_backend(backend):
            out = mobilefuse.ops.depthwise_conv2d(x, w, None, 1, 1)
        results.append(torch.autograd.grad(out, [w], grad)[0])
    assert torch.equal(results[0], results[1])


def test_channel_multiplier_and_asymmetric_same_fall_back_to_reference():
    x = torch.randn(2, 3, 8, 8)
    w = torch.randn(6, 1, 3, 3)  # multiplier 2: valid for F.conv2d, no kernel
    with pytest.warns(RuntimeWarning, match="channel multiplier 2"):
        out = mobilefuse.ops.depthwise_conv2d(x, w, None, 1, 1)
    torch.testing.assert_close(out, F.conv2d(x, w, None, 1, 1, groups=3))
    w_even = torch.randn(3, 1, 4, 4)
    with pytest.warns(RuntimeWarning, match="even kernel span"):
        out = mobilefuse.ops.depthwise_conv2d(x, w_even, None, 1, "same")
    torch.testing.assert_close(out, F.conv2d(x, w_even, None, 1, "same", groups=3))


def test_module_is_a_drop_in_conv2d():
    conv = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
    ours = mobilefuse.nn.DepthwiseConv2d(8, 3, stride=2, padding=1)
    ours.load_state_dict(conv.state_dict())
    assert list(ours.state_dict()) == list(conv.state_dict())
    x = torch.randn(2, 8, 11, 9)
    torch.testing.assert_close(ours(x), conv(x), rtol=1e-5, atol=1e-5)
    shared = mobilefuse.nn.DepthwiseConv2d.from_conv(conv, activation="relu6")
    assert shared.weight is conv.weight and shared.bias is conv.bias
    torch.testing.assert_close(shared(x), F.relu6(conv(x)), rtol=1e-5, atol=1e-5)
    assert "activation='relu6'" in repr(shared)
    with pytest.raises(ValueError, match="groups == in_channels"):
        mobilefuse.nn.DepthwiseConv2d.from_conv(torch.nn.Conv2d(8, 8, 3))
