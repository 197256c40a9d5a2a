"""Property tests (hypothesis) for the elementwise ops, channel shuffle and concat_shuffle: any
rank, size, layout and dtype, values and gradients against the float64 reference on every
backend."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from property_check import (
    DTYPES,
    LAYOUTS,
    PROPERTY_BACKENDS,
    SIZES,
    check_against_reference,
    run_property,
    tensors,
)

import mobilefuse
from mobilefuse import reference


def _exact_hardsigmoid(x: torch.Tensor) -> torch.Tensor:
    # F.hardsigmoid's float64 backward scales by a float32 1/6 (3e-8 off); this form has the
    # same values, the same kinks and an exact derivative.
    return F.relu6(x + 3) / 6


ACTIVATIONS = {"hardswish": (mobilefuse.ops.hardswish, reference.hardswish),
               "hardsigmoid": (mobilefuse.ops.hardsigmoid, _exact_hardsigmoid)}
# channel_shuffle moves bits: integer and bool tensors too (forward only).
SHUFFLE_ONLY_DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool]


@st.composite
def _shapes(draw: st.DrawFn, min_rank: int) -> tuple[int, ...]:
    rank = draw(st.integers(min_rank, 5))
    batch = draw(st.sampled_from([0, 1, 2, 3]))
    return (batch, *(draw(SIZES) for _ in range(rank - 1)))


@pytest.mark.parametrize("name", list(ACTIVATIONS))
@pytest.mark.parametrize("backend,device", PROPERTY_BACKENDS)
def test_activation_matches_reference(name, backend, device):
    op, ref = ACTIVATIONS[name]

    @given(data=st.data())
    def prop(data: st.DataObject) -> None:
        shape = data.draw(_shapes(1), "shape")
        dtype, layout = data.draw(DTYPES, "dtype"), data.draw(LAYOUTS, "layout")
        # Values around the kinks at -3 and 3 as well as far from them.
        x = data.draw(tensors(shape, dtype, device, layout, scale=4.0), "x")
        check_against_reference(name, op, ref, {"x": x}, backend, ("x",),
                                what=f"{name} {shape} {dtype} {layout}")

    run_property(prop, backend, device)


@pytest.mark.parametrize("backend,device", PROPERTY_BACKENDS)
def test_channel_shuffle_matches_reference(backend, device):
    @given(data=st.data())
    def prop(data: st.DataObject) -> None:
        shape = list(data.draw(_shapes(3), "shape"))
        groups = data.draw(st.sampled_from([1, 2, 3, 4, 5]), "groups")
        shape[1] = groups * data.draw(st.integers(1, 6), "channels per group")
        dtype = data.draw(st.sampled_from([*DTYPES.elements, *SHUFFLE_ONLY_DTYPES]), "dtype")
        layout = data.draw(LAYOUTS, "layout")
        floating = dtype.is_floating_point
        x = data.draw(tensors(tuple(shape), dtype if floating else torch.float32, device,
                              layout, scale=4.0 if floating else 50.0), "x")
        if not floating:
            x = x.to(dtype)  # values -150..150 wrap or saturate: any bit pattern will do
        out = check_against_reference(
            "channel_shuffle", lambda x: mobilefuse.ops.channel_shuffle(x, groups),
            lambda x: reference.channel_shuffle(x, groups), {"x": x}, backend,
            ("x",) if floating else (), what=f"shuffle {shape} g={groups} {dtype} {layout}")
        # A shuffle moves values bit for bit.
        assert torch.equal(out, reference.channel_shuffle(x, groups))

    run_property(prop, backend, device)


@pytest.mark.parametrize("backend,device", PROPERTY_BACKENDS)
def test_concat_shuffle_matches_reference(backend, device):
    @given(data=st.data())
    def prop(data: st.DataObject) -> None:
        shape = data.draw(_shapes(3), "shape")
        dtype = data.draw(st.sampled_from([*DTYPES.elements, *SHUFFLE_ONLY_DTYPES]), "dtype")
        layout = data.draw(LAYOUTS, "layout")
        floating = dtype.is_floating_point
        # The two halves of one tensor (a unit's x.chunk(2, 1)) or two tensors.
        halves = data.draw(st.booleans(), "channel halves of one tensor")
        whole_shape = (shape[0], 2 * shape[1], *shape[2:]) if halves else shape
        made = [data.draw(tensors(whole_shape, dtype if floating else torch.float32, device,
                                  layout, scale=4.0 if floating else 50.0), name)
                for name in (("x",) if halves else ("a", "b"))]
        if not floating:
            made = [t.to(dtype) for t in made]
        a, b = made[0].chunk(2, 1) if halves else made
        out = check_against_reference(
            "concat_shuffle", mobilefuse.ops.concat_shuffle, reference.concat_shuffle,
            {"a": a, "b": b}, backend, ("a", "b") if floating else (),
            what=f"concat_shuffle {tuple(shape)} {dtype} {layout} halves={halves}")
        assert torch.equal(out, reference.concat_shuffle(a, b))

    run_property(prop, backend, device)
