"""Property tests (hypothesis) for depthwise_conv2d: any kernel, stride, padding, dilation,
activation, size (batch 0, 1x1 maps, primes), layout and dtype; the result and all three
gradients against the float64 reference on every backend. Inputs no kernel takes (a channel
multiplier, asymmetric "same" padding) must give the reference's answer through the fallback."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from property_check import (
    DTYPES,
    LAYOUTS,
    PROPERTY_BACKENDS,
    check_against_reference,
    run_property,
    tensors,
)

import mobilefuse
from mobilefuse import reference

ACTIVATIONS = st.sampled_from([None, "relu", "relu6", "hardswish", "silu"])
# Around the CPU kernel's vector widths (8 and 16 floats) as well as small primes.
CHANNELS = st.sampled_from([1, 2, 3, 5, 7, 8, 13, 15, 16, 17, 31, 33, 64])
PAIR = st.integers(1, 3) | st.tuples(st.integers(1, 3), st.integers(1, 3))


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else value


@st.composite
def depthwise_cases(draw: st.DrawFn, device: str) -> dict:
    """One call's arguments and whether a kernel takes it."""
    kernel = draw(st.sampled_from([(3, 3), (5, 5), (7, 7), (1, 1)])
                  | st.tuples(st.integers(1, 7), st.integers(1, 7)))
    stride, dilation = draw(PAIR), draw(PAIR)
    span = tuple(d * (k - 1) for d, k in zip(_pair(dilation), kernel, strict=True))
    named = ["valid", "same"] if _pair(stride) == (1, 1) else ["valid"]
    padding = draw(st.sampled_from(named) | st.integers(0, 3)
                   | st.tuples(st.integers(0, 3), st.integers(0, 3)))
    pads = (0, 0) if padding in ("same", "valid") else _pair(padding)
    # Smallest map the kernel fits in (padded), up to a dozen pixels more.
    low = [max(1, s + 1 - 2 * p) for s, p in zip(span, pads, strict=True)]
    height = draw(st.integers(low[0], low[0] + 12))
    width = draw(st.integers(low[1], low[1] + 12))
    channels, multiplier = draw(CHANNELS), draw(st.sampled_from([1, 1, 1, 1, 2]))
    dtype, layout = draw(DTYPES), draw(LAYOUTS)
    fallback = multiplier > 1 or (padding == "same" and any(s % 2 for s in span))
    if fallback and dtype in (torch.float16, torch.bfloat16):
        # The fallback is PyTorch's own half-precision convolution: its rounded
        # pre-activation may land across an activation's kink from the float64 one.
        dtype = torch.float32
    shape = (draw(st.sampled_from([0, 1, 2, 3])), channels, height, width)
    return {
        "x": draw(tensors(shape, dtype, device, layout, scale=2.0)),
        "weight": draw(tensors((channels * multiplier, 1, *kernel), dtype, device, scale=0.5)),
        "bias": draw(tensors((channels * multiplier,), dtype, device) | st.none()),
        "stride": stride, "padding": padding, "dilation": dilation,
        "activation": draw(ACTIVATIONS),
        "fallback": fallback,
    }


# PyTorch's own warning, from the reference's asymmetric "same" padding.
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("backend,device", PROPERTY_BACKENDS)
def test_depthwise_conv2d_matches_reference(backend, device):
    @given(case=depthwise_cases(device))
    def prop(case: dict) -> None:
        options = {k: case[k] for k in ("stride", "padding", "dilation", "activation")}
        x = case["x"]
        # The weight and bias gradients are sums over the batch and the map, which can cancel
        # (a bias gradient of 1e-3 from terms of order 1): errors scale by the size of the
        # sums (magnitude), as for squeeze-and-excitation and the block.
        check_against_reference(
            "depthwise_conv2d",
            lambda x, weight, bias: mobilefuse.ops.depthwise_conv2d(x, weight, bias, **options),
            lambda x, weight, bias: reference.depthwise_conv2d(
                x, weight, bias, options["stride"], options["padding"], options["dilation"],
                options["activation"]),
            {"x": x, "weight": case["weight"], "bias": case["bias"]}, backend,
            ("x", "weight", "bias"), fallback=case["fallback"], magnitude=True,
            what=f"{tuple(x.shape)} {x.dtype} strides {x.stride()} w {tuple(case['weight'].shape)}"
                 f" {options}")

    run_property(prop, backend, device)
