"""The training-mode BatchNorm (+ activation) of accelerated conv → BatchNorm → activation runs,
as one CPU op on batch statistics: outputs, all gradients and running statistics against
the float64 eager layers, and the cases it leaves to eager PyTorch."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import (
    BACKWARD_TOL,
    FORWARD_TOL,
    assert_close_to_reference,
    assert_step_matches_float64,
    counting_fused_batch_norm,
)
from torch import nn

import mobilefuse
from mobilefuse._fusion import FoldedBatchNorm2d

ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish, "silu": nn.SiLU,
               None: None}


def _run(act: type[nn.Module] | None, groups: int = 1, momentum: float | None = 0.1,
         affine: bool = True) -> nn.Sequential:
    torch.manual_seed(0)
    layers = [nn.Conv2d(6, 6, 3, padding=1, groups=groups, bias=False),
              nn.BatchNorm2d(6, momentum=momentum, affine=affine)]
    if act is not None:
        layers.append(act())
    model = nn.Sequential(*layers).train()
    with torch.no_grad():
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2.0)
        if affine:
            model[1].weight.normal_()
            model[1].bias.normal_()
    return model


def _calls_fused(model: nn.Module, x: torch.Tensor) -> int:
    """How many times the fused training op runs in one forward of ``model``."""
    with counting_fused_batch_norm() as calls:
        model(x)
    return calls[0]


@pytest.mark.parametrize("activation", list(ACTIVATIONS), ids=str)
@pytest.mark.parametrize("groups", [1, 6], ids=["dense", "depthwise"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=str)
def test_step_matches_float64_eager(activation, groups, layout):
    model = _run(ACTIVATIONS[activation], groups)
    reference = copy.deepcopy(model).double()
    fast = mobilefuse.accelerate(model)
    assert isinstance(fast[1], FoldedBatchNorm2d)
    x = torch.randn(3, 6, 9, 7).contiguous(memory_format=layout).requires_grad_()
    assert _calls_fused(copy.deepcopy(fast), x.detach()) == 1
    assert_step_matches_float64(fast, reference, x, layout)
    for (name, p), p_ref in zip(fast.named_parameters(), reference.parameters(), strict=True):
        assert_close_to_reference(p.grad, p_ref.grad, BACKWARD_TOL[torch.float32], name)
    for name in ("running_mean", "running_var"):
        assert_close_to_reference(getattr(fast[1], name), getattr(reference[1], name),
                                  FORWARD_TOL[torch.float32], name)
    assert int(fast[1].num_batches_tracked) == int(reference[1].num_batches_tracked) == 1


@pytest.mark.parametrize("momentum,affine", [(None, True), (0.3, False)],
                         ids=["cumulative-average", "no-affine"])
def test_momentum_and_affine_settings(momentum, affine):
    model = _run(nn.ReLU, momentum=momentum, affine=affine).double()
    reference = copy.deepcopy(model)
    fast = mobilefuse.accelerate(model)
    for step in range(3):
        x = torch.randn(2, 6, 5, 5, dtype=torch.float64, requires_grad=True)
        x_ref = x.detach().clone().requires_grad_()
        out, expected = fast(x), reference(x_ref)
        assert_close_to_reference(out, expected, 1e-12, f"step {step} output")
        out.sum().backward()
        expected.sum().backward()
        assert_close_to_reference(x.grad, x_ref.grad, 1e-12, f"step {step} input gradient")
    for name in ("running_mean", "running_var"):
        assert_close_to_reference(getattr(fast[1], name), getattr(reference[1], name), 1e-12,
                                  name)
    assert int(fast[1].num_batches_tracked) == 3


def test_gradcheck_float64():
    fast = mobilefuse.accelerate(_run(nn.Hardswish).double())
    x = torch.randn(2, 6, 4, 3, dtype=torch.float64, requires_grad=True)
    # Each call updates the running statistics (not an input here): gradients are unaffected.
    assert torch.autograd.gradcheck(fast, (x,))


@pytest.mark.parametrize("case", ["reference-backend", "autocast", "eval"])
def test_leaves_other_cases_to_the_layers(case):
    model = _run(nn.ReLU)
    fast = mobilefuse.accelerate(model)
    x = torch.randn(2, 6, 5, 5)
    if case == "reference-backend":
        with mobilefuse.use_backend("reference"):
            assert _calls_fused(fast, x) == 0
    elif case == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert _calls_fused(fast, x) == 0
    else:
        assert _calls_fused(fast.eval(), x) == 0


def test_restore_gives_back_a_plain_batchnorm():
    fast = mobilefuse.accelerate(_run(nn.ReLU))
    restored = mobilefuse.restore(fast)
    assert type(restored[1]) is nn.BatchNorm2d and "fusion" not in vars(restored[1])


def test_one_value_per_channel_raises_as_eager():
    model = _run(nn.ReLU)
    fast = mobilefuse.accelerate(model)
    x = torch.randn(1, 6, 1, 1)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        model(x)
    state = {k: v.clone() for k, v in fast.state_dict().items()}
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        fast(x)
    for key, value in fast.state_dict().items():  # no NaN running variance left behind
        assert torch.equal(value, state[key]), key
