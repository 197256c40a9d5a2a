"""torch.autocast: the convolution ops run in autocast's dtype (float32 accumulation) as
F.conv2d does, gradients reach float32 inputs in float32, and accelerated models work under
autocast in eval and training."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import (
    BACKEND_CASES,
    BACKWARD_TOL,
    FORWARD_TOL,
    HAS_CUDA,
    assert_close_to_reference,
    on_backend,
)

import mobilefuse
from mobilefuse import models, reference

LOW = torch.bfloat16
AUTOCAST_CASES = [pytest.param("cpu", torch.bfloat16, id="cpu-bfloat16")] + [
    pytest.param("cuda", dtype, id=f"cuda-{str(dtype)[6:]}",
                 marks=pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU"))
    for dtype in (torch.float16, torch.bfloat16)]


def _rand(*shape: int, seed: int, device: str, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale).to(device)


def _depthwise(x, w, b):
    return mobilefuse.ops.depthwise_conv2d(x, w, b, 1, 1, activation="hardswish")


def _depthwise_ref(x, w, b):
    return reference.depthwise_conv2d(x, w, b, 1, 1, 1, "hardswish")


def _se(x, w1, w2):
    return mobilefuse.ops.squeeze_excite(x, w1, None, w2, None, "silu", "hardsigmoid")


def _se_ref(x, w1, w2):
    return reference.squeeze_excite(x, w1, None, w2, None, "silu", "hardsigmoid")


def _block(x, ew, eb, dw, db, pw, w1, w2):
    return mobilefuse.ops.inverted_residual(x, ew, eb, dw, db, pw, None, (w1, None, w2, None),
                                            activation="relu6")


def _block_ref(x, ew, eb, dw, db, pw, w1, w2):
    return reference.inverted_residual(x, ew, eb, dw, db, pw, None, (w1, None, w2, None), 1, 1,
                                       1, "relu6", residual=True)


def _cases(device: str) -> dict:
    def r(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
        return _rand(*shape, seed=seed, device=device, scale=scale)

    x = r(2, 8, 11, 9, seed=10, scale=2.0)
    block = (r(2, 8, 11, 9, seed=0), r(24, 8, seed=1, scale=0.3), r(24, seed=2),
             r(24, 1, 3, 3, seed=3, scale=0.3), r(24, seed=4), r(8, 24, seed=5, scale=0.2),
             r(6, 24, seed=6, scale=0.2), r(24, 6, seed=7, scale=0.4))
    return {
        "depthwise_conv2d": (_depthwise, _depthwise_ref,
                             (x, r(8, 1, 3, 3, seed=11), r(8, seed=12))),
        "squeeze_excite": (_se, _se_ref, (x, r(3, 8, seed=13), r(8, 3, seed=14))),
        "inverted_residual": (_block, _block_ref, block),
    }


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
@pytest.mark.parametrize("op", ["depthwise_conv2d", "squeeze_excite", "inverted_residual"])
def test_conv_ops_run_in_autocast_dtype(op, backend, device):
    fn, ref_fn, inputs = _cases(device)[op]
    leaves = [t.requires_grad_() for t in inputs]
    with torch.autocast(device, LOW), on_backend(backend):
        out = fn(*leaves)
    assert out.dtype == LOW
    # The oracle: float64 on the inputs autocast hands the kernels (rounded to bfloat16).
    doubles = [t.detach().to(LOW).double().requires_grad_() for t in inputs]
    ref = ref_fn(*doubles)
    slack = 4.0 if op == "inverted_residual" else 1.0  # five ops round one after the other
    assert_close_to_reference(out, ref, FORWARD_TOL[LOW] * slack, f"{op} under autocast")
    grad = _rand(*out.shape, seed=99, device=device).to(LOW)
    with on_backend(backend):
        out.backward(grad)
    ref.backward(grad.double())
    for i, (t, d) in enumerate(zip(leaves, doubles, strict=True)):
        assert t.grad.dtype == torch.float32, f"{op}: grad {i} is {t.grad.dtype}"
        assert_close_to_reference(t.grad, d.grad, BACKWARD_TOL[LOW] * slack, f"{op} grad {i}")


@pytest.mark.parametrize("device,dtype", AUTOCAST_CASES)
def test_depthwise_dtype_follows_f_conv2d_under_autocast(device, dtype):
    x = _rand(2, 8, 9, 9, seed=0, device=device)
    w = _rand(8, 1, 3, 3, seed=1, device=device)
    with torch.autocast(device, dtype):
        ours = mobilefuse.ops.depthwise_conv2d(x, w, None, 1, 1)
        theirs = torch.nn.functional.conv2d(x, w, None, 1, 1, 1, 8)
    assert ours.dtype == theirs.dtype == dtype
    assert_close_to_reference(ours, theirs, FORWARD_TOL[dtype], "against F.conv2d")


@pytest.mark.parametrize("op", ["hardswish", "hardsigmoid"])
def test_elementwise_ops_keep_their_dtype_like_torch(op):
    x = _rand(2, 8, 5, 5, seed=0, device="cpu")
    with torch.autocast("cpu", LOW):
        assert getattr(mobilefuse.ops, op)(x).dtype == getattr(torch.nn.functional, op)(x).dtype
        assert mobilefuse.ops.channel_shuffle(x, 2).dtype == torch.float32


def test_compiled_op_casts_like_eager():
    x, w = _rand(2, 8, 9, 9, seed=0, device="cpu"), _rand(8, 1, 3, 3, seed=1, device="cpu")
    compiled = torch.compile(lambda a, b: mobilefuse.ops.depthwise_conv2d(a, b, None, 1, 1),
                             fullgraph=True)
    with torch.autocast("cpu", LOW):
        out = compiled(x, w)
    assert out.dtype == LOW
    ref = reference.depthwise_conv2d(x.to(LOW).double(), w.to(LOW).double(), None, 1, 1)
    assert_close_to_reference(out, ref, FORWARD_TOL[LOW], "compiled under autocast")


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.create_model("mobilenet_v3_small", num_classes=10)


def test_accelerated_model_in_eval_is_as_close_as_eager():
    model = _model().eval()
    with torch.no_grad():  # settle BatchNorm statistics away from their initial values
        model.train()(torch.randn(8, 3, 64, 64))
        model.eval()
    fast = mobilefuse.accelerate(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        exact = copy.deepcopy(model).double()(x.double())
        with torch.autocast("cpu", LOW):
            eager, ours = model(x), fast(x)
    assert ours.dtype == eager.dtype == LOW

    def err(t: torch.Tensor) -> float:
        return float((t.double() - exact).abs().max() / exact.abs().max())

    # bfloat16 rounding dominates both: the accelerated model may not be much further off.
    assert err(ours) <= 2 * err(eager) + FORWARD_TOL[LOW], (err(ours), err(eager))


def test_accelerated_model_trains_under_autocast():
    fast = mobilefuse.accelerate(_model().train())
    with torch.autocast("cpu", LOW):
        loss = fast(torch.randn(4, 3, 64, 64)).float().logsumexp(1).mean()
    loss.backward()
    grads = [p.grad for p in fast.parameters()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all()
               for g in grads)
