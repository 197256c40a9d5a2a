"""torch.library.opcheck on every mobilefuse op, forward and backward, in several layouts."""

from __future__ import annotations

import pytest
import torch
from conftest import HAS_CUDA

import mobilefuse  # noqa: F401  (registers fake kernels and autograd)

DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])


def _inputs(device: str) -> list[torch.Tensor]:
    x = torch.randn(2, 6, 5, 3, device=device)
    channels_last = x.contiguous(memory_format=torch.channels_last)
    return [x, channels_last, x[..., ::2], torch.randn(7, device=device)]


def _activation_samples(device: str, backward: bool) -> list[tuple]:
    samples = []
    for x in _inputs(device):
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            xd = x.to(dtype)
            if backward:
                samples.append((torch.randn_like(xd), xd))
            else:
                samples.append((xd.requires_grad_(),))
    return samples


def _op(name: str):
    return getattr(torch.ops.mobilefuse, name).default


ACTIVATION_OPS = ["hardswish", "hardsigmoid", "triton_hardswish", "triton_hardsigmoid"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ACTIVATION_OPS)
def test_activation_ops(device, name):
    for args in _activation_samples(device, backward=False):
        torch.library.opcheck(_op(name), args)
    for args in _activation_samples(device, backward=True):
        torch.library.opcheck(_op(f"{name}_backward"), args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["channel_shuffle", "triton_channel_shuffle"])
def test_channel_shuffle_ops(device, name):
    for x in _inputs(device)[:3]:
        torch.library.opcheck(_op(name), (x.requires_grad_(), 3))
        torch.library.opcheck(_op(name), (x.detach().to(torch.bfloat16), 2))


def _depthwise_samples(device: str) -> list[tuple]:
    x = torch.randn(2, 5, 7, 6, device=device)
    w = torch.randn(5, 1, 3, 3, device=device)
    b = torch.randn(5, device=device)
    cl = x.contiguous(memory_format=torch.channels_last)
    return [
        (x, w, b, [1, 1], [1, 1], [1, 1], "relu"),
        (cl, w, None, [2, 2], [1, 1], [1, 1], "silu"),
        (x.double(), w.double(), b.double(), [1, 2], [0, 1], [2, 1], "hardswish"),
        (cl.to(torch.bfloat16), w.to(torch.bfloat16), b.to(torch.bfloat16), [1, 1], [2, 2],
         [2, 2], "relu6"),
    ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["depthwise_conv2d", "triton_depthwise_conv2d"])
def test_depthwise_ops(device, name):
    for x, w, b, *rest in _depthwise_samples(device):
        leaves = [t.clone().requires_grad_() if t is not None else None for t in (x, w, b)]
        torch.library.opcheck(_op(name), (*leaves, *rest))
        out = _op(name)(x, w, b, *rest)
        grad = torch.randn_like(out)
        for mask in ([True, True, b is not None], [False, True, False], [True, False, False]):
            torch.library.opcheck(_op(f"{name}_backward"), (grad, x, w, b, *rest, mask))


def _se_samples(device: str) -> list[tuple]:
    x = torch.randn(2, 6, 5, 3, device=device)
    cl = x.contiguous(memory_format=torch.channels_last)
    w1, b1 = torch.randn(3, 6, device=device), torch.randn(3, device=device)
    w2, b2 = torch.randn(6, 3, device=device), torch.randn(6, device=device)
    return [(x, w1, b1, w2, b2, "relu", "hardsigmoid"),
            (cl, w1, None, w2, b2, "silu", "sigmoid"),
            (x.double(), w1.double(), b1.double(), w2.double(), None, "relu", "sigmoid"),
            (cl.to(torch.bfloat16), w1.to(torch.bfloat16), b1.to(torch.bfloat16),
             w2.to(torch.bfloat16), b2.to(torch.bfloat16), "silu", "hardsigmoid")]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["native", "triton"])
def test_squeeze_excite_ops(device, backend):
    backend = ("cuda" if device == "cuda" else "cpu") if backend == "native" else backend
    for args in _se_samples(device):
        leaves = [t.clone().requires_grad_() if t is not None else None for t in args[:5]]
        torch.library.opcheck(_op("squeeze_excite"), (*leaves, *args[5:], backend))
        out, pooled = _op("squeeze_excite")(*args, backend)
        grad = torch.randn_like(out)
        for mask in ([True] * 5, [False, True, False, True, False], [True] + [False] * 4):
            torch.library.opcheck(_op("squeeze_excite_backward"),
                                  (grad, args[0], pooled, *args[1:], backend, mask))


def test_depthwise_squeeze_excite_op():
    # Inference only (no autograd): schema and fake tensor.
    utils = ("test_schema", "test_faketensor")
    dw = _depthwise_samples("cpu")
    for (x, w, b, *conv), (_, w1, b1, w2, b2, act, gate) in zip(dw, _se_samples("cpu"),
                                                                  strict=True):
        dtype = x.dtype
        w1, w2 = torch.randn(3, x.shape[1], dtype=dtype), torch.randn(x.shape[1], 3, dtype=dtype)
        b1 = None if b1 is None else torch.randn(3, dtype=dtype)
        b2 = None if b2 is None else torch.randn(x.shape[1], dtype=dtype)
        torch.library.opcheck(_op("depthwise_squeeze_excite"),
                              (x, w, b, *conv, w1, b1, w2, b2, act, gate), test_utils=utils)


def test_expand_depthwise_op():
    # Inference only (no autograd): schema and fake tensor, with and without the SE.
    utils = ("test_schema", "test_faketensor")
    for (x, w, b, *conv), (_, w1, b1, w2, b2, act, gate) in zip(
            _depthwise_samples("cpu"), _se_samples("cpu"), strict=True):
        dtype, c = x.dtype, x.shape[1]
        x_in = torch.randn(x.shape[0], 5, *x.shape[2:], dtype=dtype).contiguous(
            memory_format=torch.channels_last if x.is_contiguous(
                memory_format=torch.channels_last) else torch.contiguous_format)
        ew, eb = torch.randn(c, 5, 1, 1, dtype=dtype), torch.randn(c, dtype=dtype)
        w1, w2 = torch.randn(3, c, dtype=dtype), torch.randn(c, 3, dtype=dtype)
        b1 = None if b1 is None else torch.randn(3, dtype=dtype)
        b2 = None if b2 is None else torch.randn(c, dtype=dtype)
        torch.library.opcheck(_op("expand_depthwise"),
                              (x_in, ew, eb, "hardswish", w, b, *conv, w1, b1, w2, b2, act,
                               gate), test_utils=utils)
        torch.library.opcheck(_op("expand_depthwise"),
                              (x_in, ew, None, "relu", w, b, *conv, None, None, None, None,
                               "relu", "sigmoid"), test_utils=utils)


def test_se_inference_op():
    # Inference only (no autograd): schema and fake tensor.
    utils = ("test_schema", "test_faketensor")
    for args in _se_samples("cpu"):
        torch.library.opcheck(_op("se_inference"), args, test_utils=utils)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("prefix", ["", "triton_"])
def test_squeeze_excite_kernel_ops(device, prefix):
    # Kernels the squeeze_excite op calls inside; they carry no autograd of their own.
    utils = ("test_schema", "test_faketensor")
    for x in _inputs(device)[:3]:
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            xd = x.to(dtype)
            torch.library.opcheck(_op(f"{prefix}se_channel_sum"), (xd, None), test_utils=utils)
            torch.library.opcheck(_op(f"{prefix}se_channel_sum"), (xd, torch.randn_like(xd)),
                                  test_utils=utils)
            scale = torch.randn(xd.shape[:2], device=device)
            torch.library.opcheck(_op(f"{prefix}se_channel_affine"), (xd, scale, scale * 2),
                                  test_utils=utils)


def test_batch_norm_statistics_op():
    # Mutates the running statistics it is given (declared in its schema).
    utils = ("test_schema", "test_faketensor")
    for x in _inputs("cpu")[:3]:
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            xd = x.to(dtype)
            c = xd.shape[1]
            rdtype = torch.float64 if dtype == torch.float64 else torch.float32
            for running in ((torch.zeros(c, dtype=rdtype), torch.ones(c, dtype=rdtype)),
                            (None, None)):
                torch.library.opcheck(_op("batch_norm_statistics"),
                                      (xd, *running, 0.1, 1e-5), test_utils=utils)


def test_batch_norm_activation_ops():
    # CPU kernels of the fused block's training path, which carries the autograd.
    utils = ("test_schema", "test_faketensor")
    for x in _inputs("cpu")[:3]:
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            xd = x.to(dtype)
            pdtype = torch.float64 if dtype == torch.float64 else torch.float32
            c = xd.shape[1]
            mean, invstd = torch.randn(c, dtype=pdtype), torch.rand(c, dtype=pdtype) + 0.5
            for weight, bias, act in ((torch.rand(c, dtype=pdtype), torch.randn(c, dtype=pdtype),
                                       "silu"), (None, None, "none")):
                torch.library.opcheck(_op("batch_norm_activation"),
                                      (xd, mean, invstd, weight, bias, act), test_utils=utils)
                for mask in ([True, True, True], [False, True, False], [True, False, False]):
                    torch.library.opcheck(
                        _op("batch_norm_activation_backward"),
                        (torch.randn_like(xd), xd, mean, invstd, weight, bias, act, mask),
                        test_utils=utils)
                # The per-image gate on the output and the gradient's map (SE inside a block).
                gate, shift = torch.rand(xd.shape[:2]), torch.randn(xd.shape[:2])
                torch.library.opcheck(_op("batch_norm_activation"),
                                      (xd, mean, invstd, weight, bias, act, gate),
                                      test_utils=utils)
                torch.library.opcheck(
                    _op("batch_norm_activation_backward"),
                    (torch.randn_like(xd), xd, mean, invstd, weight, bias, act, [True] * 3,
                     gate, shift), test_utils=utils)
