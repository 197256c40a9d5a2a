"""accelerate() on torchvision's and timm's efficient nets: same outputs, gradients, state."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import FORWARD_TOL, assert_close_to_reference, randomize_norms
from test_accelerate import assert_step_matches
from torch import nn
from vision_models import timm_or_skip, torchvision_or_skip

import mobilefuse

TORCHVISION = ["mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "efficientnet_b0",
               "shufflenet_v2_x0_5"]
TIMM = ["efficientnet_b0", "mobilenetv3_large_100", "mobilenetv3_small_050"]
# Squeeze-and-excitation layers each model has: all become mobilefuse.nn.SqueezeExcite.
SE_LAYERS = {"mobilenet_v3_large": 8, "mobilenet_v3_small": 9, "efficientnet_b0": 16,
             "mobilenetv3_large_100": 8, "mobilenetv3_small_050": 9}


def build(source: str, name: str) -> nn.Module:
    torch.manual_seed(0)
    if source == "torchvision":
        return getattr(torchvision_or_skip().models, name)()
    return timm_or_skip().create_model(name)


CASES = [("torchvision", n) for n in TORCHVISION] + [("timm", n) for n in TIMM]


@pytest.mark.parametrize("source,name", CASES, ids=[f"{s}-{n}" for s, n in CASES])
def test_eval_outputs_and_state_match(source, name):
    model = build(source, name).eval()
    randomize_norms(model)
    reference = copy.deepcopy(model).double()
    fast = mobilefuse.accelerate(model)
    assert list(fast.state_dict()) == list(model.state_dict())
    # MBConv blocks become fused blocks, which read their layers' parameters themselves.
    blocks = [m for m in fast.modules() if isinstance(m, mobilefuse.nn.InvertedResidual)]
    inside = {id(c) for b in blocks for c in b.modules() if c is not b}
    depthwise = [m for m in fast.modules() if id(m) not in inside
                 and isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1]
    assert blocks or depthwise
    assert all(type(m) is mobilefuse.nn.DepthwiseConv2d for m in depthwise)
    # torchvision's depthwise conv, BatchNorm and activation sit in one Sequential, timm's are
    # wired in their blocks' forward (traced): all are folded.
    assert all(m.fusion is not None and m.fusion.norm is not None for m in depthwise)
    fused_se = sum(isinstance(m, mobilefuse.nn.SqueezeExcite) for m in fast.modules()) + sum(
        b.layout.se is not None for b in blocks)
    assert fused_se == SE_LAYERS.get(name, 0)
    units = sum(type(m).__name__ == "InvertedResidual" and "shufflenet" in type(m).__module__
                for m in model.modules())
    assert sum(isinstance(m, mobilefuse.nn.ShuffleUnit) for m in fast.modules()) == units
    assert units == (16 if name.startswith("shufflenet") else 0)
    # Their branches run as fused blocks: 13 stride-1 units with one, 3 stride-2 units with two.
    branch_blocks = sum(isinstance(u._modules.get(b), mobilefuse.nn.InvertedResidual)
                        for u in fast.modules() if isinstance(u, mobilefuse.nn.ShuffleUnit)
                        for b in ("branch1", "branch2"))
    assert branch_blocks == (19 if units else 0)
    x = torch.randn(2, 3, 80, 72)
    with torch.no_grad():
        assert_close_to_reference(fast(x), reference(x.double()), FORWARD_TOL[torch.float32],
                                  f"{source} {name}")
    restored = mobilefuse.restore(fast)
    assert [type(m) for m in restored.modules()] == [type(m) for m in model.modules()]


# timm nets built from other block and layer types: 'same' padding computed per call
# (Conv2dSame, which must not be served as a plain convolution), mixed kernel sizes per channel
# group (MixedConv2d), ghost modules, EdgeResidual, universal inverted bottlenecks,
# re-parameterizable branches, linear attention. Whatever accelerate() takes from them must
# leave the output as it was.
TIMM_OTHER = ["tf_efficientnet_b0", "mixnet_s", "ghostnet_100", "efficientnet_es",
              "mobilenetv4_conv_small", "lcnet_050", "repvit_m1", "mobileone_s0",
              "efficientvit_b0"]


def assert_eval_matches_and_restores(fast: nn.Module, model: nn.Module,
                                     reference: nn.Module, x: torch.Tensor, label: str) -> None:
    """The accelerated eval model against its float64 copy in both memory formats, and
    restore() bringing back the original module classes."""
    expected = reference(x.double()).detach()
    with torch.no_grad():
        for layout in (torch.contiguous_format, torch.channels_last):
            assert_close_to_reference(fast(x.contiguous(memory_format=layout)), expected,
                                      FORWARD_TOL[torch.float32], f"{label} {layout}")
    restored = mobilefuse.restore(fast)
    assert [type(m) for m in restored.modules()] == [type(m) for m in model.modules()]


@pytest.mark.parametrize("name", TIMM_OTHER)
def test_other_timm_nets_keep_their_outputs(name):
    model = build("timm", name).eval()
    randomize_norms(model)
    reference = copy.deepcopy(model).double()
    fast = mobilefuse.accelerate(model)
    assert list(fast.state_dict()) == list(model.state_dict())
    assert any(type(m).__module__.startswith("mobilefuse") for m in fast.modules())
    assert_eval_matches_and_restores(fast, model, reference, torch.randn(2, 3, 80, 72),
                                     f"timm {name}")


# Not efficientnet_es: eager float32 itself lands at 0.8-1.0x the forward tolerance there in
# training (batch statistics of 3 images).
@pytest.mark.parametrize("name", ["tf_efficientnet_b0", "mixnet_s", "ghostnet_100"])
def test_other_timm_nets_train_as_before(name):
    model = build("timm", name).train()
    reference = copy.deepcopy(model).double()
    assert_step_matches(mobilefuse.accelerate(model), reference, torch.randn(3, 3, 64, 56))


@pytest.mark.parametrize("source,name", [("torchvision", "mobilenet_v3_small"),
                                         ("torchvision", "efficientnet_b0"),
                                         ("timm", "mobilenetv3_small_050")],
                         ids=["torchvision-mobilenet_v3_small", "torchvision-efficientnet_b0",
                              "timm-mobilenetv3_small_050"])
def test_training_step_matches(source, name):
    model = build(source, name).train()
    # Dropout and stochastic depth draw the same masks in both models from the same seed.
    reference = copy.deepcopy(model).double()
    fast = mobilefuse.accelerate(model)
    assert_step_matches(fast, reference, torch.randn(3, 3, 64, 64))


def _mixed_block(timm) -> nn.Module:
    """timm's MixedConv2d layers, each followed by a BatchNorm (MixNet's layout): a 1x1
    expansion in two groups, a depthwise layer of 3x3 to 9x9 kernels, a 1x1 projection."""
    from timm.layers import BatchNormAct2d, MixedConv2d

    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv_pw = MixedConv2d(10, 42, [1, 1])
            self.bn1 = BatchNormAct2d(42, act_layer=nn.SiLU)
            self.conv_dw = MixedConv2d(42, 42, [3, 5, 7, 9], stride=2, depthwise=True)
            self.bn2 = BatchNormAct2d(42, act_layer=nn.ReLU)
            self.conv_pwl = MixedConv2d(42, 11, [1, 1])
            self.bn3 = BatchNormAct2d(11, apply_act=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.bn1(self.conv_pw(x))
            return self.bn3(self.conv_pwl(self.bn2(self.conv_dw(x))))

    torch.manual_seed(0)
    return Mixed()


def test_batchnorm_after_a_mixed_conv_folds_into_each_of_its_convolutions():
    timm = timm_or_skip()
    model = _mixed_block(timm).eval()
    randomize_norms(model)
    reference = copy.deepcopy(model).double()
    fast = mobilefuse.accelerate(model)
    assert list(fast.state_dict()) == list(model.state_dict())
    # Each convolution folds the channels of the BatchNorm its output fills, in order.
    dw = list(fast.conv_dw.children())
    assert [type(c).__name__ for c in dw] == ["DepthwiseConv2d"] * 4
    assert [c.fusion.channels for c in dw] == [(0, 12), (12, 22), (22, 32), (32, 42)]
    assert [c.fusion.activation for c in dw] == ["relu"] * 4
    assert [c.fusion.describe() for c in fast.conv_pwl.children()] == [
        "batchnorm[0:6] (eval)", "batchnorm[6:11] (eval)"]
    assert all(type(getattr(fast, f"bn{i}")).__name__ == "FoldedBatchNorm2d" for i in (1, 2, 3))
    assert_eval_matches_and_restores(fast, model, reference, torch.randn(2, 10, 15, 13) * 2,
                                     "mixed conv")


def test_mixed_conv_with_a_hooked_child_keeps_its_batchnorm():
    timm = timm_or_skip()
    model = _mixed_block(timm).eval()
    model.conv_dw.get_submodule("2").register_forward_hook(lambda *_: None)
    fast = mobilefuse.accelerate(model)
    assert type(fast.bn2).__name__ == "BatchNormAct2d"
    assert all(getattr(c, "fusion", None) is None for c in fast.conv_dw.children())
    assert type(fast.bn1).__name__ == "FoldedBatchNorm2d"  # the other layers still fold


def test_mixed_conv_block_trains_as_before():
    timm = timm_or_skip()
    model = _mixed_block(timm).train()
    reference = copy.deepcopy(model).double()
    assert_step_matches(mobilefuse.accelerate(model), reference, torch.randn(3, 10, 14, 12))


@pytest.mark.parametrize("rd_ratio,gate", [(0.25, "sigmoid"), (1 / 3, "hard_sigmoid")])
def test_timm_semodule_becomes_squeeze_excite(rd_ratio, gate):
    """timm's SEModule (its SqueezeExcite in RepViT, SE-ResNets, RegNetY), standing alone in
    a model: served by mobilefuse.nn.SqueezeExcite with its keys, eval output and training
    step unchanged."""
    timm = timm_or_skip()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(5, 24, 1), timm.layers.SEModule(24, rd_ratio=rd_ratio,
                                                                    gate_layer=gate))
    fast = mobilefuse.accelerate(model.eval())
    assert type(fast[1]) is mobilefuse.nn.SqueezeExcite
    assert list(fast.state_dict()) == list(model.state_dict())
    assert_eval_matches_and_restores(fast, model, copy.deepcopy(model).double(),
                                     torch.randn(2, 5, 9, 7), "SEModule")
    assert_step_matches(mobilefuse.accelerate(model.train()), copy.deepcopy(model).double(),
                        torch.randn(3, 5, 8, 11))
