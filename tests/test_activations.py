"""hardswish / hardsigmoid on every backend: values, gradients, layouts, saved tensors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    BACKEND_CASES,
    BACKWARD_TOL,
    DTYPES,
    FORWARD_TOL,
    LAYOUTS,
    assert_close_to_reference,
    make_input,
    on_backend,
    poison_for,
    profiled_calls,
)

import mobilefuse

ref = mobilefuse.reference
ACTIVATIONS = {
    "hardswish": (mobilefuse.ops.hardswish, F.hardswish, ref.hardswish_backward),
    "hardsigmoid": (mobilefuse.ops.hardsigmoid, F.hardsigmoid, ref.hardsigmoid_backward),
}
SHAPES = [(3, 5, 7, 9), (1, 1, 1, 1023), (2, 3, 13, 17)]


def _expected_layout(x: torch.Tensor, out: torch.Tensor) -> None:
    # The output keeps x's memory format (empty_like's rule).
    assert out.stride() == torch.empty_like(x).stride()


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
@pytest.mark.parametrize("name", list(ACTIVATIONS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_forward_and_backward_match_reference(backend, device, name, dtype, layout):
    op, ref_op, ref_backward = ACTIVATIONS[name]
    gen = torch.Generator().manual_seed(hash((name, str(dtype), layout)) % 2**31)
    for shape in SHAPES:
        x = make_input(shape, dtype, device, layout, gen).requires_grad_()
        grad = make_input(shape, dtype, device, layout, gen, scale=1.0)
        poison_for(x)
        with on_backend(backend):
            out = op(x)
        _expected_layout(x, out)
        x64 = x.detach().double()
        ref = ref_op(x64)
        assert_close_to_reference(out, ref, FORWARD_TOL[dtype], f"{name} forward {shape}")
        poison_for(x)
        (gx,) = torch.autograd.grad(out, x, grad)
        gref = ref_backward(grad.double(), x64)
        assert gx.dtype == dtype
        assert_close_to_reference(gx, gref, BACKWARD_TOL[dtype], f"{name} backward {shape}")


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_gradcheck_float64(backend, device, name):
    op = ACTIVATIONS[name][0]
    # Keep points away from the kinks at +-3, where finite differences straddle two slopes.
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, device=device) * 4
    x = torch.where((x.abs() - 3).abs() < 1e-3, x + 0.01, x).requires_grad_()
    with on_backend(backend):
        assert torch.autograd.gradcheck(op, (x,))


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_backward_saves_only_the_input(backend, device, name):
    op = ACTIVATIONS[name][0]
    x = torch.randn(4, 6, 5, 3, device=device, requires_grad=True)
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    with on_backend(backend), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = op(x)
    assert len(saved) == 1 and saved[0] is x, [tuple(t.shape) for t in saved]
    out.sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_special_values_and_empty(backend, device, name):
    op, ref_op, _ = ACTIVATIONS[name]
    x = torch.tensor([-1e30, -3.0, -2.999, 0.0, 2.999, 3.0, 3.001, 1e30, float("inf"),
                      float("-inf")], device=device)
    with on_backend(backend):
        out = op(x)
        empty = op(torch.empty(0, 3, 4, device=device))
        scalar = op(torch.tensor(1.5, device=device))
    torch.testing.assert_close(out, ref_op(x), rtol=1e-6, atol=1e-6, equal_nan=True)
    assert empty.shape == (0, 3, 4)
    torch.testing.assert_close(scalar, ref_op(torch.tensor(1.5, device=device)))


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
def test_backward_with_grad_in_another_layout(backend, device):
    # channels_last input, contiguous incoming gradient: kernels must not pair mismatched storage.
    x = make_input((2, 5, 4, 3), torch.float32, device, "channels_last").requires_grad_()
    grad = torch.randn(2, 5, 4, 3, device=device)
    with on_backend(backend):
        out = mobilefuse.ops.hardswish(x)
    (gx,) = torch.autograd.grad(out, x, grad)
    gref = ref.hardswish_backward(grad.double(), x.detach().double())
    assert_close_to_reference(gx, gref, BACKWARD_TOL[torch.float32], "hardswish backward")


@pytest.mark.parametrize("name", list(ACTIVATIONS))
@pytest.mark.parametrize("grad", [False, True], ids=["no-grad", "grad"])
def test_auto_runs_pytorchs_kernel_on_cpu(name, grad):
    """Backend "auto" leaves CPU activations to PyTorch's kernel (cheaper per call, as fast in
    bulk), named mobilefuse::<op> in the trace; backend "cpu" runs mobilefuse's."""
    op, ref_op, _ = ACTIVATIONS[name]
    x = make_input((2, 7, 5, 3), torch.float32, "cpu", "channels_last").requires_grad_(grad)
    outs = []
    calls = profiled_calls(lambda: outs.append(op(x)))
    assert calls[f"aten::{name}"] == 1 and calls[f"mobilefuse::{name}"] == 1
    with on_backend("cpu"):
        kernel_calls = profiled_calls(lambda: outs.append(op(x)))
    assert kernel_calls[f"aten::{name}"] == 0 and kernel_calls[f"mobilefuse::{name}"] == 1
    for out in outs:
        _expected_layout(x, out)
        assert_close_to_reference(out, ref_op(x.detach().double()), FORWARD_TOL[torch.float32],
                                  f"{name} on auto and cpu")
