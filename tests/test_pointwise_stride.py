"""Strided 1x1 convolutions with few input channels run on the subsampled input
(mobilefuse._pointwise_stride): same numbers, and no oneDNN strided weight gradient."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import BACKWARD_TOL, FORWARD_TOL, assert_close_to_reference
from torch import nn

import mobilefuse
from mobilefuse import _pointwise_stride as pointwise_stride


def _conv_bn(c_in: int, c_out: int, stride: int | tuple[int, int]) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=True), nn.BatchNorm2d(c_out))


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("c_in,stride,train", [(3, 2, True), (7, (2, 3), True), (1, 2, False),
                                               (3, 3, False)])
def test_subsampled_conv_matches_the_float64_model(layout, c_in, stride, train):
    # Training (batch statistics) and eval with a gradient (the folded path), odd sizes.
    model = _conv_bn(c_in, 5, stride).train(train)
    reference = copy.deepcopy(model).double()
    fast = mobilefuse.accelerate(model)
    assert type(fast[0]).__name__ == "FoldedConv2d"
    x = torch.randn(3, c_in, 13, 10).contiguous(memory_format=layout).requires_grad_()
    assert pointwise_stride.subsamples(x, fast[0].weight, fast[0].stride, fast[0].padding)
    x_ref = x.detach().double().requires_grad_()
    out, expected = fast(x), reference(x_ref)
    assert out.shape == expected.shape == (3, 5, *[(n - 1) // s + 1 for n, s in
                                                   zip((13, 10), fast[0].stride, strict=True)])
    assert_close_to_reference(out, expected, FORWARD_TOL[torch.float32], "output")
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad.double())
    assert_close_to_reference(x.grad, x_ref.grad, BACKWARD_TOL[torch.float32], "input gradient")
    # All parameter gradients scaled by the largest: the conv's bias gradient is zero but for
    # rounding where a training BatchNorm follows.
    grads = torch.cat([p.grad.flatten() for p in fast.parameters()])
    expected_grads = torch.cat([p.grad.flatten() for p in reference.parameters()])
    assert_close_to_reference(grads, expected_grads, BACKWARD_TOL[torch.float32],
                              "parameter gradients")


def test_subsampling_is_limited_to_the_failing_pattern():
    w = torch.randn(8, 3, 1, 1, requires_grad=True)
    x = torch.randn(2, 3, 8, 8)
    assert pointwise_stride.subsamples(x, w, (2, 2), (0, 0))
    assert not pointwise_stride.subsamples(x, w, (1, 1), (0, 0))  # stride 1: no workspace
    assert not pointwise_stride.subsamples(x, w, (2, 2), (1, 1))  # padding reads zeros
    assert not pointwise_stride.subsamples(x, w, (2, 2), "valid")
    assert not pointwise_stride.subsamples(x, torch.randn(8, 16, 1, 1, requires_grad=True),
                                           (2, 2), (0, 0))  # a whole channel block
    assert not pointwise_stride.subsamples(x, torch.randn(8, 3, 3, 3, requires_grad=True),
                                           (2, 2), (0, 0))
    assert not pointwise_stride.subsamples(x, w.detach(), (2, 2), (0, 0))  # no gradient
    with torch.no_grad():
        assert not pointwise_stride.subsamples(x, w, (2, 2), (0, 0))


def test_training_steps_that_corrupted_the_heap_run_clean():
    # The pattern oneDNN's strided 1x1 weight gradient writes past its workspace on: with
    # MAX_IN_CHANNELS = 0 (no subsampling) this script aborted or crashed in three runs of
    # three on an AMD EPYC. A separate process, so a corrupted heap fails this test only.
    script = textwrap.dedent("""
        import torch, mobilefuse
        from torch import nn
        torch.manual_seed(0)
        for _ in range(20):
            model = nn.Sequential(nn.Conv2d(3, 8, 1, 2, bias=False), nn.BatchNorm2d(8)).train()
            fast = mobilefuse.accelerate(model.to(memory_format=torch.channels_last))
            out = fast(torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last))
            out.backward(torch.randn_like(out))
            junk = [torch.empty(n) for n in (10, 1000, 100000)]
        print("clean", float(fast[0].weight.grad.abs().sum()) > 0)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("clean True"), done.stdout
