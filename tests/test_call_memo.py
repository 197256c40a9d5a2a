"""Folded convolutions replay their last built inference call (mobilefuse._call_memo) and build
it again whenever what it depends on changes: the numbers always match a fresh build and the
float64 model."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from conftest import FORWARD_TOL, assert_close_to_reference, randomize_norms
from torch import nn

import mobilefuse
from mobilefuse import _fusion, _onednn, ops

CL = torch.channels_last


def _model() -> nn.Sequential:
    """1x1 conv + BN + hard-swish, depthwise 3x3 + BN + ReLU6, a strided 3x3 conv + BN: one
    of each folded convolution (FoldedConv2d pointwise and spatial, DepthwiseConv2d)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(5, 12, 1, bias=False), nn.BatchNorm2d(12), nn.Hardswish(),
        nn.Conv2d(12, 12, 3, padding=1, groups=12, bias=False), nn.BatchNorm2d(12), nn.ReLU6(),
        nn.Conv2d(12, 7, 3, stride=2, padding=1), nn.BatchNorm2d(7))
    randomize_norms(model)
    return model.eval()


@pytest.fixture
def builds(monkeypatch) -> list[str]:
    """The names of the calls built (oneDNN epilogue or depthwise route), one per build."""
    built: list[str] = []
    epilogue, depthwise = _onednn.epilogue_call, ops.depthwise_call

    def count_epilogue(*args, **kwargs):
        built.append("epilogue")
        return epilogue(*args, **kwargs)

    def count_depthwise(*args, **kwargs):
        built.append("depthwise")
        return depthwise(*args, **kwargs)

    monkeypatch.setattr(_fusion, "epilogue_call", count_epilogue)
    monkeypatch.setattr(ops, "depthwise_call", count_depthwise)
    return built


def _check(out: torch.Tensor, fast: nn.Module, x: torch.Tensor) -> None:
    """``out`` against the accelerated model's original modules in float64."""
    with torch.no_grad():
        ref = mobilefuse.restore(copy.deepcopy(fast)).double()(x.double())
    assert_close_to_reference(out, ref, FORWARD_TOL[x.dtype], "memoized call")


def test_second_call_replays_without_building(builds):
    fast = mobilefuse.accelerate(_model())
    x = torch.randn(2, 5, 9, 7).to(memory_format=CL)
    with torch.no_grad():
        first = fast(x)
        assert builds == ["epilogue", "depthwise", "epilogue"]
        second = fast(x)
        third = fast(x.clone())  # another tensor of the same shape and layout
    assert builds == ["epilogue", "depthwise", "epilogue"]
    assert torch.equal(first, second) and torch.equal(first, third)
    _check(second, fast, x)


def _rebuilds(fast: nn.Module, x: torch.Tensor, builds: list[str]) -> int:
    before = len(builds)
    with torch.no_grad():
        fast(x)
    return len(builds) - before


@pytest.mark.parametrize("change", ["shape", "layout", "batchnorm", "conv_weight", "backend",
                                    "onednn"])
def test_a_change_builds_again(builds, change):
    fast = mobilefuse.accelerate(_model())
    x = torch.randn(2, 5, 9, 7).to(memory_format=CL)
    onednn = torch.backends.mkldnn.enabled
    with torch.no_grad():
        fast(x)
        assert _rebuilds(fast, x, builds) == 0
        if change == "shape":
            x = torch.randn(3, 5, 6, 11).to(memory_format=CL)
        elif change == "layout":
            x = x.contiguous()
        elif change == "batchnorm":  # in place, as load_state_dict does: the fold changes
            fast[4].running_var.mul_(2.0)
        elif change == "conv_weight":
            fast[0].weight.add_(0.5)
        elif change == "backend":
            mobilefuse.set_backend("reference")
        elif change == "onednn":
            torch.backends.mkldnn.enabled = False
        try:
            assert _rebuilds(fast, x, builds) > 0
            out = fast(x)
        finally:
            mobilefuse.set_backend("auto")
            torch.backends.mkldnn.enabled = onednn
    _check(out, fast, x)


def test_recording_a_gradient_does_not_replay(builds):
    model = _model()
    fast = mobilefuse.accelerate(model)
    x = torch.randn(2, 5, 9, 7).to(memory_format=CL)
    with torch.no_grad():
        fast(x)
    built = len(builds)
    x.requires_grad_()
    out = fast(x)
    (gx,) = torch.autograd.grad(out.sum(), x)
    assert builds[built:] == ["depthwise"]  # the op's route; the 1x1 calls run F.conv2d
    _check(out.detach(), fast, x.detach())
    x64 = x.detach().double().requires_grad_()
    (g64,) = torch.autograd.grad(copy.deepcopy(model).double()(x64).sum(), x64)
    assert_close_to_reference(gx, g64, FORWARD_TOL[torch.float32], "gradient")


def test_copies_start_without_a_call():
    fast = mobilefuse.accelerate(_model())
    x = torch.randn(1, 5, 8, 8).to(memory_format=CL)
    with torch.no_grad():
        expected = fast(x)
        assert fast[0].fusion.memo._entry is not None
        copies = [copy.deepcopy(fast), pickle.loads(pickle.dumps(fast))]
        for other in copies:
            assert all(m.fusion.memo._entry is None for m in other.modules()
                       if type(m) in (_fusion.FoldedConv2d, mobilefuse.nn.DepthwiseConv2d))
            assert torch.equal(other(x), expected)


def test_inference_mode_weights_are_not_kept():
    with torch.inference_mode():
        model = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1, groups=6), nn.ReLU()).eval()
        fast = mobilefuse.accelerate(model)
        x = torch.randn(2, 6, 5, 5).to(memory_format=CL)
        first = fast(x)
        fast[0].weight.mul_(-1.0)  # no version counter: a kept call could not see this
        second = fast(x)
    assert fast[0].fusion.memo._entry is None
    conv = fast[0]
    ref = torch.relu(torch.nn.functional.conv2d(x.double(), conv.weight.double(),
                                                conv.bias.double(), padding=1, groups=6))
    assert_close_to_reference(second, ref, FORWARD_TOL[torch.float32], "after the change")
    assert not torch.equal(first, second)
