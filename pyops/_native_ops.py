"""Fake kernels and autograd for the ops whose schemas and kernels live in csrc/ (CPU, CUDA);
depthwise_conv2d carries its autograd in C++."""

from __future__ import annotations

import torch

from mobilefuse._autograd import (
    register_activation_autograd,
    register_concat_shuffle_autograd,
    register_shuffle_autograd,
)
from mobilefuse._extension import has_extension
from mobilefuse._fake import (
    activation_backward_fake,
    activation_fake,
    batch_norm_activation_backward_fake,
    batch_norm_activation_fake,
    batch_norm_statistics_fake,
    channel_shuffle_fake,
    concat_shuffle_chunks_fake,
    concat_shuffle_fake,
    depthwise_conv2d_backward_fake,
    depthwise_conv2d_fake,
    depthwise_squeeze_excite_fake,
    expand_depthwise_fake,
    max_pool2d_fake,
    se_channel_affine_fake,
    se_channel_sum_fake,
    se_inference_fake,
)


def _register() -> None:
    ops = torch.ops.mobilefuse
    for name in ("hardswish", "hardsigmoid"):
        torch.library.register_fake(f"mobilefuse::{name}")(activation_fake)
        torch.library.register_fake(f"mobilefuse::{name}_backward")(activation_backward_fake)
    torch.library.register_fake("mobilefuse::channel_shuffle")(channel_shuffle_fake)
    register_activation_autograd("mobilefuse::hardswish", ops.hardswish_backward)
    register_activation_autograd("mobilefuse::hardsigmoid", ops.hardsigmoid_backward)
    register_shuffle_autograd("mobilefuse::channel_shuffle", ops.channel_shuffle)
    torch.library.register_fake("mobilefuse::concat_shuffle")(concat_shuffle_fake)
    register_concat_shuffle_autograd("mobilefuse::concat_shuffle", ops.channel_shuffle)
    torch.library.register_fake("mobilefuse::depthwise_conv2d")(depthwise_conv2d_fake)
    torch.library.register_fake("mobilefuse::depthwise_conv2d_backward")(
        depthwise_conv2d_backward_fake)
    # depthwise_conv2d's autograd is registered in C++ (csrc/depthwise_autograd.cpp).
    # Called inside mobilefuse::squeeze_excite, which carries the autograd.
    torch.library.register_fake("mobilefuse::se_channel_sum")(se_channel_sum_fake)
    torch.library.register_fake("mobilefuse::se_channel_affine")(se_channel_affine_fake)
    # Inference only: squeeze_excite calls it on CPU when no gradient is recorded.
    torch.library.register_fake("mobilefuse::se_inference")(se_inference_fake)
    # The fused block's training path (mobilefuse/_block_train.py) carries the autograd.
    torch.library.register_fake("mobilefuse::batch_norm_activation")(batch_norm_activation_fake)
    torch.library.register_fake("mobilefuse::batch_norm_activation_backward")(
        batch_norm_activation_backward_fake)
    torch.library.register_fake("mobilefuse::batch_norm_statistics")(batch_norm_statistics_fake)
    # Inference only: the fused block calls it when no gradient is recorded.
    torch.library.register_fake("mobilefuse::depthwise_squeeze_excite")(
        depthwise_squeeze_excite_fake)
    # Inference only: the fused block's CPU plan calls it when no gradient is recorded.
    torch.library.register_fake("mobilefuse::expand_depthwise")(expand_depthwise_fake)
    # Inference only: mobilefuse.nn.MaxPool2d calls it when no gradient is recorded.
    torch.library.register_fake("mobilefuse::max_pool2d")(max_pool2d_fake)
    # Inference only: mobilefuse.nn.ShuffleStage calls it when no gradient is recorded.
    torch.library.register_fake("mobilefuse::concat_shuffle_chunks")(concat_shuffle_chunks_fake)


if has_extension():
    _register()
