"""Property tests (hypothesis) for the CPU inference-only ops, which move or compare values
and so must match PyTorch bit for bit: concat_shuffle_chunks (mobilefuse.nn.ShuffleStage) and
max_pool2d (mobilefuse.nn.MaxPool2d), on any size, layout and dtype they accept."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from property_check import DTYPES, EXAMPLES_CHECKED, LAYOUTS, SIZES, run_property, tensors

from mobilefuse import reference


@st.composite
def _image_shapes(draw: st.DrawFn) -> tuple[int, int, int, int]:
    return (draw(st.sampled_from([0, 1, 2, 3])), draw(SIZES), draw(SIZES), draw(SIZES))


def test_concat_shuffle_chunks_are_the_shuffled_halves():
    @given(data=st.data())
    def prop(data: st.DataObject) -> None:
        n, c, h, w = data.draw(_image_shapes(), "shape")
        dtype, layout = data.draw(DTYPES, "dtype"), data.draw(LAYOUTS, "layout")
        if data.draw(st.booleans(), "channel halves of one tensor"):
            a, b = data.draw(tensors((n, 2 * c, h, w), dtype, "cpu", layout), "x").chunk(2, 1)
        else:
            a = data.draw(tensors((n, c, h, w), dtype, "cpu", layout), "a")
            b = data.draw(tensors((n, c, h, w), dtype, "cpu", layout), "b")
        with torch.no_grad():
            first, second = torch.ops.mobilefuse.concat_shuffle_chunks(a, b)
        want_first, want_second = reference.concat_shuffle(a, b).chunk(2, 1)
        for got, want in ((first, want_first), (second, want_second)):
            assert got.is_contiguous(memory_format=torch.channels_last)
            assert got.dtype == dtype and torch.equal(got, want), f"{(n, c, h, w)} {layout}"
        EXAMPLES_CHECKED["concat_shuffle_chunks", "cpu", "cpu"] += 1

    run_property(prop, "cpu", "cpu")


def test_max_pool2d_matches_pytorch():
    @given(data=st.data())
    def prop(data: st.DataObject) -> None:
        n, c, h, w = data.draw(_image_shapes(), "shape")
        kernel = [data.draw(st.integers(1, min(5, h)), "kh"),
                  data.draw(st.integers(1, min(5, w)), "kw")]
        stride = [data.draw(st.integers(1, 4), "sh"), data.draw(st.integers(1, 4), "sw")]
        padding = [data.draw(st.integers(0, k // 2), f"p{i}") for i, k in enumerate(kernel)]
        dtype, layout = data.draw(DTYPES, "dtype"), data.draw(LAYOUTS, "layout")
        x = data.draw(tensors((n, c, h, w), dtype, "cpu", layout, scale=5.0), "x")
        with torch.no_grad():
            out = torch.ops.mobilefuse.max_pool2d(x, kernel, stride, padding)
        expected = F.max_pool2d(x, kernel, stride, padding)
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(out, expected), f"{(n, c, h, w)} k={kernel} s={stride} p={padding}"
        EXAMPLES_CHECKED["max_pool2d", "cpu", "cpu"] += 1

    run_property(prop, "cpu", "cpu")
