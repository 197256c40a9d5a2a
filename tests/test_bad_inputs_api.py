"""Bad input to every public function and module: a clear exception naming the argument and
what was expected (the elementwise ops and depthwise_conv2d: see test_bad_inputs.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import HAS_CUDA

import mobilefuse
from mobilefuse import models, ops
from mobilefuse import nn as mnn

X = torch.randn(2, 4, 5, 5)
DW = torch.randn(4, 1, 3, 3)
W_REDUCE, W_EXPAND = torch.randn(2, 4), torch.randn(4, 2)
PW = torch.randn(4, 4)


def _se(x=X, w_reduce=W_REDUCE, b_reduce=None, w_expand=W_EXPAND, b_expand=None, **options):
    return ops.squeeze_excite(x, w_reduce, b_reduce, w_expand, b_expand, **options)


def _block(x=X, dw=DW, pw=PW, **options):
    return ops.inverted_residual(x, None, None, dw, None, pw, None, **options)


SE_CASES = {
    "x not a tensor": (lambda: _se(x=X.tolist()), TypeError, "x must be a torch.Tensor"),
    "integer x": (lambda: _se(x=X.long()), TypeError, "x must have a floating dtype"),
    "rank 5": (lambda: _se(x=X[None]), ValueError, r"x must have rank 4 \(N, C, H, W\)"),
    "rank 3": (lambda: _se(x=X[0]), ValueError, r"x must have rank 4"),
    "w_reduce channels": (lambda: _se(w_reduce=torch.randn(2, 3)), ValueError,
                          r"w_reduce must have shape \(R, 4\)"),
    "w_reduce 3x3": (lambda: _se(w_reduce=torch.randn(2, 4, 3, 3)), ValueError,
                     r"w_reduce must have shape \(R, 4\)"),
    "w_reduce no rows": (lambda: _se(w_reduce=torch.randn(0, 4)), ValueError, "w_reduce"),
    "w_expand shape": (lambda: _se(w_expand=torch.randn(4, 3)), ValueError,
                       r"w_expand must have shape \(4, 2\)"),
    "b_reduce shape": (lambda: _se(b_reduce=torch.randn(3)), ValueError,
                       r"b_reduce must have shape \(2,\)"),
    "b_expand list": (lambda: _se(b_expand=[0.0] * 4), TypeError,
                      "b_expand must be a torch.Tensor"),
    "weight dtype": (lambda: _se(w_reduce=W_REDUCE.double()), TypeError,
                     "w_reduce must have x's dtype torch.float32"),
    "weight device": (lambda: _se(w_expand=W_EXPAND.to("meta")), ValueError,
                      "all tensors must be on one device"),
    "activation": (lambda: _se(activation="gelu"), ValueError,
                   "activation must be one of 'relu', 'silu', got 'gelu'"),
    "gate": (lambda: _se(gate="tanh"), ValueError,
             "gate must be one of 'sigmoid', 'hardsigmoid', got 'tanh'"),
}

BLOCK_CASES = {
    "integer x": (lambda: _block(x=X.int()), TypeError, "x must have a floating dtype"),
    "rank 3": (lambda: _block(x=X[0]), ValueError, "x must have rank 4"),
    "expand_bias alone": (lambda: ops.inverted_residual(X, None, torch.randn(4), DW, None, PW,
                                                        None),
                          ValueError, "expand_bias is given without expand_weight"),
    "expand_weight shape": (lambda: ops.inverted_residual(X, torch.randn(8, 3), None, DW, None,
                                                          PW, None),
                            ValueError, r"expand_weight must have shape \(M, 4\)"),
    "dw_weight channels": (lambda: _block(dw=torch.randn(5, 1, 3, 3)), ValueError,
                           r"dw_weight must have shape \(4, 1, kh, kw\)"),
    "dw_weight rank": (lambda: _block(dw=torch.randn(4, 3, 3)), ValueError, "dw_weight"),
    "project_weight shape": (lambda: _block(pw=torch.randn(4, 5)), ValueError,
                             r"project_weight must have shape \(O, 4\)"),
    "weight dtype": (lambda: _block(dw=DW.half()), TypeError, "dw_weight must have x's dtype"),
    "weight device": (lambda: _block(pw=PW.to("meta")), ValueError,
                      "all tensors must be on one device"),
    "stride 0": (lambda: _block(stride=0), ValueError, "stride must be >= 1"),
    "stride float": (lambda: _block(stride=1.5), TypeError, "stride must be an int or a pair"),
    "padding negative": (lambda: _block(padding=-1), ValueError, "padding must be >= 0"),
    "padding string": (lambda: _block(padding="same"), TypeError, "padding must be an int"),
    "dilation 0": (lambda: _block(dilation=0), ValueError, "dilation must be >= 1"),
    "kernel too large": (lambda: _block(dw=torch.randn(4, 1, 7, 7), padding=0), ValueError,
                         "larger than the padded input height"),
    "activation": (lambda: _block(activation="gelu"), ValueError,
                   "activation must be one of None, 'relu'"),
    "activation triple": (lambda: _block(activation=("relu",) * 3), ValueError,
                          "activation must be one of"),
    "project_activation": (lambda: _block(project_activation="elu"), ValueError,
                           "project_activation must be one of"),
    "residual not bool": (lambda: _block(residual="yes"), TypeError,
                          "residual must be None, True or False"),
    "residual impossible": (lambda: _block(stride=2, residual=True), ValueError,
                            "residual=True needs the output shape to equal x's"),
    "se_weights length": (lambda: _block(se_weights=(W_REDUCE, None, W_EXPAND)), TypeError,
                          r"se_weights must be None or a tuple \(w_reduce"),
    "se_weights shape": (lambda: _block(se_weights=(torch.randn(2, 3), None, W_EXPAND, None)),
                         ValueError, "w_reduce must have shape"),
    "se_gate": (lambda: _block(se_weights=(W_REDUCE, None, W_EXPAND, None), se_gate="x"),
                ValueError, "gate must be one of"),
    "se_activation": (lambda: _block(se_weights=(W_REDUCE, None, W_EXPAND, None),
                                     se_activation="tanh"),
                      ValueError, "activation must be one of 'relu', 'silu'"),
}

MODULE_CASES = {
    "ChannelShuffle groups": (lambda: mnn.ChannelShuffle(-1), ValueError,
                              "groups must be a positive int"),
    "ChannelShuffle forward": (lambda: mnn.ChannelShuffle(3)(X), ValueError,
                               r"groups \(3\) must divide the channel count C=4"),
    "HardSwish integer input": (lambda: mnn.HardSwish()(X.int()), TypeError,
                                "x must have a floating dtype"),
    "HardSigmoid non-tensor": (lambda: mnn.HardSigmoid()([1.0]), TypeError,
                               "x must be a torch.Tensor"),
    "DepthwiseConv2d channels": (lambda: mnn.DepthwiseConv2d(0, 3), ValueError,
                                 "channels must be a positive int"),
    "DepthwiseConv2d activation": (lambda: mnn.DepthwiseConv2d(4, 3, activation="gelu"),
                                   ValueError, "activation must be None or one of"),
    "DepthwiseConv2d forward": (lambda: mnn.DepthwiseConv2d(4, 3)(torch.randn(1, 3, 5, 5)),
                                ValueError, r"weight must have shape \(C, 1, kh, kw\) with C=3"),
    "DepthwiseConv2d.from_conv": (lambda: mnn.DepthwiseConv2d.from_conv(torch.nn.Conv2d(4, 4, 3)),
                                  ValueError, "conv must have groups == in_channels"),
    "SqueezeExcite channels": (lambda: mnn.SqueezeExcite(0, 2), ValueError,
                               "input_channels must be a positive int"),
    "SqueezeExcite activation": (lambda: mnn.SqueezeExcite(4, 2, "gelu"), ValueError,
                                 "activation must be 'relu' or 'silu'"),
    "SqueezeExcite forward": (lambda: mnn.SqueezeExcite(4, 2)(torch.randn(1, 3, 5, 5)),
                              ValueError, r"w_reduce must have shape \(R, 3\)"),
    "InvertedResidual channels": (lambda: mnn.InvertedResidual(0, 4), ValueError,
                                  "in_channels must be a positive int"),
    "InvertedResidual kernel": (lambda: mnn.InvertedResidual(4, 4, kernel_size=4), ValueError,
                                "kernel_size must be odd"),
    "InvertedResidual activation": (lambda: mnn.InvertedResidual(4, 4, activation="gelu"),
                                    ValueError, "activation must be one of"),
    "InvertedResidual expand_ratio": (lambda: mnn.InvertedResidual(4, 4, expand_ratio=0.5),
                                      ValueError, "expand_ratio must be >= 1"),
    "InvertedResidual drop_path": (lambda: mnn.InvertedResidual(4, 4, drop_path=1.5),
                                   ValueError, r"drop_path must be in \[0, 1\)"),
    "InvertedResidual residual": (lambda: mnn.InvertedResidual(4, 8, residual=True), ValueError,
                                  "residual=True needs stride 1"),
    "InvertedResidual eval forward": (
        lambda: mnn.InvertedResidual(4, 4).eval()(torch.randn(1, 3, 5, 5)), ValueError,
        r"x must have shape \(N, 4, H, W\), got shape \(1, 3, 5, 5\)"),
    "InvertedResidual train forward": (
        lambda: mnn.InvertedResidual(4, 4)(torch.randn(2, 4, 5)), ValueError,
        r"x must have shape \(N, 4, H, W\)"),
}

LINEAR = torch.nn.Linear(2, 2)
API_CASES = {
    "accelerate model": (lambda: mobilefuse.accelerate("model"), TypeError,
                         "model must be a torch.nn.Module, got str"),
    "accelerate backend": (lambda: mobilefuse.accelerate(LINEAR, backend="fast"), ValueError,
                           "backend must be one of"),
    "accelerate inplace": (lambda: mobilefuse.accelerate(LINEAR, inplace="yes"), TypeError,
                           "inplace must be True or False"),
    "restore model": (lambda: mobilefuse.restore(3), TypeError, "model must be a torch.nn.Module"),
    "accelerate_report model": (lambda: mobilefuse.accelerate_report(None), TypeError,
                                "model must be a torch.nn.Module"),
    "set_backend": (lambda: mobilefuse.set_backend("gpu"), ValueError, "backend must be one of"),
    "set_backend type": (lambda: mobilefuse.set_backend(1), TypeError, "backend must be a str"),
    "use_backend": (lambda: mobilefuse.use_backend("gpu").__enter__(), ValueError,
                    "backend must be one of"),
    "conv_cost c_in": (lambda: mobilefuse.analysis.conv_cost(0, 4, 3, 8, 8), ValueError,
                       "c_in must be a positive int"),
    "conv_cost float": (lambda: mobilefuse.analysis.conv_cost(4, 4.0, 3, 8, 8), ValueError,
                        "c_out must be a positive int"),
    "conv_cost stride": (lambda: mobilefuse.analysis.conv_cost(4, 4, 3, 8, 8, 0), ValueError,
                         "stride must be a positive int"),
    "se_gates model": (lambda: mobilefuse.analysis.se_gates("m", X), TypeError,
                       "model must be a torch.nn.Module"),
    "se_gates x": (lambda: mobilefuse.analysis.se_gates(torch.nn.Identity(), [1]), TypeError,
                   "x must be a torch.Tensor"),
    "profile model": (lambda: mobilefuse.profile("m", X), TypeError, "model must be an nn.Module"),
    "profile steps": (lambda: mobilefuse.profile(torch.nn.Identity(), X, steps=0), ValueError,
                      "steps must be an int >= 1"),
    "profile input": (lambda: mobilefuse.profile(torch.nn.Identity(), [1]), TypeError,
                      "example_input must be a tensor or a sequence of tensors"),
    "create_model name": (lambda: models.create_model("resnet9000"), ValueError,
                          "unknown model 'resnet9000'"),
}

ALL_CASES = {**{f"squeeze_excite: {k}": v for k, v in SE_CASES.items()},
             **{f"inverted_residual: {k}": v for k, v in BLOCK_CASES.items()},
             **{f"nn.{k}": v for k, v in MODULE_CASES.items()},
             **{f"api: {k}": v for k, v in API_CASES.items()}}


@pytest.mark.parametrize("case", list(ALL_CASES))
def test_bad_input_raises_a_clear_error(case):
    call, error, match = ALL_CASES[case]
    with pytest.raises(error, match=match):
        call()


@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
@pytest.mark.parametrize("op", ["depthwise_conv2d", "squeeze_excite", "inverted_residual"])
def test_tensors_on_cpu_and_gpu_are_refused(op):
    calls = {"depthwise_conv2d": lambda: ops.depthwise_conv2d(X.cuda(), DW),
             "squeeze_excite": lambda: _se(x=X.cuda()),
             "inverted_residual": lambda: _block(x=X.cuda())}
    with pytest.raises(ValueError, match="all tensors must be on one device"):
        calls[op]()
