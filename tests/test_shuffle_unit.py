"""mobilefuse.nn.ShuffleUnit: the drop-in ShuffleNetV2 unit, and accelerate() putting it in
place of the zoo's units (torchvision's are covered by test_accelerate_vision.py)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import (
    FORWARD_TOL,
    assert_close_to_reference,
    assert_step_matches_float64,
    randomize_norms,
)
from torch import nn

import mobilefuse
from mobilefuse.models.shufflenet import ShuffleV2Unit


def _unit(in_channels: int, out_channels: int, stride: int) -> ShuffleV2Unit:
    torch.manual_seed(0)
    unit = ShuffleV2Unit(in_channels, out_channels, stride, nn.BatchNorm2d, nn.ReLU)
    randomize_norms(unit)
    return unit


@pytest.mark.parametrize("in_channels,out_channels,stride", [(24, 24, 1), (24, 58, 2),
                                                             (10, 10, 1)])
def test_constructor_matches_the_zoo_unit(in_channels, out_channels, stride):
    zoo = _unit(in_channels, out_channels, stride).eval()
    unit = mobilefuse.nn.ShuffleUnit(in_channels, out_channels, stride).eval()
    assert list(unit.state_dict()) == list(zoo.state_dict())
    unit.load_state_dict(zoo.state_dict(), strict=True)
    x = torch.randn(2, in_channels, 9, 7).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert_close_to_reference(unit(x), zoo.double()(x.double()), FORWARD_TOL[torch.float32],
                                  "ShuffleUnit")


def test_constructor_rejects_a_stride_1_width_change():
    with pytest.raises(ValueError, match="keeps its width"):
        mobilefuse.nn.ShuffleUnit(24, 48, 1)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=str)
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_accelerated_unit_matches(stride, layout, train):
    """Output and input gradient of the accelerated unit against the float64 unit."""
    zoo = _unit(20, 20 if stride == 1 else 40, stride).train(train)
    reference = copy.deepcopy(zoo).double()
    fast = mobilefuse.accelerate(zoo)
    assert type(fast) is mobilefuse.nn.ShuffleUnit and fast.stride == stride
    assert list(fast.state_dict()) == list(zoo.state_dict())
    x = torch.randn(3, 20, 11, 9).contiguous(memory_format=layout).requires_grad_()
    assert_step_matches_float64(fast, reference, x, layout)
    assert type(mobilefuse.restore(fast)) is ShuffleV2Unit


def test_hooked_branch_layer_keeps_the_branch_layers():
    """A hook inside a branch: the unit is fused, that branch runs layer by layer."""
    model = nn.Sequential(_unit(12, 12, 1).eval())
    reference = copy.deepcopy(model).double()
    calls = []
    model[0].branch2[3].register_forward_hook(lambda *args: calls.append(1))
    fast = mobilefuse.accelerate(model)
    assert type(fast[0]) is mobilefuse.nn.ShuffleUnit
    assert type(fast[0].branch2) is nn.Sequential
    x = torch.randn(2, 12, 7, 7)
    with torch.no_grad():
        assert_close_to_reference(fast(x), reference(x.double()), FORWARD_TOL[torch.float32],
                                  "output")
    assert calls == [1]


def test_hooked_shuffle_keeps_the_unit():
    """A hook on the unit's shuffle would be skipped by the fused op: the unit stays."""
    model = nn.Sequential(_unit(12, 12, 1))
    calls = []
    model[0].shuffle.register_forward_hook(lambda *args: calls.append(1))
    fast = mobilefuse.accelerate(model)
    assert type(fast[0]) is ShuffleV2Unit
    fast(torch.randn(1, 12, 5, 5))
    assert calls == [1]
    rows = {r.path: r for r in mobilefuse.accelerate_report(fast, show=False).rows}
    assert rows["0"].status == "kept" and "hooks" in rows["0"].detail


def test_report_lists_the_unit():
    model = nn.Sequential(_unit(12, 12, 1), _unit(12, 24, 2))
    rows = {r.path: r for r in mobilefuse.accelerate_report(model, show=False).rows}
    assert rows["0"].status == "would swap" and rows["0"].current == "ShuffleUnit"
    assert "concat_shuffle" in rows["1"].detail
    fast = mobilefuse.accelerate(model)
    rows = {r.path: r for r in mobilefuse.accelerate_report(fast, show=False).rows}
    assert rows["1"].status == "swapped" and rows["1"].original == "ShuffleV2Unit"
    # Each branch reads as an inverted residual without the add: a fused block.
    branch2, branch1 = rows["0.branch2"], rows["1.branch1"]
    assert branch2.status == "swapped" and branch2.current == "InvertedResidual"
    assert branch1.status == "swapped" and "depthwise + project" in branch1.detail
    assert not any(path.startswith("0.branch2.") for path in rows)
