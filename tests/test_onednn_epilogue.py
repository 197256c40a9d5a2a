"""The vendor convolution with its activation and residual add as oneDNN post-ops (CPU
inference), or for few pixel rows as torch.addmm with the activation in place, against the
float64 reference; and the cache of reordered weights."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from conftest import FORWARD_TOL, assert_close_to_reference, profiled_calls
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import mobilefuse
from mobilefuse import _onednn
from mobilefuse.reference import activation as reference_activation

pytestmark = pytest.mark.skipif(not _onednn.ops_present(), reason="torch built without oneDNN")

ACTIVATIONS = [None, "relu", "relu6", "hardswish", "silu"]
CL = torch.channels_last


def _reference(x, weight, bias, stride, padding, groups, activation, residual=None):
    y = F.conv2d(x.double(), weight.double(), None if bias is None else bias.double(), stride,
                 padding, 1, groups)
    y = reference_activation(y, activation)
    return y if residual is None else y + residual.double()


def assert_close_scaled(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    assert_close_to_reference(out, ref, FORWARD_TOL[dtype], "oneDNN epilogue")


def _random(shape: tuple[int, ...], scale: float = 1.0) -> torch.Tensor:
    return torch.randn(shape) * scale


@pytest.fixture(params=["gemm", "onednn"])
def pointwise_route(request, monkeypatch) -> str:
    """Every 1x1 convolution through one route: torch.addmm (any row count) or oneDNN's
    linear op (none)."""
    monkeypatch.setattr(_onednn, "gemm_runs", lambda *_: request.param == "gemm")
    return request.param


# (N, C_in, H, W), C_out, kernel, stride, padding, groups: odd sizes, a 1x1 image, a grouped
# 1x1 (ShuffleNet) and a padded strided 3x3 (a stem).
CASES = [((3, 13, 9, 7), 21, 1, 1, 0, 1), ((1, 40, 1, 1), 8, 1, 1, 0, 1),
         ((2, 12, 5, 11), 18, 1, 1, 0, 3), ((2, 3, 17, 15), 16, 3, 2, 1, 1)]


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_fused_convolution_matches_float64(case, activation, bias, pointwise_route):
    shape, c_out, k, stride, padding, groups = case
    x = _random(shape, 3.0).to(memory_format=CL)
    weight = _random((c_out, shape[1] // groups, k, k))
    b = _random((c_out,)) if bias else None
    with torch.no_grad():
        assert _onednn.serves(x, weight, activation)
        y = _onednn.conv2d_epilogue(x, weight, b, (stride, stride), (padding, padding),
                                    (1, 1), groups, activation)
    assert y.is_contiguous(memory_format=CL) and y.dtype == torch.float32
    assert_close_scaled(y, _reference(x, weight, b, stride, padding, groups, activation),
                        torch.float32)


@pytest.mark.parametrize("shape", [(3, 13, 9, 7), (1, 24, 1, 1), (2, 16, 6, 5)])
def test_residual_add_post_op_matches_float64(shape, pointwise_route):
    x = _random(shape).to(memory_format=CL)
    weight, bias = _random((shape[1], shape[1], 1, 1)), _random((shape[1],))
    residual = _random(shape, 4.0).to(memory_format=CL)
    with torch.no_grad():
        y = _onednn.conv2d_epilogue(x, weight, bias, residual=residual)
    assert y.is_contiguous(memory_format=CL)
    assert_close_scaled(y, _reference(x, weight, bias, 1, 0, 1, None, residual), torch.float32)


def test_residual_add_post_op_of_a_grouped_1x1_matches_float64():
    # A grouped 1x1 (ShuffleNetV1) runs as oneDNN's convolution with its binary add.
    x = _random((2, 12, 5, 7)).to(memory_format=CL)
    weight, bias = _random((12, 4, 1, 1)), _random((12,))
    residual = _random((2, 12, 5, 7), 4.0).to(memory_format=CL)
    with torch.no_grad():
        assert isinstance(_onednn.epilogue_call(x, weight, bias, groups=3), _onednn.SpatialConv)
        y = _onednn.conv2d_epilogue(x, weight, bias, groups=3, residual=residual)
    assert y.is_contiguous(memory_format=CL)
    assert_close_scaled(y, _reference(x, weight, bias, 1, 0, 3, None, residual), torch.float32)


@pytest.mark.parametrize("activation", ["relu6", "silu"])
def test_residual_after_an_activation_is_added_after_it(activation, pointwise_route):
    # oneDNN would add before the activation, so this runs the unfused route.
    x = _random((2, 8, 5, 5)).to(memory_format=CL)
    weight, residual = _random((8, 8, 1, 1)), _random((2, 8, 5, 5), 3.0).to(memory_format=CL)
    with torch.no_grad():
        y = _onednn.conv2d_epilogue(x, weight, None, activation=activation, residual=residual)
    assert_close_scaled(y, _reference(x, weight, None, 1, 0, 1, activation, residual),
                        torch.float32)


def test_reordered_weight_follows_in_place_updates(pointwise_route):
    x = _random((2, 16, 7, 7)).to(memory_format=CL)
    weight = nn.Parameter(_random((24, 16, 1, 1)))
    with torch.no_grad():
        first = _onednn.conv2d_epilogue(x, weight, None)
        assert weight in _onednn._packed
        weight.mul_(-2.0)  # an optimizer step would do the same
        second = _onednn.conv2d_epilogue(x, weight, None)
    assert_close_scaled(second, _reference(x, weight, None, 1, 0, 1, None), torch.float32)
    assert_close_scaled(second, -2.0 * first.double(), torch.float32)


def test_pointwise_runs_as_linear_and_others_as_convolution():
    """1x1 stride-1 convolutions over many pixels are oneDNN linear calls on a weight
    reordered for N*H*W rows; small ones over few pixels, torch.addmm on the transposed weight;
    the rest keep the convolution's reordered weight."""
    x = _random((2, 16, 9, 5)).to(memory_format=CL)
    assert not _onednn.gemm_runs(2 * 9 * 5, 16, 24) and _onednn.gemm_runs(9 * 5, 16, 24)
    pointwise, spatial = _random((24, 16, 1, 1)), _random((24, 16, 3, 3))
    with torch.no_grad():
        calls = profiled_calls(lambda: _onednn.conv2d_epilogue(x, pointwise, None))
        assert calls["mkldnn::_linear_pointwise"] == 1 and calls["aten::mm"] == 0
        _onednn.conv2d_epilogue(x, spatial, None, padding=(1, 1))
        assert set(_onednn._packed[pointwise]) == {"linear"}
        assert _onednn._packed[pointwise]["linear"][0][2:] == (2 * 9 * 5,)
        assert set(_onednn._packed[spatial]) == {"conv"}
        # One image: few rows, the GEMM with the activation after it.
        outs = []
        calls = profiled_calls(lambda: outs.append(_onednn.conv2d_epilogue(
            x[:1], pointwise, None, activation="silu")))
        assert calls["aten::mm"] == 1 and calls["aten::silu_"] == 1
        assert calls["mkldnn::_linear_pointwise"] == 0
        assert set(_onednn._packed[pointwise]) == {"linear", "gemm"}
    assert outs[0].is_contiguous(memory_format=CL)
    assert_close_scaled(outs[0], _reference(x[:1], pointwise, None, 1, 0, 1, "silu"),
                        torch.float32)


@pytest.mark.parametrize("intel", [True, False], ids=["mkl-on-intel", "other-cpu"])
def test_gemm_route_limit_follows_the_cpu(monkeypatch, intel):
    """MKL's GEMM takes products up to 16 M multiply-adds on Intel CPUs, 1 M elsewhere."""
    monkeypatch.setattr(_onednn, "mkl_on_intel", lambda: intel)
    assert _onednn.gemm_runs(49, 64, 64) and _onednn.gemm_runs(196, 128, 32)
    assert _onednn.gemm_runs(49, 160, 960) is intel  # 7.5 M multiply-adds
    assert _onednn.gemm_runs(196, 480, 80) is intel  # 7.5 M, channels shrinking
    assert not _onednn.gemm_runs(196, 80, 480)  # channels growing over 196 rows
    assert not _onednn.gemm_runs(49, 512, 2048)  # 51 M
    assert not _onednn.gemm_runs(392, 64, 32)  # over 256 rows


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="reads Linux's /proc/cpuinfo")
def test_mkl_on_intel_reads_the_cpu_vendor():
    expected = False
    if torch.backends.mkl.is_available():
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            vendors = {line.split(":")[1].strip() for line in cpuinfo
                       if line.startswith("vendor_id")}
        expected = vendors == {"GenuineIntel"}
    assert _onednn.mkl_on_intel() is expected


def test_reordered_weight_follows_the_input_shape(pointwise_route):
    weight = _random((24, 16, 1, 1))
    with torch.no_grad():
        for shape in [(2, 16, 7, 7), (5, 16, 3, 9)]:
            x = _random(shape).to(memory_format=CL)
            y = _onednn.conv2d_epilogue(x, weight, None, activation="relu")
            assert_close_scaled(y, _reference(x, weight, None, 1, 0, 1, "relu"), torch.float32)


def test_inference_tensor_weights_run_unpacked(pointwise_route):
    with torch.inference_mode():
        x = _random((2, 16, 7, 7)).to(memory_format=CL)
        weight = _random((8, 16, 1, 1))
        y = _onednn.conv2d_epilogue(x, weight, None, activation="hardswish")
    assert weight not in _onednn._packed
    assert_close_scaled(y, _reference(x, weight, None, 1, 0, 1, "hardswish"), torch.float32)


@pytest.mark.filterwarnings("ignore:TF32 acceleration")
def test_unfused_routes_give_the_same_numbers_and_layouts():
    x = _random((2, 16, 6, 5))
    weight, bias = _random((8, 16, 1, 1)), _random((8,))
    expected = _reference(x, weight, bias, 1, 0, 1, "relu6")
    with torch.no_grad():
        assert not _onednn.serves(x, weight, "relu6")  # NCHW
        y = _onednn.conv2d_epilogue(x, weight, bias, activation="relu6")
        assert y.is_contiguous()
        assert_close_scaled(y, expected, torch.float32)
        x_cl = x.to(memory_format=CL)
        with torch.backends.mkldnn.flags(enabled=False):
            assert not _onednn.serves(x_cl, weight, "relu6")
            assert_close_scaled(_onednn.conv2d_epilogue(x_cl, weight, bias, activation="relu6"),
                                expected, torch.float32)
        assert not _onednn.serves(x_cl.double(), weight.double(), "relu6")
    # With gradients recorded the autograd route runs, and differentiates.
    x_cl = x.to(memory_format=CL).requires_grad_()
    assert not _onednn.serves(x_cl, weight, "relu6")
    y = _onednn.conv2d_epilogue(x_cl, weight, bias, activation="relu6")
    assert_close_scaled(y.detach(), expected, torch.float32)
    y.sum().backward()
    assert x_cl.grad is not None and torch.isfinite(x_cl.grad).all()


def test_accelerated_block_in_inference_mode_packs_its_folded_weights():
    block = mobilefuse.models.create_model("mobilenet_v3_large").features[4].eval()
    x = _random((2, 24, 11, 9)).to(memory_format=CL)
    with torch.no_grad():
        expected = block.double()(x.double())
    block.float()
    fast = mobilefuse.accelerate(block)
    before = len(_onednn._packed)
    with torch.inference_mode():
        y = fast(x)
        assert len(_onednn._packed) > before  # the folded 1x1 weights were reordered once
        again = fast(x)
    assert_close_scaled(y, expected, torch.float32)
    assert torch.equal(y, again)


@pytest.mark.parametrize("index", [4, 5])  # SE without and with the residual add
def test_flop_counter_counts_the_inference_route_as_eager(index):
    block = mobilefuse.models.create_model("mobilenet_v3_large").features[index].eval()
    x = _random((2, block.block[0][0].in_channels, 9, 11)).to(memory_format=CL)

    def flops(module: nn.Module) -> int:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(x)
        return counter.get_total_flops()

    eager = flops(block)
    assert eager > 0 and flops(mobilefuse.accelerate(block)) == eager
