"""The fused block's cached CPU inference plan: it serves the float32 channels_last no-grad
calls, gives the layers' result (float64 reference), and every change it guards against (a
weight edited in place or replaced, a layer replaced, load_state_dict, train mode, eps, a new
input shape, grad mode, another backend, autocast) sends the call down the general path with
the right result."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from conftest import FORWARD_TOL, assert_close_to_reference
from torch import nn

import mobilefuse
from mobilefuse import _onednn
from mobilefuse.models import create_model

pytestmark = pytest.mark.skipif(not _onednn.ops_present(), reason="torch built without oneDNN")

TOL = FORWARD_TOL[torch.float32]

CASES = [
    {"in_channels": 8, "out_channels": 8, "kernel_size": 3, "activation": "relu6"},
    {"in_channels": 8, "out_channels": 12, "kernel_size": 5, "stride": 2,
     "activation": "hardswish", "se_channels": 4},
    {"in_channels": 16, "out_channels": 16, "kernel_size": 5, "expand_ratio": 4.0,
     "activation": "silu", "se_channels": 20, "se_activation": "silu", "se_gate": "sigmoid",
     "drop_path": 0.5},
    {"in_channels": 6, "out_channels": 6, "kernel_size": 7, "expand_ratio": 1.0,
     "activation": "relu"},
]


def _randomize(model: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)


def _block(seed: int = 0, **kwargs: object) -> mobilefuse.nn.InvertedResidual:
    torch.manual_seed(seed)
    block = mobilefuse.nn.InvertedResidual(**(kwargs or CASES[1]))
    _randomize(block, seed)
    return block.eval()


def _input(block: nn.Module, shape: tuple[int, int, int] = (3, 13, 11), seed: int = 1
           ) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    channels = (block.layout.expand or block.layout.depthwise).conv
    c = block._child(channels).in_channels
    return torch.randn((shape[0], c, *shape[1:]), generator=gen).contiguous(
        memory_format=torch.channels_last)


def _reference(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The block's layers one after the other, in float64."""
    ref = copy.deepcopy(block).double()
    with torch.no_grad():
        return ref._forward_layers(x.double())


def _run(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = block(x)
    assert torch.isfinite(out).all()
    return out


def _check(block: nn.Module, x: torch.Tensor, what: str) -> torch.Tensor:
    out = _run(block, x)
    assert_close_to_reference(out, _reference(block, x), TOL, what)
    return out


def _plan(block: nn.Module) -> object:
    return block.__dict__.get("_plan")


@pytest.mark.parametrize("kwargs", CASES)
def test_plan_serves_and_matches_the_layers(kwargs):
    block = _block(2, **kwargs)
    x = _input(block)
    first = _check(block, x, "first call")
    plan = _plan(block)
    assert plan is not None
    second = _check(block, x, "replayed")
    assert _plan(block) is plan
    assert torch.equal(first, second)
    # The same dispatcher calls as the general path: the same bits.
    with torch.no_grad():
        assert torch.equal(block._forward_folded(x), second)


@pytest.mark.parametrize("kwargs", [
    {"in_channels": 16, "out_channels": 16, "kernel_size": 3, "expand_ratio": 4.0,
     "activation": "relu6"},
    {"in_channels": 16, "out_channels": 24, "kernel_size": 5, "stride": 2, "expand_ratio": 4.0,
     "activation": "silu", "se_channels": 4, "se_activation": "silu", "se_gate": "sigmoid"},
])
def test_large_expanded_maps_plan_the_fused_expansion(kwargs):
    # 64 expanded channels of 64x65 pixels are over 1 MiB an image: the plan runs the expansion
    # inside the depthwise op (expand_depthwise), as the general path does, with the same bits.
    block = _block(4, **kwargs)
    x = _input(block, (2, 64, 65))
    first = _check(block, x, "first call")
    plan = _plan(block)
    assert plan is not None and plan.expand is None
    assert plan.depthwise is torch.ops.mobilefuse.expand_depthwise
    assert torch.equal(first, _check(block, x, "replayed"))
    with torch.no_grad():
        assert torch.equal(block._forward_folded(x), first)


def test_zoo_mobilenet_v3_blocks_plan_and_match():
    torch.manual_seed(0)
    model = create_model("mobilenet_v3_small").eval()
    _randomize(model, 3)
    fast = mobilefuse.accelerate(model)
    blocks = [m for m in fast.modules() if isinstance(m, mobilefuse.nn.InvertedResidual)]
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = model.double()(x.double())
        first = fast(x)
        assert all(_plan(b) is not None for b in blocks)
        second = fast(x)
    assert_close_to_reference(first, ref, TOL, "mobilenet_v3_small")
    assert torch.equal(first, second)


def _edit_weight(block: nn.Module) -> None:
    with torch.no_grad():
        block.conv_dw.weight.mul_(-1.5)


def _edit_running_var(block: nn.Module) -> None:
    block.bn3.running_var.mul_(3.0)


def _replace_parameter(block: nn.Module) -> None:
    block.conv_pwl.weight = nn.Parameter(torch.randn_like(block.conv_pwl.weight))


def _assign_data(block: nn.Module) -> None:
    block.conv_pw.weight.data = torch.randn_like(block.conv_pw.weight)


def _replace_layer(block: nn.Module) -> None:
    norm = nn.BatchNorm2d(block.bn2.num_features).eval()
    _randomize(norm, 9)
    block.bn2 = norm


def _load_state_dict(block: nn.Module) -> None:
    other = _block(7, **CASES[1])
    block.load_state_dict(other.state_dict())


def _change_eps(block: nn.Module) -> None:
    block.bn1.eps = 0.5


def _edit_se(block: nn.Module) -> None:
    with torch.no_grad():
        block.se.fc2.bias.add_(2.0)


CHANGES = [_edit_weight, _edit_running_var, _replace_parameter, _assign_data, _replace_layer,
           _load_state_dict, _change_eps, _edit_se]


@pytest.mark.parametrize("change", CHANGES, ids=lambda f: f.__name__.strip("_"))
def test_a_guarded_change_is_seen(change):
    block = _block(3)
    x = _input(block)
    before = _check(block, x, "before")
    change(block)
    after = _check(block, x, f"after {change.__name__}")
    assert not torch.allclose(before, after)
    assert _plan(block) is not None  # rebuilt for the new state
    assert torch.equal(_run(block, x), after)


def test_train_mode_and_back():
    # The training step updates the running statistics (in place, through an op that bumps
    # no version counter by itself): the next eval call must fold the new ones.
    block = _block(4)
    x = _input(block)
    _check(block, x, "eval")
    block.train()
    out = block(x.clone().requires_grad_())
    assert out.grad_fn is not None  # the training path: batch statistics, gradients
    block.eval()
    _check(block, x, "eval again")


def test_new_input_shapes_and_layouts():
    block = _block(5)
    for shape in [(3, 13, 11), (2, 9, 9), (5, 13, 11)]:
        x = _input(block, shape)
        _check(block, x, f"shape {shape}")
        assert _plan(block).shape == x.shape
    nchw = _input(block).contiguous()
    out = _check(block, nchw, "contiguous input")
    assert out.is_contiguous()


def test_plan_not_used_when_recording_gradients_or_on_other_backends():
    block = _block(6)
    x = _input(block)
    expected = _check(block, x, "planned")
    out = block(x.clone().requires_grad_())
    assert out.grad_fn is not None
    assert_close_to_reference(out.detach(), expected.double(), TOL, "with grad")
    with mobilefuse.use_backend("reference"), torch.no_grad():
        assert_close_to_reference(block(x), expected.double(), TOL, "reference backend")
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        assert block(x).dtype == torch.bfloat16


def _plan_tensors(plan: object) -> list[torch.Tensor]:
    """Every tensor the plan's calls take (its folded and packed weights and biases)."""
    found = [t for t in plan.depthwise_args if isinstance(t, torch.Tensor)]
    for conv in (plan.expand, plan.project):
        if conv is not None:
            found += [t for t in vars(conv).values() if isinstance(t, torch.Tensor)]
    return found


@pytest.mark.parametrize("kwargs", CASES)
def test_plan_tensors_hold_no_autograd_graph(kwargs):
    # The folds run outside inference mode, which turns grad mode on again: a cached fold
    # built there would keep a graph (and the BatchNorm tensors it reads) alive.
    block = _block(9, **kwargs)
    for p in block.parameters():
        assert p.requires_grad
    _check(block, _input(block), "planned")
    tensors = _plan_tensors(_plan(block))
    assert len(tensors) >= 3
    for t in tensors:
        assert t.grad_fn is None


def test_inference_mode_parameters_build_no_plan():
    with torch.inference_mode():
        block = _block(7)
        x = _input(block)
        out = block(x)
    assert _plan(block) is None
    assert_close_to_reference(out, _reference(block, x), TOL, "inference-mode weights")


def test_deepcopy_and_pickle_after_a_planned_call():
    block = _block(8)
    x = _input(block)
    out = _check(block, x, "planned")
    for clone in (copy.deepcopy(block), pickle.loads(pickle.dumps(block))):
        assert _plan(clone) is None
        assert torch.equal(_run(clone, x), out)
