"""channel_shuffle on every backend: bit-exact values, layouts kept, inverse backward."""

from __future__ import annotations

import pytest
import torch
from conftest import BACKEND_CASES, LAYOUTS, make_input, on_backend, poison_for

import mobilefuse
from mobilefuse.reference import channel_shuffle as reference_shuffle

SHUFFLE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64,
                  torch.int32, torch.int16, torch.uint8, torch.bool)
# (shape, groups): odd spatial sizes, groups 1 and C (identity shuffles), ShuffleNet's 2 and 3.
CASES = [((3, 12, 7, 5), 3), ((2, 6, 9, 11), 2), ((1, 10, 1, 1), 5), ((2, 4, 3, 3), 1),
         ((2, 4, 3, 3), 4), ((4, 24, 5, 3), 8)]


def _random(shape, dtype, device, layout, gen):
    x = make_input(shape, torch.float32, device, layout, gen, scale=50.0)
    if dtype == torch.bool:
        return x > 0
    return x.to(dtype)


def _expected_format(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
            memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
@pytest.mark.parametrize("dtype", SHUFFLE_DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_bit_exact_and_layout(backend, device, dtype, layout):
    gen = torch.Generator().manual_seed(7)
    for shape, groups in CASES:
        x = _random(shape, dtype, device, layout, gen)
        poison_for(x)
        with on_backend(backend):
            out = mobilefuse.ops.channel_shuffle(x, groups)
        expected = reference_shuffle(x, groups)
        assert out.dtype == dtype
        assert torch.equal(out, expected), f"{shape} groups={groups}: values differ"
        if layout == "channels_last":
            assert out.is_contiguous(memory_format=_expected_format(x)), out.stride()
        elif layout == "contiguous":
            assert out.is_contiguous()
        # Never the input, nor a view of it.
        assert out.data_ptr() != x.data_ptr() or out.numel() == 0


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
@pytest.mark.parametrize("shape", [(2, 6, 5), (2, 6, 3, 4, 5)], ids=["rank3", "rank5"])
def test_other_ranks(backend, device, shape):
    x = torch.randn(shape, device=device)
    with on_backend(backend):
        out = mobilefuse.ops.channel_shuffle(x, 3)
    assert torch.equal(out, reference_shuffle(x, 3))


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
@pytest.mark.parametrize("shape", [(0, 6, 3, 3), (2, 6, 0, 3), (2, 0, 3, 3)])
def test_empty_tensors(backend, device, shape):
    x = torch.randn(shape, device=device)
    groups = 3 if shape[1] else 2
    with on_backend(backend):
        out = mobilefuse.ops.channel_shuffle(x, groups)
        assert out.shape == x.shape
        x.requires_grad_()
        mobilefuse.ops.channel_shuffle(x, groups).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_backward_is_inverse_shuffle(backend, device, layout):
    x = make_input((2, 12, 5, 7), torch.float32, device, layout).requires_grad_()
    grad = make_input((2, 12, 5, 7), torch.float32, device, layout)
    with on_backend(backend):
        out = mobilefuse.ops.channel_shuffle(x, 3)
    (gx,) = torch.autograd.grad(out, x, grad)
    x_ref = x.detach().clone().requires_grad_()
    (gref,) = torch.autograd.grad(reference_shuffle(x_ref, 3), x_ref, grad)
    assert torch.equal(gx, gref)
    # Shuffling by g then by C // g is the identity.
    with on_backend(backend):
        back = mobilefuse.ops.channel_shuffle(mobilefuse.ops.channel_shuffle(x.detach(), 3), 4)
    assert torch.equal(back, x.detach())


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
def test_gradcheck_float64(backend, device):
    x = torch.randn(2, 6, 3, 5, dtype=torch.float64, device=device, requires_grad=True)
    with on_backend(backend):
        assert torch.autograd.gradcheck(lambda t: mobilefuse.ops.channel_shuffle(t, 2), (x,))


def test_output_does_not_alias_input_for_identity_shuffle():
    x = torch.randn(2, 4, 3, 3)
    out = mobilefuse.ops.channel_shuffle(x, 1)
    out.add_(1)
    assert not torch.equal(out, x)
