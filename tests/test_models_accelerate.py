"""mobilefuse.accelerate() on every zoo model: same outputs and gradients, same state, restore().

One or two configurations of every family on 2x3x64x64 inputs: eval mode against a float64
copy, train mode (outputs, input and parameter gradients) against the unfused model. The larger
EfficientNets, ResNets and ShuffleNets share those builders and are checked on one 64x64 image:
their swaps and outputs in eval mode, and outputs and input gradients in eval and train mode,
as is VGG (no depthwise layers; its state and restore() on the meta device).
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import BACKWARD_TOL, FORWARD_TOL, assert_close_to_reference, randomize_norms
from test_accelerate import assert_grads_close
from torch import nn

import mobilefuse
from mobilefuse import models

# (name, kwargs): one or more cheap configurations of every family and block kind.
NUMERIC = [
    ("mobilenet_v1", {"width_mult": 0.5}),
    ("mobilenet_v2", {}),
    ("mobilenet_v3_large", {}),
    ("mobilenet_v3_small", {}),
    ("efficientnet_b0", {}),
    ("efficientnet_b1", {}),
    ("shufflenet_v1", {"groups": 3}),
    ("shufflenet_v1", {"groups": 8, "width_mult": 0.5}),
    ("shufflenet_v2_x0_5", {}),
    ("shufflenet_v2_x1_0", {}),
    ("resnet18", {}),
]
IDS = [name + "".join(f"-{k}{v}" for k, v in kw.items()) for name, kw in NUMERIC]
VGG = models.list_models("vgg*")
LARGER = sorted(set(models.list_models()) - {name for name, _ in NUMERIC}
                    - set(VGG))


def build(name: str, **kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    model = models.create_model(name, num_classes=10, **kwargs)
    randomize_norms(model)
    return model


def depthwise(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules()
            if isinstance(m, nn.Conv2d) and m.groups == m.in_channels == m.out_channels > 1]


def check_swapped(model: nn.Module, fast: nn.Module) -> None:
    """State keys kept; every MBConv block fused whole; every other depthwise conv and channel
    shuffle swapped, folded in eval."""
    assert list(fast.state_dict()) == list(model.state_dict())
    blocks = [m for m in fast.modules() if isinstance(m, mobilefuse.nn.InvertedResidual)]
    kinds = (models.mobilenet.InvertedResidual, models.mobilenet.MBConv)
    # ShuffleNetV2's branches read as blocks without the add: one per stride-1 unit, two per
    # stride-2 unit.
    units = [m for m in model.modules() if isinstance(m, models.shufflenet.ShuffleV2Unit)]
    branches = sum(1 if u.stride == 1 else 2 for u in units)
    assert len(blocks) == sum(isinstance(m, kinds) for m in model.modules()) + branches
    inside = {id(c) for b in blocks for c in b.modules()}
    loose = [m for m in depthwise(fast) if id(m) not in inside]
    assert len(depthwise(fast)) == len(depthwise(model))
    assert all(type(m) is mobilefuse.nn.DepthwiseConv2d for m in loose)
    assert not any(type(m) is nn.ChannelShuffle for m in fast.modules())
    # Every ShuffleNetV2 unit ends in the fused concatenation and shuffle.
    units = sum(isinstance(m, mobilefuse.nn.ShuffleUnit) for m in fast.modules())
    assert units == sum(isinstance(m, models.shufflenet.ShuffleV2Unit) for m in model.modules())
    # Every squeeze-and-excitation layer runs the fused op, on its own or inside a block.
    se = [m for m in model.modules() if type(m) is models.layers.SqueezeExcitation]
    fused_se = sum(isinstance(m, mobilefuse.nn.SqueezeExcite) for m in fast.modules())
    assert fused_se + sum(b.layout.se is not None for b in blocks) == len(se)
    if not model.training:
        # Each loose depthwise conv sits with its BatchNorm in one Sequential: all folded.
        assert all(m.fusion is not None and m.fusion.norm is not None for m in loose)


@pytest.mark.parametrize("name,kwargs", NUMERIC, ids=IDS)
def test_eval_outputs_state_and_restore(name: str, kwargs: dict) -> None:
    """Eval mode: fused outputs, input and parameter gradients match the float64 model;
    restore() gives the classes back."""
    model = build(name, **kwargs).eval()
    reference = copy.deepcopy(model).double()
    fast = mobilefuse.accelerate(model)
    check_swapped(model, fast)
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    x_ref = x.detach().double().requires_grad_()
    out, expected = fast(x), reference(x_ref)
    assert_close_to_reference(out, expected, FORWARD_TOL[torch.float32], name)
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad.double())
    assert_close_to_reference(x.grad, x_ref.grad, BACKWARD_TOL[torch.float32],
                              f"{name} input gradient")
    assert_grads_close(fast, reference)
    restored = mobilefuse.restore(fast)
    assert [type(m) for m in restored.modules()] == [type(m) for m in model.modules()]
    assert list(restored.state_dict()) == list(model.state_dict())


@pytest.mark.parametrize("name,kwargs", NUMERIC, ids=IDS)
def test_train_outputs_and_gradients(name: str, kwargs: dict) -> None:
    """Train mode, in float64 end to end: outputs, input and parameter gradients of the
    accelerated model against the eager one.

    A training step is ill-conditioned in float32: batch statistics over small maps, and a ReLU
    whose input sits within rounding of 0 flips its gradient, so two correct float32 runs can
    differ by 1e-2. In float64 the kernels' rounding is far below any kink, which checks the
    wiring (fusion in train mode, SE, stochastic depth, BatchNorm statistics) exactly; the
    kernels' float32 accuracy is what the op tests and the eval test check.
    """
    model = build(name, **kwargs).train().double()
    fast = mobilefuse.accelerate(model)
    check_swapped(model, fast)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    results = []
    for net in (fast, model):
        leaf = x.clone().requires_grad_()
        # Dropout and stochastic depth draw the same masks in both models from the same seed.
        torch.manual_seed(1)
        out = net(leaf)
        out.backward(torch.ones_like(out) / out.numel() ** 0.5)
        results.append((out, leaf.grad, torch.cat([p.grad.flatten() for p in net.parameters()])))
    # The step's condition number reaches ~1e7 (MobileNetV3's input gradient), so float64
    # rounding alone reaches ~1e-9 there.
    for index, what in enumerate(("output", "input gradient", "parameter gradients")):
        assert_close_to_reference(results[0][index], results[1][index], 1e-8, f"{name} {what}")
    buffers = dict(model.named_buffers())
    for key, value in fast.named_buffers():
        assert_close_to_reference(value, buffers[key], 1e-8, f"{name} {key}")


@pytest.mark.parametrize("name", LARGER)
def test_larger_models_eval_outputs_and_state(name: str) -> None:
    """The larger variants, one 64x64 image in eval mode: every depthwise conv swapped and
    folded, state keys kept, outputs equal to the float64 model's."""
    model = build(name).eval()
    fast = mobilefuse.accelerate(model)
    check_swapped(model, fast)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model.double()(x.double())
        assert_close_to_reference(fast(x), expected, FORWARD_TOL[torch.float32], name)


@pytest.mark.parametrize("name", LARGER + VGG)
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_larger_models_outputs_and_input_gradients(name: str, train: bool) -> None:
    """The larger variants and VGG on one 64x64 image: output and input gradient of the
    accelerated model against the float64 model in eval mode (float32, DESIGN.md's bars), and
    in train mode in float64 end to end (see test_train_outputs_and_gradients). Parameters are
    frozen: their gradients are the smaller models' tests, and VGG's would take 1 GB."""
    model = build(name).train(train)
    model.requires_grad_(False)
    if train:
        model = model.double()
    fast = mobilefuse.accelerate(model)
    reference = model if train else copy.deepcopy(model).double()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64 if train else torch.float32)
    results = []
    for net, inp in ((fast, x), (reference, x.double())):
        leaf = inp.clone().requires_grad_()
        torch.manual_seed(1)  # the same dropout and stochastic-depth masks in both
        out = net(leaf)
        (grad,) = torch.autograd.grad(out, leaf, torch.linspace(-1, 1, out.numel(),
                                                                dtype=out.dtype).view_as(out))
        results.append((out.detach(), grad))
    for index, what in enumerate(("output", "input gradient")):
        tol = 1e-8 if train else (FORWARD_TOL, BACKWARD_TOL)[index][torch.float32]
        assert_close_to_reference(results[0][index], results[1][index], tol, f"{name} {what}")


@pytest.mark.parametrize("name", VGG)
def test_vgg_state_and_restore(name: str) -> None:
    """VGG (no depthwise layers; 120 M parameters in its classifier, so on the meta device):
    state keys kept, and restore() gives the original classes back."""
    with torch.device("meta"):
        model = models.create_model(name).eval()
    fast = mobilefuse.accelerate(model)
    assert list(fast.state_dict()) == list(model.state_dict())
    restored = mobilefuse.restore(fast)
    assert [type(m) for m in restored.modules()] == [type(m) for m in model.modules()]
