"""Property tests (hypothesis) for squeeze_excite and inverted_residual: sizes (batch 0, 1x1
maps, primes), weight forms, options, layouts and dtypes; the result and every gradient
against the float64 reference on every backend."""

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

CHANNELS = st.sampled_from([1, 2, 3, 5, 8, 13, 16, 17, 24])
BATCH = st.sampled_from([0, 1, 2, 3])
SE_OPTIONS = {"activation": st.sampled_from(["relu", "silu"]),
              "gate": st.sampled_from(["sigmoid", "hardsigmoid"])}
ACTIVATION = st.sampled_from([None, "relu", "relu6", "hardswish", "silu"])


@st.composite
def _pointwise(draw: st.DrawFn, rows: int, cols: int, dtype: torch.dtype, device: str,
               ) -> torch.Tensor:
    """A 1x1 weight as a matrix or as a conv weight, either form the ops take."""
    shape = draw(st.sampled_from([(rows, cols), (rows, cols, 1, 1)]))
    return draw(tensors(shape, dtype, device, scale=cols ** -0.5))


@st.composite
def _bias(draw: st.DrawFn, size: int, dtype: torch.dtype, device: str) -> torch.Tensor | None:
    return draw(st.none() | tensors((size,), dtype, device, scale=0.3))


@st.composite
def _se_weights(draw: st.DrawFn, channels: int, dtype: torch.dtype, device: str) -> dict:
    reduced = draw(st.sampled_from([1, 2, 3, 4, 8]))
    return {"w_reduce": draw(_pointwise(reduced, channels, dtype, device)),
            "b_reduce": draw(_bias(reduced, dtype, device)),
            "w_expand": draw(_pointwise(channels, reduced, dtype, device)),
            "b_expand": draw(_bias(channels, dtype, device))}


@pytest.mark.parametrize("backend,device", PROPERTY_BACKENDS)
def test_squeeze_excite_matches_reference(backend, device):
    @given(data=st.data())
    def prop(data: st.DataObject) -> None:
        dtype, layout = data.draw(DTYPES, "dtype"), data.draw(LAYOUTS, "layout")
        shape = (data.draw(BATCH), data.draw(CHANNELS), data.draw(SIZES), data.draw(SIZES))
        inputs = {"x": data.draw(tensors(shape, dtype, device, layout, scale=2.0), "x"),
                  **data.draw(_se_weights(shape[1], dtype, device), "weights")}
        options = {k: data.draw(v, k) for k, v in SE_OPTIONS.items()}
        # A reduce weight's gradient sums gate gradients times pooled values over the batch,
        # which can cancel: errors scale by the size of the sums (magnitude), as the block's.
        check_against_reference(
            "squeeze_excite", lambda **t: mobilefuse.ops.squeeze_excite(**t, **options),
            lambda **t: reference.squeeze_excite(**t, **options), inputs, backend,
            tuple(inputs), magnitude=True, what=f"{shape} {dtype} {layout} {options}")

    run_property(prop, backend, device)


def _truncated_to_bfloat16(t: torch.Tensor) -> torch.Tensor:
    """``t`` rounded to float32, then to bfloat16 towards zero (dropping the low 16 bits), as
    Triton's interpreter stores float32 results into bfloat16 tensors. The gradient passes
    through unchanged, as it does through ``Tensor.to``."""
    bits = t.detach().float().view(torch.int32) & -65536
    return t + (bits.view(torch.float32).double() - t.detach())


def _block_rounded_like(dtype: torch.dtype, truncating_kernels: bool = False):
    """The float64 block reference, its intermediate maps rounded to ``dtype`` where the block
    rounds them (after each op). Without that, a half-precision intermediate a rounding away
    from an activation's kink (relu at 0, hard-swish at -3) takes the other side of it than in
    float64, and that element's gradient differs by the whole jump.

    ``truncating_kernels``: the depthwise and SE kernels round towards zero (Triton's
    interpreter in bfloat16); the 1x1 convolutions, on the vendor GEMM, round to nearest."""
    def rounded(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype).double()

    kernel_rounded = _truncated_to_bfloat16 if truncating_kernels else rounded

    def conv1x1(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
                activation: str | None) -> torch.Tensor:
        w = w if w.dim() == 4 else w[:, :, None, None]
        z = rounded(F.conv2d(h, w, b))
        return z if activation is None else rounded(reference.activation(z, activation))

    def block(x, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
              se_weights, stride, padding, dilation, activation, se_activation, se_gate,
              project_activation, residual):
        act1, act2 = activation if isinstance(activation, tuple) else (activation, activation)
        h = x
        if expand_weight is not None:
            h = conv1x1(h, expand_weight, expand_bias, act1)
        h = kernel_rounded(reference.depthwise_conv2d(h, dw_weight, dw_bias, stride, padding,
                                                      dilation, act2))
        if se_weights is not None:
            h = kernel_rounded(reference.squeeze_excite(h, *se_weights, se_activation, se_gate))
        out = conv1x1(h, project_weight, project_bias, project_activation)
        return rounded(out + x) if residual else out

    return block


@pytest.mark.parametrize("backend,device", PROPERTY_BACKENDS)
def test_inverted_residual_matches_reference(backend, device):
    @given(data=st.data())
    def prop(data: st.DataObject) -> None:
        dtype, layout = data.draw(DTYPES, "dtype"), data.draw(LAYOUTS, "layout")
        channels = data.draw(CHANNELS, "channels")
        mid = data.draw(st.sampled_from([channels, channels * 2, channels * 4, 7]), "mid")
        out_channels = data.draw(st.sampled_from([channels, 1, 8, 11]), "out channels")
        kernel = data.draw(st.sampled_from([(3, 3), (5, 5), (7, 7), (1, 1), (3, 1)]), "kernel")
        stride = data.draw(st.sampled_from([1, 2, (1, 2)]), "stride")
        dilation = data.draw(st.sampled_from([1, 1, 2]), "dilation")
        padding = data.draw(st.none() | st.integers(0, 3), "padding")
        span = [dilation * (k - 1) for k in kernel]
        pads = [s // 2 for s in span] if padding is None else [padding, padding]
        low = [max(1, s + 1 - 2 * p) for s, p in zip(span, pads, strict=True)]
        shape = (data.draw(BATCH, "batch"), channels,
                 data.draw(st.integers(low[0], low[0] + 10), "height"),
                 data.draw(st.integers(low[1], low[1] + 10), "width"))
        expand = mid != channels or data.draw(st.booleans(), "expand at M == C")
        inputs = {
            "x": data.draw(tensors(shape, dtype, device, layout), "x"),
            "expand_weight": data.draw(_pointwise(mid, channels, dtype, device)) if expand
            else None,
            "expand_bias": data.draw(_bias(mid, dtype, device)) if expand else None,
            "dw_weight": data.draw(tensors((mid, 1, *kernel), dtype, device,
                                           scale=1 / kernel[0])),
            "dw_bias": data.draw(_bias(mid, dtype, device)),
            "project_weight": data.draw(_pointwise(out_channels, mid, dtype, device)),
            "project_bias": data.draw(_bias(out_channels, dtype, device)),
        }
        se = data.draw(st.none() | _se_weights(mid, dtype, device), "se")
        if se is not None:
            inputs.update({f"se_{k}": v for k, v in se.items()})
        activation = data.draw(ACTIVATION | st.tuples(ACTIVATION, ACTIVATION), "activation")
        options = {"se_activation": data.draw(SE_OPTIONS["activation"]),
                   "se_gate": data.draw(SE_OPTIONS["gate"]),
                   "project_activation": data.draw(ACTIVATION, "project activation")}
        can_add = (out_channels == channels and stride == 1
                   and all(2 * p == s for p, s in zip(pads, span, strict=True)))
        residual = data.draw(st.sampled_from([None, False] + [True] * can_add), "residual")

        def split(t: dict) -> tuple[list, tuple | None]:
            names = ("x", "expand_weight", "expand_bias", "dw_weight", "dw_bias",
                     "project_weight", "project_bias")
            se_t = None if se is None else tuple(t[f"se_{k}"] for k in se)
            return [t[n] for n in names], se_t

        def op(**t):
            positional, se_t = split(t)
            return mobilefuse.ops.inverted_residual(
                *positional, se_t, stride=stride, padding=padding, dilation=dilation,
                activation=activation, residual=residual, **options)

        interpreted_bfloat16 = (backend, device, dtype) == ("triton", "cpu", torch.bfloat16)

        def ref(**t):
            positional, se_t = split(t)
            return _block_rounded_like(dtype, interpreted_bfloat16)(
                *positional, se_t, stride, pads, dilation, activation,
                options["se_activation"], options["se_gate"], options["project_activation"],
                can_add if residual is None else residual)

        # Triton's interpreter casts float32 to bfloat16 by truncation (its cast_impl ignores
        # the rounding mode; a GPU rounds to nearest), so each of the block's ops may be off
        # by one unit in the last place, always towards zero: allow four one-op tolerances.
        # Four ops in a row can cancel, so errors scale by the size of the sums (magnitude);
        # tests/test_inverted_residual.py checks fixed inputs against max |ref| alone.
        slack = 4.0 if interpreted_bfloat16 else 1.0
        check_against_reference(
            "inverted_residual", op, ref, inputs, backend,
            tuple(name for name, t in inputs.items() if t is not None), slack=slack,
            magnitude=True,
            what=f"{shape} {dtype} {layout} mid={mid} out={out_channels} k={kernel} "
                 f"stride={stride} dilation={dilation} padding={padding} {activation} "
                 f"se={se is not None} residual={residual} {options}")

    run_property(prop, backend, device)
