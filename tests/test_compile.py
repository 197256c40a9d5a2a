"""torch.compile(fullgraph=True) keeps the mobilefuse ops in the graph, with the same numbers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import BACKEND_CASES, on_backend

import mobilefuse


def _box_filter(t: torch.Tensor) -> torch.Tensor:
    """A (C, 1, 3, 3) weight of ones on t's device."""
    return t.new_ones(t.shape[1], 1, 3, 3)


OPS = {
    "hardswish": (lambda t: mobilefuse.ops.hardswish(t), F.hardswish),
    "hardsigmoid": (lambda t: mobilefuse.ops.hardsigmoid(t), F.hardsigmoid),
    "channel_shuffle": (lambda t: mobilefuse.ops.channel_shuffle(t, 3),
                        lambda t: mobilefuse.reference.channel_shuffle(t, 3)),
    "depthwise_conv2d": (
        lambda t: mobilefuse.ops.depthwise_conv2d(t, _box_filter(t), None, 1, 1,
                                                  activation="relu"),
        lambda t: F.relu(F.conv2d(t, _box_filter(t), None, 1, 1, groups=t.shape[1]))),
}


def _mobilefuse_targets(gm: torch.fx.GraphModule) -> set[str]:
    return {str(n.target).removesuffix(".default") for n in gm.graph.nodes
            if n.op == "call_function" and str(n.target).startswith("mobilefuse.")}


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
@pytest.mark.parametrize("name", list(OPS))
def test_graph_holds_the_op(backend, device, name):
    fn, _ = OPS[name]
    graphs: list[torch.fx.GraphModule] = []

    def capture(gm: torch.fx.GraphModule, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    x = torch.randn(2, 6, 5, 7, device=device)
    with on_backend(backend):
        out = torch.compile(lambda t: fn(t) * 2, backend=capture, fullgraph=True)(x)
    assert len(graphs) == 1
    op = f"triton_{name}" if backend == "triton" else name
    assert _mobilefuse_targets(graphs[0]) == {f"mobilefuse.{op}"}
    torch.testing.assert_close(out, OPS[name][1](x) * 2)


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
def test_inductor_forward_and_backward(backend, device):
    """One inductor compile through all four ops, forward and backward, against eager PyTorch."""

    weight = torch.randn(6, 1, 3, 3, device=device, dtype=torch.float64, requires_grad=True)

    def block(t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        t = mobilefuse.ops.depthwise_conv2d(t, w, None, 1, 1, activation="silu")
        t = mobilefuse.ops.channel_shuffle(t, 3)
        return mobilefuse.ops.hardswish(t) * mobilefuse.ops.hardsigmoid(t)

    def reference(t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # Written out, since aten's float64 hard-sigmoid backward rounds 1/6 to float32.
        t = F.silu(F.conv2d(t, w, None, 1, 1, groups=6))
        t = mobilefuse.reference.channel_shuffle(t, 3)
        gate = (t + 3).clamp(0, 6) / 6
        return (t * gate) * gate

    torch._dynamo.reset()
    x = torch.randn(2, 6, 5, 7, device=device, dtype=torch.float64, requires_grad=True)
    with on_backend(backend):
        out = torch.compile(block, fullgraph=True)(x, weight)
        out.sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    w_ref = weight.detach().clone().requires_grad_()
    expected = reference(x_ref, w_ref)
    expected.sum().backward()
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(weight.grad, w_ref.grad, rtol=1e-12, atol=1e-12)
