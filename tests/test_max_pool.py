"""mobilefuse.nn.MaxPool2d and its CPU inference kernel: the same values as F.max_pool2d bit for
bit (NaN and infinities included), every path it leaves to nn.MaxPool2d, bad inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import profiled_calls
from torch import nn
from torch.nn.modules.utils import _pair

import mobilefuse

KERNEL = "mobilefuse::max_pool2d"  # the op's name in a profile

# (shape, kernel, stride, padding): the ResNet/ShuffleNet stem pool, odd sizes, padding at
# half the kernel, non-square windows, stride larger than the kernel, one-pixel outputs.
CASES = [((2, 24, 17, 15), 3, 2, 1), ((1, 5, 9, 9), (3, 2), (1, 2), (1, 1)),
         ((3, 3, 8, 7), 2, 2, 0), ((2, 7, 5, 6), 4, 3, 2), ((1, 33, 3, 3), 3, 1, 1),
         ((2, 4, 2, 2), 2, 4, 0), ((1, 1, 1, 1), 1, 1, 0)]
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _input(shape, dtype, gen, layout=torch.channels_last):
    return (torch.randn(shape, generator=gen) * 5).to(dtype).contiguous(memory_format=layout)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_op_matches_max_pool2d_bit_for_bit(dtype):
    gen = torch.Generator().manual_seed(0)
    for shape, kernel, stride, padding in CASES:
        x = _input(shape, dtype, gen)
        out = torch.ops.mobilefuse.max_pool2d(x, _pair(kernel), _pair(stride), _pair(padding))
        expected = F.max_pool2d(x, kernel, stride, padding)
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(out, expected), f"{shape} k={kernel} s={stride} p={padding}"


def test_op_takes_other_layouts():
    gen = torch.Generator().manual_seed(1)
    x = _input((2, 6, 11, 9), torch.float32, gen, torch.contiguous_format)
    for t in (x, x.transpose(2, 3), x[:, ::2]):
        out = torch.ops.mobilefuse.max_pool2d(t, [3, 3], [2, 2], [1, 1])
        assert torch.equal(out, F.max_pool2d(t, 3, 2, 1))


def test_nan_and_infinities_propagate_as_in_pytorch():
    gen = torch.Generator().manual_seed(2)
    x = _input((1, 16, 9, 9), torch.float32, gen)
    x[0, 3, 4, 4] = float("nan")
    x[0, 5, 0, 0] = float("inf")
    x[0, 7] = float("-inf")
    x[0, 9, 2, 2] = float("nan")
    x[0, 9, 2, 3] = float("inf")
    out = torch.ops.mobilefuse.max_pool2d(x, [3, 3], [2, 2], [1, 1])
    expected = F.max_pool2d(x, 3, 2, 1)
    assert torch.equal(out.isnan(), expected.isnan()) and out.isnan().any()
    assert torch.equal(out.nan_to_num(0.0), expected.nan_to_num(0.0))


def test_empty_batch():
    x = torch.randn(0, 4, 7, 7).contiguous(memory_format=torch.channels_last)
    assert torch.ops.mobilefuse.max_pool2d(x, [3, 3], [2, 2], [1, 1]).shape == (0, 4, 4, 4)


def test_opcheck():
    x = torch.randn(2, 5, 9, 8).contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.mobilefuse.max_pool2d.default, (x, [3, 3], [2, 2], [1, 1]))


@pytest.mark.parametrize("args,match", [
    ((torch.randn(2, 3, 4), [2, 2], [2, 2], [0, 0]), "rank 4"),
    ((torch.randint(0, 5, (1, 2, 4, 4)), [2, 2], [2, 2], [0, 0]), "float16, bfloat16"),
    ((torch.randn(1, 2, 4, 4), [0, 2], [2, 2], [0, 0]), "positive"),
    ((torch.randn(1, 2, 4, 4), [2, 2], [2, 2], [2, 0]), "half the kernel"),
    ((torch.randn(1, 2, 2, 2), [5, 5], [1, 1], [1, 1]), "smaller than the kernel"),
])
def test_op_rejects_bad_inputs(args, match):
    with pytest.raises(RuntimeError, match=match):
        torch.ops.mobilefuse.max_pool2d(*args)


def test_module_is_a_drop_in_and_runs_the_kernel_in_inference():
    pool = mobilefuse.nn.MaxPool2d(3, 2, 1)
    assert isinstance(pool, nn.MaxPool2d) and pool.state_dict() == {}
    x = torch.randn(2, 24, 15, 13).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert profiled_calls(lambda: pool(x))[KERNEL]
        assert torch.equal(pool(x), F.max_pool2d(x, 3, 2, 1))
    assert profiled_calls(lambda: pool(x))[KERNEL]  # grad mode on, but x needs no gradient


@pytest.mark.parametrize("case", ["grad", "nchw", "ceil_mode", "dilation", "indices",
                                  "reference-backend"])
def test_module_leaves_other_cases_to_nn_max_pool2d(case):
    kwargs = {"ceil_mode": case == "ceil_mode", "dilation": 2 if case == "dilation" else 1,
              "return_indices": case == "indices"}
    pool = mobilefuse.nn.MaxPool2d(3, 2, 1, **kwargs)
    eager = nn.MaxPool2d(3, 2, 1, **kwargs)
    x = torch.randn(2, 6, 12, 11)
    if case != "nchw":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(case == "grad")
    if case == "reference-backend":
        with mobilefuse.use_backend("reference"):
            assert not profiled_calls(lambda: pool(x))[KERNEL]
    else:
        assert not profiled_calls(lambda: pool(x))[KERNEL]
    out, expected = pool(x), eager(x)
    if case == "indices":
        assert torch.equal(out[1], expected[1])
        out, expected = out[0], expected[0]
    assert torch.equal(out, expected)
    if case == "grad":
        (got,) = torch.autograd.grad(out.sum(), x)
        (want,) = torch.autograd.grad(expected.sum(), x)
        assert torch.equal(got, want)


def test_accelerate_swaps_max_pool_and_restore_gives_it_back():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.MaxPool2d(3, 2, 1)).eval()
    fast = mobilefuse.accelerate(model)
    assert type(fast[2]) is mobilefuse.nn.MaxPool2d
    x = torch.randn(2, 3, 33, 31).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(fast(x), model(x))
    assert type(mobilefuse.restore(fast)[2]) is nn.MaxPool2d


def test_compiles_fullgraph():
    pool = mobilefuse.nn.MaxPool2d(3, 2, 1)
    x = torch.randn(2, 8, 9, 9).contiguous(memory_format=torch.channels_last)
    compiled = torch.compile(pool, fullgraph=True, backend="eager")
    with torch.no_grad():
        assert torch.equal(compiled(x), F.max_pool2d(x, 3, 2, 1))
