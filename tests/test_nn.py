"""The modules drop in for torch.nn's: same outputs, same gradients, same (empty) state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mobilefuse

PAIRS = [
    (mobilefuse.nn.HardSwish(), nn.Hardswish()),
    (mobilefuse.nn.HardSigmoid(), nn.Hardsigmoid()),
    (mobilefuse.nn.ChannelShuffle(3), nn.ChannelShuffle(3)),
]


@pytest.mark.parametrize("ours,theirs", PAIRS, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("channels_last", [False, True])
def test_module_matches_torch_nn(ours, theirs, channels_last):
    x = torch.randn(2, 6, 7, 5) * 4
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    out, expected = ours(x), theirs(x_ref)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-6, atol=1e-6)
    assert ours.state_dict().keys() == theirs.state_dict().keys()


def test_modules_accept_torch_signatures_and_show_groups():
    assert mobilefuse.nn.HardSwish(inplace=True).inplace
    assert mobilefuse.nn.HardSigmoid(inplace=True).inplace
    assert "groups=4" in repr(mobilefuse.nn.ChannelShuffle(4))


def test_inplace_flag_leaves_input_unchanged():
    x = torch.randn(4, 4)
    before = x.clone()
    mobilefuse.nn.HardSwish(inplace=True)(x)
    assert torch.equal(x, before)
