"""Every mobilefuse op and backward shows up by name (``mobilefuse::<op>``) in profiler traces."""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import BACKEND_CASES, HAS_CUDA
from torch.profiler import ProfilerActivity
from torch.utils.flop_counter import FlopCounterMode

import mobilefuse
from mobilefuse import ops
from mobilefuse._ranges import op_range


def _traced_names(fn, device: str) -> set[str]:
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with torch.profiler.profile(activities=activities) as prof:
        fn()
    return {e.name for e in prof.events()}


def _block_args(device: str, requires_grad: bool) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(3)

    def t(*shape: int) -> torch.Tensor:
        return (torch.randn(shape, generator=g) * 0.3).to(device).requires_grad_(requires_grad)
    return (t(2, 6, 7, 5), t(12, 6), t(12), t(12, 1, 3, 3), t(12), t(6, 12), t(6),
            (t(3, 12), t(3), t(12, 3), t(12)))


def _run_every_op(device: str, backward: bool) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 7, 5, generator=g).to(device).requires_grad_(backward)
    w = torch.randn(6, 1, 3, 3, generator=g).to(device).requires_grad_(backward)
    se = [(torch.randn(shape, generator=g) * 0.3).to(device).requires_grad_(backward)
          for shape in ((3, 6), (3,), (6, 3), (6,))]
    outs = [ops.hardswish(x), ops.hardsigmoid(x), ops.channel_shuffle(x, 3),
            ops.depthwise_conv2d(x, w, None, padding=1, activation="relu6"),
            ops.squeeze_excite(x, *se)]
    block = _block_args(device, backward)
    outs.append(ops.inverted_residual(block[0], *block[1:7], block[7], activation="hardswish"))
    if backward:
        torch.autograd.backward([o.sum() for o in outs])


# Forward and backward dispatcher ops per backend, by the names the traces show.
_FORWARD = ("hardswish", "hardsigmoid", "channel_shuffle", "depthwise_conv2d", "squeeze_excite")
_BACKWARD = ("hardswish_backward", "hardsigmoid_backward", "depthwise_conv2d_backward",
             "squeeze_excite_backward")


def _expected(backend: str, backward: bool) -> set[str]:
    names = set(_FORWARD) | (set(_BACKWARD) if backward else set())
    if backend == "triton":  # the Triton custom ops carry a triton_ prefix; SE is one op
        names = {n if n.startswith("squeeze_excite") else "triton_" + n for n in names}
    return {"mobilefuse::" + n for n in names} | {"mobilefuse::inverted_residual"}


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("backend,device", BACKEND_CASES)
def test_every_op_is_named_in_the_trace(backend: str, device: str, backward: bool) -> None:
    with mobilefuse.use_backend(backend):
        names = _traced_names(lambda: _run_every_op(device, backward), device)
    missing = _expected(backend, backward) - names
    assert not missing, f"not in the trace: {sorted(missing)}"


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
def test_reference_fallbacks_are_named(backward: bool) -> None:
    with mobilefuse.use_backend("reference"):
        names = _traced_names(lambda: _run_every_op("cpu", backward), "cpu")
    expected = {"mobilefuse::" + n for n in _FORWARD} | {"mobilefuse::inverted_residual"}
    assert expected <= names, f"not in the trace: {sorted(expected - names)}"


def test_training_block_forward_and_backward_are_named() -> None:
    from mobilefuse.models import create_model

    model = mobilefuse.accelerate(create_model("mobilenet_v3_small", num_classes=10)).train()
    x = torch.randn(2, 3, 32, 32)
    names = _traced_names(lambda: model(x).sum().backward(), "cpu")
    # The SE gate's backward runs inside BatchNorm's backward (grad_scale, grad_shift), so
    # the block's training backward names BatchNorm + activation rather than an SE op.
    expected = {"mobilefuse::inverted_residual", "mobilefuse::inverted_residual_backward",
                "mobilefuse::depthwise_conv2d_backward", "mobilefuse::batch_norm_statistics",
                "mobilefuse::batch_norm_activation_backward", "mobilefuse::se_channel_sum"}
    assert expected <= names, f"not in the trace: {sorted(expected - names)}"


def test_op_range_is_free_without_a_profiler() -> None:
    # Unprofiled calls open nothing (a flag read); a profiler turns the range on.
    assert isinstance(op_range("depthwise_conv2d"), contextlib.nullcontext)
    with torch.profiler.profile(activities=[ProfilerActivity.CPU]) as prof:
        with op_range("depthwise_conv2d"):
            assert not isinstance(op_range("x"), contextlib.nullcontext)
    assert "mobilefuse::depthwise_conv2d" in {e.name for e in prof.events()}


@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
def test_ranges_reach_nvtx() -> None:
    # emit_nvtx turns the ranges on (what nsys shows); the ops must run unchanged inside it.
    x = torch.randn(2, 6, 7, 5, device="cuda")
    with torch.autograd.profiler.emit_nvtx():
        assert not isinstance(op_range("inverted_residual"), contextlib.nullcontext)
        block = _block_args("cuda", False)
        out = ops.inverted_residual(block[0], *block[1:7], block[7])
    torch.cuda.synchronize()
    assert torch.isfinite(out).all() and x.is_cuda


def _flops(fn) -> dict[str, int]:
    with FlopCounterMode(display=False) as counter:
        fn()
    return {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}


def test_flop_formulas_match_torch_counts() -> None:
    x = torch.randn(3, 10, 9, 7, requires_grad=True)
    w = torch.randn(10, 1, 5, 3, requires_grad=True)
    ours = _flops(lambda: ops.depthwise_conv2d(x, w, padding=(2, 1), stride=(2, 1)))
    theirs = _flops(lambda: torch.nn.functional.conv2d(x, w, padding=(2, 1), stride=(2, 1),
                                                       groups=10))
    out_elements = 3 * 10 * 5 * 7  # stride (2, 1): 9 rows -> 5, 7 columns stay
    assert ours["mobilefuse.depthwise_conv2d"] == theirs["aten.convolution"]
    assert ours["mobilefuse.depthwise_conv2d"] == 2 * out_elements * 15
    backward = _flops(lambda: ops.depthwise_conv2d(x, w, padding=1).sum().backward())
    assert backward["mobilefuse.depthwise_conv2d_backward"] == (
        2 * backward["mobilefuse.depthwise_conv2d"])
    se = [torch.randn(4, 10), torch.randn(4), torch.randn(10, 4), torch.randn(10)]
    counted = _flops(lambda: ops.squeeze_excite(x, *se))
    assert counted["mobilefuse.squeeze_excite"] == 4 * 3 * 4 * 10
    with torch.no_grad():  # one C++ call on CPU
        counted = _flops(lambda: ops.squeeze_excite(x, *se))
    assert counted["mobilefuse.se_inference"] == 4 * 3 * 4 * 10


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "efficientnet_b0", "mobilenet_v2"])
def test_accelerated_model_counts_the_same_flops(name: str) -> None:
    from mobilefuse.models import create_model

    model = create_model(name, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        eager = sum(_flops(lambda: model(x)).values())
        fused = sum(_flops(lambda: mobilefuse.accelerate(model)(x)).values())
    assert eager > 0 and fused == eager


def test_fused_expansion_counts_the_same_flops() -> None:
    # At 128x128 EfficientNet-B0's first 96-channel expansion (64x64) is over 1 MiB an image:
    # that block runs expand_depthwise, which counts the expansion, depthwise and SE FLOPs.
    from mobilefuse.models import create_model

    model = create_model("efficientnet_b0", num_classes=10).eval()
    x = torch.randn(1, 3, 128, 128).contiguous(memory_format=torch.channels_last)
    model = model.to(memory_format=torch.channels_last)
    with torch.no_grad():
        eager = sum(_flops(lambda: model(x)).values())
        fused = _flops(lambda: mobilefuse.accelerate(model)(x))
    assert fused.get("mobilefuse.expand_depthwise", 0) > 0
    assert sum(fused.values()) == eager
