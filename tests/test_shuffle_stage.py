"""mobilefuse.nn.ShuffleStage and its op, concat_shuffle_chunks: the chunks bit for bit equal to
concat_shuffle's halves, the stage equal to nn.Sequential on the same units on every path it
takes or leaves, accelerate() swapping ShuffleNetV2 stages and restore() giving them back."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import (
    FORWARD_TOL,
    assert_close_to_reference,
    profiled_calls,
    randomize_norms,
)
from torch import nn

import mobilefuse
from mobilefuse.models.shufflenet import ShuffleV2Unit, shufflenet_v2_x0_5

CHUNKS = torch.ops.mobilefuse.concat_shuffle_chunks
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# Half widths: even, odd (one pair straddles the two chunks), one channel; odd image sizes.
SHAPES = [(2, 58, 7, 5), (3, 7, 5, 9), (1, 1, 3, 3), (2, 5, 1, 1)]


def _pair(shape, dtype, gen, layout=torch.channels_last):
    a, b = ((torch.randn(shape, generator=gen) * 10).to(dtype).contiguous(memory_format=layout)
            for _ in range(2))
    return a, b


def _expected(a, b):
    first, second = mobilefuse.ops.concat_shuffle(a, b).chunk(2, 1)
    return first, second


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_chunks_are_concat_shuffle_halves_bit_for_bit(dtype):
    gen = torch.Generator().manual_seed(0)
    for shape in SHAPES:
        a, b = _pair(shape, dtype, gen)
        first, second = CHUNKS(a, b)
        want_first, want_second = _expected(a, b)
        for got, want in ((first, want_first), (second, want_second)):
            assert got.dtype == dtype and got.shape == a.shape
            assert got.is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(got, want), f"{shape} {dtype}"


def test_chunks_read_channel_slices_and_other_layouts():
    gen = torch.Generator().manual_seed(1)
    whole = (torch.randn(2, 14, 6, 5, generator=gen)
             .contiguous(memory_format=torch.channels_last))
    kept, other = whole.chunk(2, 1)  # channel slices: pixels 14 elements apart
    nchw = torch.randn(2, 7, 6, 5, generator=gen)
    for a, b in ((kept, other), (kept, nchw), (nchw, nchw.transpose(2, 3).transpose(2, 3)),
                 (nchw[:, :, ::1, :], kept)):
        first, second = CHUNKS(a, b)
        want_first, want_second = _expected(a.contiguous(), b.contiguous())
        assert torch.equal(first, want_first) and torch.equal(second, want_second)


def test_chunks_of_an_empty_batch():
    a = torch.randn(0, 6, 4, 4)
    first, second = CHUNKS(a, a)
    assert first.shape == second.shape == (0, 6, 4, 4)


def test_chunks_opcheck():
    gen = torch.Generator().manual_seed(2)
    a, b = _pair((2, 5, 4, 3), torch.float32, gen)
    torch.library.opcheck(CHUNKS.default, (a, b))


@pytest.mark.parametrize("a,b,match", [
    (torch.randn(2, 3, 4), torch.randn(2, 3, 4), "rank 4"),
    (torch.randn(1, 3, 4, 4), torch.randn(1, 4, 4, 4), "shape"),
    (torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4).double(), "dtype"),
])
def test_chunks_reject_bad_inputs(a, b, match):
    with pytest.raises(RuntimeError, match=match):
        CHUNKS(a, b)


def _stage(*units: nn.Module) -> tuple[nn.Sequential, nn.Module]:
    """An accelerated nn.Sequential of ``units`` (eval mode) and its float64 twin."""
    torch.manual_seed(0)
    plain = nn.Sequential(*units).eval()
    randomize_norms(plain)
    return mobilefuse.accelerate(plain), copy.deepcopy(plain).double()


def _units(channels: int = 20, repeats: int = 3) -> list[ShuffleV2Unit]:
    """A ShuffleNetV2 stage: one stride-2 unit, then stride-1 units."""
    first = ShuffleV2Unit(channels // 2, channels, 2, nn.BatchNorm2d, nn.ReLU)
    rest = [ShuffleV2Unit(channels, channels, 1, nn.BatchNorm2d, nn.ReLU)
            for _ in range(repeats)]
    return [first, *rest]


@pytest.mark.parametrize("channels", [20, 14])  # halves of 10 and 7 channels
def test_stage_hands_halves_on_and_matches_float64(channels):
    stage, reference = _stage(*_units(channels))
    assert type(stage) is mobilefuse.nn.ShuffleStage
    x = torch.randn(2, channels // 2, 13, 11).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        # Units 1 and 2 hand halves to the next; unit 3 ends the stage; unit 0 has stride 2.
        calls = profiled_calls(lambda: stage(x))
        assert calls["mobilefuse::concat_shuffle_chunks"] == 2
        assert calls["mobilefuse::concat_shuffle"] == 2
        out = stage(x)
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert_close_to_reference(out, reference(x.double()), FORWARD_TOL[torch.float32],
                                  "stage")
        # The same units one by one: the same values bit for bit.
        assert torch.equal(out, nn.Sequential.forward(stage, x))


@pytest.mark.parametrize("case", ["grad", "nchw", "reference-backend", "compile"])
def test_stage_leaves_other_cases_to_sequential(case):
    stage, reference = _stage(*_units(12, 2))
    x = torch.randn(2, 6, 9, 9)
    if case != "nchw":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(case == "grad")
    if case == "reference-backend":
        with mobilefuse.use_backend("reference"):
            assert profiled_calls(lambda: stage(x))["mobilefuse::concat_shuffle_chunks"] == 0
    elif case == "compile":
        compiled = torch.compile(stage, fullgraph=True, backend="eager")
        with torch.no_grad():
            assert_close_to_reference(compiled(x), reference(x.double()),
                                      FORWARD_TOL[torch.float32], "compiled")
        return
    else:
        with torch.set_grad_enabled(case == "grad"):
            assert profiled_calls(lambda: stage(x))["mobilefuse::concat_shuffle_chunks"] == 0
    with torch.set_grad_enabled(case == "grad"):
        out = stage(x)
    assert_close_to_reference(out, reference(x.double()), FORWARD_TOL[torch.float32], case)
    if case == "grad":
        (grad,) = torch.autograd.grad(out.square().sum(), x)
        x_ref = x.detach().double().requires_grad_()
        (want,) = torch.autograd.grad(reference(x_ref).square().sum(), x_ref)
        assert_close_to_reference(grad, want, 1e-4, "input gradient")


def test_hooked_unit_and_other_children_run_as_they_are():
    units = _units(12, 4)
    stage, reference = _stage(units[0], units[1], units[2], nn.Identity(), units[3], units[4])
    assert type(stage) is mobilefuse.nn.ShuffleStage
    calls = []
    stage[2].register_forward_hook(lambda *args: calls.append("unit"))
    stage[3].register_forward_hook(lambda *args: calls.append("identity"))
    x = torch.randn(1, 6, 8, 7).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        # Only units 4 and 5 are linked: 1 cannot hand on to the hooked unit 2.
        assert profiled_calls(lambda: stage(x))["mobilefuse::concat_shuffle_chunks"] == 1
        out = stage(x)
    assert calls == ["unit", "identity"] * 2
    assert_close_to_reference(out, reference(x.double()), FORWARD_TOL[torch.float32], "stage")


def test_unit_pinned_to_the_reference_backend_is_not_linked():
    stage, reference = _stage(*_units(12, 2))
    stage[2].backend = "reference"
    x = torch.randn(1, 6, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert profiled_calls(lambda: stage(x))["mobilefuse::concat_shuffle_chunks"] == 0
        assert_close_to_reference(stage(x), reference(x.double()), FORWARD_TOL[torch.float32],
                                  "stage")


def test_sequential_without_two_linkable_units_stays():
    units = _units(12, 2)
    hooked, _ = _stage(units[0], units[1], nn.Identity(), units[2])
    assert type(hooked) is nn.Sequential
    model = nn.Sequential(_units(12, 1)[1])
    assert type(mobilefuse.accelerate(model.eval())) is nn.Sequential


def test_accelerate_swaps_shufflenet_stages_and_restore_gives_them_back():
    torch.manual_seed(0)
    model = shufflenet_v2_x0_5(num_classes=10).eval()
    randomize_norms(model)
    reference = copy.deepcopy(model).double()
    keys = list(model.state_dict())
    fast = mobilefuse.accelerate(model)
    for name in ("stage2", "stage3", "stage4"):
        assert type(getattr(fast, name)) is mobilefuse.nn.ShuffleStage
    assert list(fast.state_dict()) == keys
    x = torch.randn(2, 3, 65, 63).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert_close_to_reference(fast(x), reference(x.double()), FORWARD_TOL[torch.float32],
                                  "ShuffleNetV2")
    rows = {r.path: r for r in mobilefuse.accelerate_report(fast, show=False).rows}
    assert rows["stage2"].status == "swapped" and "concat_shuffle_chunks" in rows["stage2"].detail
    assert rows["stage2.1"].current == "ShuffleUnit"
    restored = mobilefuse.restore(fast)
    assert type(restored.stage2) is nn.Sequential
    assert type(restored.stage2[1]) is ShuffleV2Unit


def test_report_before_accelerate_lists_the_stage():
    model = shufflenet_v2_x0_5(num_classes=10).eval()
    rows = {r.path: r for r in mobilefuse.accelerate_report(model, show=False).rows}
    assert rows["stage3"].status == "would swap" and rows["stage3"].current == "ShuffleStage"
