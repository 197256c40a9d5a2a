"""concat_shuffle (ShuffleNetV2's concatenate-then-shuffle) on every backend: bit-exact values,
channel slices read in place, the output layout, the backward, bad inputs."""

from __future__ import annotations

import pytest
import torch
from conftest import BACKEND_CASES, LAYOUTS, make_input, on_backend

import mobilefuse
from mobilefuse.reference import concat_shuffle as reference_concat_shuffle

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.uint8,
          torch.bool)
# Odd sizes, one channel, one pixel, and a ShuffleNetV2 stage's half width.
SHAPES = [(3, 5, 7, 5), (2, 1, 9, 11), (1, 10, 1, 1), (2, 58, 6, 7)]


def _random(shape, dtype, device, layout, gen):
    x = make_input(shape, torch.float32, device, layout, gen, scale=50.0)
    return x > 0 if dtype == torch.bool else x.to(dtype)


def _halves(shape, dtype, device, layout, gen):
    """The two halves of a unit's input: channel slices of one tensor in ``layout``."""
    whole = _random((shape[0], 2 * shape[1], *shape[2:]), dtype, device, layout, gen)
    return whole.chunk(2, 1)


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_bit_exact_separate_inputs(backend, device, dtype, layout):
    gen = torch.Generator().manual_seed(3)
    for shape in SHAPES:
        a = _random(shape, dtype, device, layout, gen)
        b = _random(shape, dtype, device, layout, gen)
        with on_backend(backend):
            out = mobilefuse.ops.concat_shuffle(a, b)
        assert out.dtype == dtype and out.shape == (shape[0], 2 * shape[1], *shape[2:])
        assert torch.equal(out, reference_concat_shuffle(a, b)), f"{shape}: values differ"
        if backend == "cpu" and layout == "channels_last" and shape[1] > 1 and shape[2:] != (1, 1):
            assert out.is_contiguous(memory_format=torch.channels_last), out.stride()
        elif backend == "cpu" and layout != "channels_last":
            assert out.is_contiguous(), out.stride()


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.int64), ids=str)
@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_channel_slices_of_one_tensor(backend, device, dtype, layout):
    """The stride-1 unit's case: ``a`` is the input's first half, ``b`` a fresh tensor."""
    gen = torch.Generator().manual_seed(5)
    for shape in SHAPES:
        kept, _ = _halves(shape, dtype, device, layout, gen)
        fresh = _random(shape, dtype, device, layout, gen)
        for a, b in ((kept, fresh), (fresh, kept)):
            with on_backend(backend):
                out = mobilefuse.ops.concat_shuffle(a, b)
            assert torch.equal(out, reference_concat_shuffle(a, b)), f"{shape}: values differ"
            if backend == "cpu" and shape[1] > 1 and shape[2:] != (1, 1):
                fmt = torch.channels_last if layout == "channels_last" and a is kept else None
                if fmt is not None:
                    assert out.is_contiguous(memory_format=fmt), out.stride()


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
@pytest.mark.parametrize("shape", [(2, 3, 5), (2, 3, 4, 3, 5)], ids=["rank3", "rank5"])
def test_other_ranks(backend, device, shape):
    a, b = torch.randn(shape, device=device), torch.randn(shape, device=device)
    with on_backend(backend):
        out = mobilefuse.ops.concat_shuffle(a, b)
    assert torch.equal(out, reference_concat_shuffle(a, b))


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
@pytest.mark.parametrize("shape", [(0, 3, 3, 3), (2, 3, 0, 3), (2, 0, 3, 3)])
def test_empty_tensors(backend, device, shape):
    a = torch.randn(shape, device=device, requires_grad=True)
    b = torch.randn(shape, device=device, requires_grad=True)
    with on_backend(backend):
        out = mobilefuse.ops.concat_shuffle(a, b)
        assert out.shape == (shape[0], 2 * shape[1], *shape[2:])
        out.sum().backward()
    assert a.grad is not None and a.grad.shape == a.shape and b.grad.shape == b.shape


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_backward_splits_the_inverse_shuffle(backend, device, layout):
    gen = torch.Generator().manual_seed(11)
    whole = _random((2, 14, 5, 7), torch.float32, device, layout, gen).requires_grad_()
    kept, changed = whole.chunk(2, 1)
    fresh = changed * 2.0  # a computed branch output, as in a unit
    grad = _random((2, 14, 5, 7), torch.float32, device, layout, gen)
    with on_backend(backend):
        out = mobilefuse.ops.concat_shuffle(kept, fresh)
    (got,) = torch.autograd.grad(out, whole, grad)
    ref_whole = whole.detach().clone().requires_grad_()
    ref_kept, ref_changed = ref_whole.chunk(2, 1)
    (expected,) = torch.autograd.grad(reference_concat_shuffle(ref_kept, ref_changed * 2.0),
                                      ref_whole, grad)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
def test_gradcheck_float64(backend, device):
    a = torch.randn(2, 3, 3, 5, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(2, 3, 3, 5, dtype=torch.float64, device=device, requires_grad=True)
    with on_backend(backend):
        assert torch.autograd.gradcheck(mobilefuse.ops.concat_shuffle, (a, b))


def test_output_is_fresh():
    whole = torch.randn(2, 8, 3, 3)
    a, b = whole.chunk(2, 1)
    before = whole.clone()
    out = mobilefuse.ops.concat_shuffle(a, b)
    out.zero_()
    assert torch.equal(whole, before)


def test_opcheck():
    whole = torch.randn(2, 10, 5, 3).contiguous(memory_format=torch.channels_last)
    kept, _ = whole.chunk(2, 1)
    cases = [(torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)),
             (kept, torch.randn(2, 5, 5, 3).contiguous(memory_format=torch.channels_last)),
             (torch.randn(2, 3, 4, 5, requires_grad=True),
              torch.randn(2, 3, 4, 5, requires_grad=True))]
    for args in cases:
        torch.library.opcheck(torch.ops.mobilefuse.concat_shuffle.default, args)


def test_compile_fullgraph():
    whole = torch.randn(2, 12, 5, 3).contiguous(memory_format=torch.channels_last)

    def unit_end(x: torch.Tensor) -> torch.Tensor:
        kept, changed = x.chunk(2, 1)
        return mobilefuse.ops.concat_shuffle(kept, torch.relu(changed))

    compiled = torch.compile(unit_end, fullgraph=True, backend="eager")
    kept, changed = whole.chunk(2, 1)
    assert torch.equal(compiled(whole), reference_concat_shuffle(kept, torch.relu(changed)))


@pytest.mark.parametrize("a,b,error,match", [
    (torch.randn(2, 3, 4, 4), torch.randn(2, 4, 4, 4), ValueError, "b must have the shape of a"),
    (torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4).double(), TypeError,
     "b must have the dtype of a"),
    (torch.randn(2, 3), torch.randn(2, 3), ValueError, "a must have rank >= 3"),
    ([1.0], torch.randn(2, 3, 4), TypeError, "a must be a torch.Tensor"),
    (torch.randn(2, 3, 4), None, TypeError, "b must be a torch.Tensor"),
    (torch.randn(2, 3, 4), torch.randn(2, 3, 4, device="meta"), ValueError, "one device"),
])
def test_bad_inputs(a, b, error, match):
    with pytest.raises(error, match=match):
        mobilefuse.ops.concat_shuffle(a, b)


def test_cpu_kernel_rejects_bad_inputs_itself():
    """The dispatcher op checks too (a caller of torch.ops skips the Python checks)."""
    with pytest.raises(RuntimeError, match="b must have the shape of a"):
        torch.ops.mobilefuse.concat_shuffle(torch.randn(2, 3, 4, 4), torch.randn(2, 2, 4, 4))
    with pytest.raises(RuntimeError, match="b must have the dtype of a"):
        torch.ops.mobilefuse.concat_shuffle(torch.randn(2, 3, 4, 4),
                                            torch.randn(2, 3, 4, 4).half())
