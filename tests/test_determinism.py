"""Determinism: with torch.use_deterministic_algorithms(True) every op, forward and backward,
gives bit-identical results run to run on every backend (no mobilefuse kernel uses atomics:
the weight and bias gradients are blocked partial sums reduced in a fixed order)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from conftest import BACKEND_CASES, on_backend

import mobilefuse
from mobilefuse import models


@pytest.fixture(autouse=True)
def deterministic() -> Iterator[None]:
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)


def _inputs(device: str) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=gen).to(device)

    return {"x": rand(3, 24, 17, 15), "dw": rand(24, 1, 5, 5), "bias": rand(24),
            "w_reduce": rand(6, 24), "w_expand": rand(24, 6), "expand": rand(24, 8),
            "block_x": rand(3, 8, 17, 15), "project": rand(8, 24)}


OPS: dict[str, Callable[[dict], torch.Tensor]] = {
    "hardswish": lambda t: mobilefuse.ops.hardswish(t["x"]),
    "hardsigmoid": lambda t: mobilefuse.ops.hardsigmoid(t["x"]),
    "channel_shuffle": lambda t: mobilefuse.ops.channel_shuffle(t["x"], 4),
    "concat_shuffle": lambda t: mobilefuse.ops.concat_shuffle(*t["x"].chunk(2, 1)),
    "depthwise_conv2d": lambda t: mobilefuse.ops.depthwise_conv2d(
        t["x"], t["dw"], t["bias"], 2, 2, activation="hardswish"),
    "squeeze_excite": lambda t: mobilefuse.ops.squeeze_excite(
        t["x"], t["w_reduce"], None, t["w_expand"], None, "silu", "sigmoid"),
    "inverted_residual": lambda t: mobilefuse.ops.inverted_residual(
        t["block_x"], t["expand"], None, t["dw"], t["bias"], t["project"], None,
        (t["w_reduce"], None, t["w_expand"], None), activation="silu"),
}


def _run(op: str, backend: str, device: str) -> list[torch.Tensor]:
    """The op's output and the gradient of every input."""
    leaves = {k: v.requires_grad_() for k, v in _inputs(device).items()}
    with on_backend(backend):
        out = OPS[op](leaves)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(device)
        out.backward(grad)
    return [out.detach()] + [t.grad for t in leaves.values() if t.grad is not None]


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
@pytest.mark.parametrize("op", list(OPS))
def test_op_is_bit_identical_run_to_run(op, backend, device):
    first, second = _run(op, backend, device), _run(op, backend, device)
    assert len(first) >= 2, "no gradient was computed"
    for i, (a, b) in enumerate(zip(first, second, strict=True)):
        assert torch.equal(a, b), f"{op}: result {i} differs between two runs"


def test_accelerated_training_step_is_bit_identical():
    def step() -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = mobilefuse.accelerate(models.create_model("mobilenet_v3_small", num_classes=10))
        x = torch.randn(2, 3, 48, 48)
        model(x).logsumexp(1).sum().backward()
        return [p.grad for p in model.parameters()]

    first, second = step(), step()
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
