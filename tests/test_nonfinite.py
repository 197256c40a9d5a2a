"""NaN and +-inf inputs propagate exactly as the reference propagates them, on every backend:
the same elements come out NaN, +inf and -inf, and the finite ones agree."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import (
    BACKEND_CASES,
    FORWARD_TOL,
    assert_close_to_reference,
    on_backend,
    randomize_norms,
)
from torch import nn

import mobilefuse
from mobilefuse import reference
from mobilefuse.models.shufflenet import ShuffleV2Unit

ACTIVATIONS = [None, "relu", "relu6", "hardswish", "silu"]
# numpy under the Triton interpreter says so when inf - inf makes the NaN it should make.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


def _with_nonfinite(shape: tuple[int, ...], device: str, seed: int) -> torch.Tensor:
    """Random values with a few NaN, +inf and -inf at random places (one channel untouched,
    so that reductions over a channel stay finite somewhere)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * 2
    flat = x.view(-1)
    places = torch.randperm(flat.numel() // 2, generator=gen)[:6]
    for i, value in enumerate((float("nan"), float("inf"), float("-inf")) * 2):
        flat[places[i]] = value
    return x.to(device)


def _assert_same_nonfinite(out: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    out, ref = out.double(), ref.double()
    for name, test in (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
        got, expected = test(out), test(ref)
        assert torch.equal(got, expected), (
            f"{what}: {name} at {int(got.sum())} places, the reference at {int(expected.sum())}")
    finite = torch.isfinite(ref)
    assert finite.any(), f"{what}: the reference has no finite value left to compare"
    assert_close_to_reference(out[finite], ref[finite], FORWARD_TOL[torch.float32], what)


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
@pytest.mark.parametrize("name", ["hardswish", "hardsigmoid"])
def test_activations(backend, device, name):
    x = _with_nonfinite((3, 5, 7), device, 0)
    with on_backend(backend):
        out = getattr(mobilefuse.ops, name)(x)
    _assert_same_nonfinite(out, getattr(reference, name)(x.double()), name)


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
def test_channel_shuffle_moves_nonfinite_values(backend, device):
    x = _with_nonfinite((2, 6, 4, 3), device, 1)
    with on_backend(backend):
        out = mobilefuse.ops.channel_shuffle(x, 3)
    _assert_same_nonfinite(out, reference.channel_shuffle(x.double(), 3), "channel_shuffle")


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_depthwise_conv2d(backend, device, activation, layout):
    x = _with_nonfinite((2, 8, 9, 7), device, 2)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(8, 1, 3, 3, generator=torch.Generator().manual_seed(3)).to(device)
    with on_backend(backend):
        out = mobilefuse.ops.depthwise_conv2d(x, w, None, 1, 1, activation=activation)
    ref = reference.depthwise_conv2d(x.double(), w.double(), None, 1, 1, 1, activation)
    _assert_same_nonfinite(out, ref, f"depthwise {activation} {layout}")


# Pre-activations the epilogue's clamps meet: NaN, the infinities, the kinks and far values.
EPILOGUE_VALUES = (float("nan"), float("inf"), float("-inf"), -3.0, 3.0, 0.0, -0.0, 6.0,
                   -1e30, 1e30, 2.5, -2.5)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("kernel,stride", [(3, 1), (5, 2), (3, 2)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_depthwise_epilogue_special_values(activation, kernel, stride, layout):
    # Zero weights leave each pre-activation equal to its channel's bias, so the activation
    # meets exactly these values; 19 channels fill whole vectors and a partial one.
    channels = 19
    bias = torch.tensor([EPILOGUE_VALUES[c % len(EPILOGUE_VALUES)] for c in range(channels)])
    x = torch.randn(2, channels, 11, 9)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.zeros(channels, 1, kernel, kernel)
    out = mobilefuse.ops.depthwise_conv2d(x, w, bias, stride, kernel // 2, activation=activation)
    ref = reference.depthwise_conv2d(x.double(), w.double(), bias.double(), stride,
                                     kernel // 2, 1, activation)
    _assert_same_nonfinite(out, ref, f"depthwise epilogue {activation} k{kernel} s{stride}")


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
@pytest.mark.parametrize("activation", ["relu", "silu"])
@pytest.mark.parametrize("gate", ["sigmoid", "hardsigmoid"])
def test_squeeze_excite(backend, device, activation, gate):
    # A NaN or inf in a channel poisons that channel's mean, hence every gate: compare with
    # the non-finite values in the first sample only, so the second stays finite.
    x = torch.randn(2, 6, 5, 5).to(device)
    x[0] = _with_nonfinite((6, 5, 5), device, 4)
    gen = torch.Generator().manual_seed(5)
    w1, w2 = (torch.randn(3, 6, generator=gen).to(device),
              torch.randn(6, 3, generator=gen).to(device))
    with on_backend(backend):
        out = mobilefuse.ops.squeeze_excite(x, w1, None, w2, None, activation, gate)
    ref = reference.squeeze_excite(x.double(), w1.double(), None, w2.double(), None,
                                   activation, gate)
    _assert_same_nonfinite(out, ref, f"squeeze_excite {activation} {gate}")


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
def test_inverted_residual(backend, device):
    x = torch.randn(2, 4, 6, 6).to(device)
    x[0] = _with_nonfinite((4, 6, 6), device, 6)
    gen = torch.Generator().manual_seed(7)
    weights = [torch.randn(*s, generator=gen).to(device) * 0.3
               for s in ((8, 4), (8, 1, 3, 3), (4, 8))]
    with on_backend(backend):
        out = mobilefuse.ops.inverted_residual(x, weights[0], None, weights[1], None, weights[2],
                                               None, activation="hardswish")
    ref = reference.inverted_residual(x.double(), weights[0].double(), None, weights[1].double(),
                                      None, weights[2].double(), None, None, 1, 1, 1,
                                      "hardswish", residual=True)
    _assert_same_nonfinite(out, ref, "inverted_residual")


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_concat_shuffle_moves_nonfinite_values(backend, device, layout):
    a = _with_nonfinite((2, 5, 4, 3), device, 8).contiguous(memory_format=layout)
    b = _with_nonfinite((2, 5, 4, 3), device, 9).contiguous(memory_format=layout)
    with on_backend(backend):
        out = mobilefuse.ops.concat_shuffle(a, b)
    _assert_same_nonfinite(out, reference.concat_shuffle(a.double(), b.double()),
                           "concat_shuffle")


def test_concat_shuffle_chunks_move_nonfinite_values():
    a, b = (_with_nonfinite((2, 7, 3, 5), "cpu", seed).contiguous(
        memory_format=torch.channels_last) for seed in (10, 11))
    first, second = torch.ops.mobilefuse.concat_shuffle_chunks(a, b)
    want = reference.concat_shuffle(a.double(), b.double()).chunk(2, 1)
    _assert_same_nonfinite(first, want[0], "concat_shuffle_chunks, first half")
    _assert_same_nonfinite(second, want[1], "concat_shuffle_chunks, second half")


@pytest.mark.parametrize("units", ["unit", "stage"])
def test_shufflenet_units_propagate_nonfinite_values(units):
    """Accelerated ShuffleNetV2 units (``ShuffleUnit``) and a stage of them (``ShuffleStage``,
    its halves handed on through ``concat_shuffle_chunks``) in inference: the non-finite values
    of the first image spread through the convolutions to the same places as in float64, and
    the second image stays finite."""
    torch.manual_seed(12)
    if units == "unit":
        plain = nn.Sequential(ShuffleV2Unit(16, 16, 1, nn.BatchNorm2d, nn.ReLU))
    else:
        plain = nn.Sequential(ShuffleV2Unit(8, 16, 2, nn.BatchNorm2d, nn.ReLU),
                              *(ShuffleV2Unit(16, 16, 1, nn.BatchNorm2d, nn.ReLU)
                                for _ in range(2)))
    plain.eval()
    randomize_norms(plain)
    fast = mobilefuse.accelerate(plain)
    expected_type = mobilefuse.nn.ShuffleUnit if units == "unit" else mobilefuse.nn.ShuffleStage
    swapped = fast[0] if units == "unit" else fast
    assert type(swapped) is expected_type, type(swapped)
    x = torch.randn(2, 16 if units == "unit" else 8, 11, 9)
    x[0] = _with_nonfinite(tuple(x.shape[1:]), "cpu", 13)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = fast(x)
        ref = copy.deepcopy(plain).double()(x.double())
    assert torch.isfinite(out[1]).all()
    _assert_same_nonfinite(out, ref, f"ShuffleNetV2 {units}")
