"""Bad input raises a clear exception that names the argument; nothing crashes or hangs."""

from __future__ import annotations

import pytest
import torch

import mobilefuse

ACTIVATIONS = [mobilefuse.ops.hardswish, mobilefuse.ops.hardsigmoid]


@pytest.mark.parametrize("op", ACTIVATIONS)
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.bool,
                                   torch.complex64])
def test_activations_reject_non_float_dtypes(op, dtype):
    x = torch.ones(2, 3, dtype=dtype)
    with pytest.raises(TypeError, match=r"x must have a floating dtype .* got torch\."):
        op(x)


@pytest.mark.parametrize("op", ACTIVATIONS)
def test_activations_reject_non_tensors(op):
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
        op([1.0, 2.0])


@pytest.mark.parametrize("groups,error,match", [
    (0, ValueError, "groups must be positive, got 0"),
    (-2, ValueError, "groups must be positive, got -2"),
    (4, ValueError, r"groups \(4\) must divide the channel count C=6"),
    (2.0, TypeError, "groups must be an int, got float"),
    (True, TypeError, "groups must be an int, got bool"),
])
def test_channel_shuffle_rejects_bad_groups(groups, error, match):
    with pytest.raises(error, match=match):
        mobilefuse.ops.channel_shuffle(torch.randn(2, 6, 3, 3), groups)


@pytest.mark.parametrize("shape", [(6,), (2, 6)])
def test_channel_shuffle_rejects_low_rank(shape):
    with pytest.raises(ValueError, match=r"x must have rank >= 3 \(N, C, \*\)"):
        mobilefuse.ops.channel_shuffle(torch.randn(shape), 2)


def test_module_rejects_bad_groups():
    with pytest.raises(ValueError, match="groups must be a positive int"):
        mobilefuse.nn.ChannelShuffle(0)


# The registered ops check again in C++/Python, for callers who skip mobilefuse.ops.
NATIVE_BACKWARD = ["hardswish_backward", "hardsigmoid_backward"]


@pytest.mark.parametrize("name", ["hardswish", "hardsigmoid", "triton_hardswish",
                                  "triton_hardsigmoid"])
def test_registered_forward_ops_reject_integers(name):
    with pytest.raises((RuntimeError, TypeError), match="x must"):
        getattr(torch.ops.mobilefuse, name)(torch.ones(3, dtype=torch.int64))


@pytest.mark.parametrize("prefix", ["", "triton_"])
@pytest.mark.parametrize("name", NATIVE_BACKWARD)
def test_registered_backward_ops_reject_mismatched_grad(prefix, name):
    op = getattr(torch.ops.mobilefuse, prefix + name)
    x = torch.randn(2, 3)
    with pytest.raises((RuntimeError, ValueError), match="grad_out"):
        op(torch.randn(3, 2), x)
    with pytest.raises((RuntimeError, TypeError), match="grad_out"):
        op(torch.randn(2, 3, dtype=torch.float64), x)


@pytest.mark.parametrize("name", ["channel_shuffle", "triton_channel_shuffle"])
def test_registered_shuffle_ops_check_groups(name):
    op = getattr(torch.ops.mobilefuse, name)
    with pytest.raises((RuntimeError, ValueError), match="must divide"):
        op(torch.randn(2, 6, 3, 3), 4)
    with pytest.raises((RuntimeError, ValueError), match="positive"):
        op(torch.randn(2, 6, 3, 3), 0)
    with pytest.raises((RuntimeError, ValueError), match="rank"):
        op(torch.randn(2, 6), 2)


@pytest.mark.parametrize("name", ["hardswish_backward", "triton_hardswish_backward"])
def test_backward_ops_reject_mixed_devices(name):
    op = getattr(torch.ops.mobilefuse, name)
    with pytest.raises(RuntimeError, match="grad_out is on meta but x is on cpu"):
        op(torch.randn(2, 3, device="meta"), torch.randn(2, 3))


# depthwise_conv2d: every bad argument named, with what was expected.
def _dw(x=None, w=None, b=None, stride=1, padding=1, dilation=1, activation=None):
    x = torch.randn(2, 4, 8, 8) if x is None else x
    w = torch.randn(4, 1, 3, 3) if w is None else w
    return mobilefuse.ops.depthwise_conv2d(x, w, b, stride, padding, dilation, activation)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"w": torch.randn(4, 3, 3)}, ValueError, r"weight must have shape \(C, 1, kh, kw\) with C=4"),
    ({"w": torch.randn(4, 2, 3, 3)}, ValueError, r"weight must have shape \(C, 1, kh, kw\)"),
    ({"w": torch.randn(6, 1, 3, 3)}, ValueError, r"weight must have shape .* got \(6, 1, 3, 3\)"),
    ({"b": torch.randn(5)}, ValueError, r"bias must have shape \(4,\), got \(5,\)"),
    ({"x": torch.randn(4, 8, 8)}, ValueError, r"x must have rank 4 \(N, C, H, W\)"),
    ({"stride": 0}, ValueError, "stride must be >= 1, got 0"),
    ({"stride": (1, 2, 3)}, TypeError, "stride must be an int or a pair of ints"),
    ({"dilation": 0}, ValueError, "dilation must be >= 1, got 0"),
    ({"padding": -1}, ValueError, "padding must be >= 0, got -1"),
    ({"padding": "full"}, ValueError, "padding must be an int, a pair of ints, 'same' or 'valid'"),
    ({"padding": "same", "stride": 2}, ValueError, "padding='same' needs stride 1"),
    ({"activation": "gelu"}, ValueError, "activation must be one of None, 'relu'"),
    ({"x": torch.ones(2, 4, 8, 8, dtype=torch.int64)}, TypeError,
     r"x must have a floating dtype .* got torch.int64"),
    ({"w": torch.randn(4, 1, 3, 3, dtype=torch.float64)}, TypeError,
     "weight must have x's dtype torch.float32, got torch.float64"),
    ({"b": torch.randn(4, dtype=torch.float16)}, TypeError, "bias must have x's dtype"),
    ({"w": torch.randn(4, 1, 3, 3, device="meta")}, ValueError,
     "all tensors must be on one device, got x on cpu, weight on meta"),
    ({"w": torch.randn(4, 1, 11, 3), "padding": 1}, ValueError,
     r"the kernel \(dilated extent 11\) is larger than the padded input height 10"),
    ({"w": torch.randn(4, 1, 3, 3), "padding": 0, "dilation": 5}, ValueError,
     "larger than the padded input"),
])
def test_depthwise_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        _dw(**kwargs)


@pytest.mark.parametrize("stride", [True, 1.0, (1, True), [1, 1.0]])
def test_depthwise_checked_calls_do_not_admit_equal_bad_values(stride):
    # Checked settings are remembered by value, and True == 1.0 == 1: a valid call first must
    # not let its look-alikes through.
    x, w = torch.randn(2, 4, 8, 8), torch.randn(4, 1, 3, 3)
    _dw(x, w, stride=1)
    _dw(x, w, stride=(1, 1))
    with pytest.raises(TypeError, match="stride must be an int or a pair of ints"):
        _dw(x, w, stride=stride)


def test_depthwise_checked_calls_still_check_new_tensors():
    x, w = torch.randn(2, 4, 8, 8), torch.randn(4, 1, 3, 3)
    _dw(x, w)
    with pytest.raises(TypeError, match="weight must have x's dtype"):
        _dw(x, w.double())
    with pytest.raises(ValueError, match="all tensors must be on one device"):
        _dw(x, w.to("meta"))
    with pytest.raises(ValueError, match="bias must have shape"):
        _dw(x, w, torch.randn(5))


@pytest.mark.parametrize("name", ["depthwise_conv2d", "triton_depthwise_conv2d"])
def test_registered_depthwise_ops_check_shapes(name):
    op = getattr(torch.ops.mobilefuse, name)
    x = torch.randn(2, 4, 8, 8)
    with pytest.raises((RuntimeError, ValueError), match="weight"):
        op(x, torch.randn(3, 1, 3, 3), None, [1, 1], [1, 1], [1, 1], "none")
    with pytest.raises((RuntimeError, ValueError), match="activation"):
        op(x, torch.randn(4, 1, 3, 3), None, [1, 1], [1, 1], [1, 1], "gelu")
