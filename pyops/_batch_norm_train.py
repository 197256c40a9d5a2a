"""A BatchNorm in training mode and the activation after it as one autograd node, on CPU.

Eager training runs a BatchNorm as a statistics pass and a normalizing pass, the activation as
one more pass, and keeps the BatchNorm's output and the activation's output for the backward,
which is then two more ops (the activation's backward, BatchNorm's). Here the batch statistics
are one read (``mobilefuse::batch_norm_statistics``, which also updates the running statistics
as ``nn.BatchNorm2d`` does), normalizing and activating is one pass
(``mobilefuse::batch_norm_activation``), only the input is kept, and the backward is one op of
two passes that recomputes the pre-activation (``batch_norm_activation_backward``).
:class:`mobilefuse._fusion.FoldedBatchNorm2d` runs it in training mode where :func:`serves`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mobilefuse._autocast import autocast_dtype
from mobilefuse._block_train import batch_statistics
from mobilefuse.backends import kernel_backend
from mobilefuse.kernels.layout import memory_format_of


def serves(norm: nn.Module, x: torch.Tensor, backend: str) -> bool:
    """Whether ``norm`` (an ``nn.BatchNorm2d`` in training mode) runs as one CPU op on ``x``:
    a 4-D CPU tensor of the BatchNorm's dtype, no autocast, no ``torch.compile`` trace (which
    sees the layers), and ``backend`` choosing the CPU kernels."""
    weight = norm.weight
    return (norm.training and x.device.type == "cpu" and x.dim() == 4
            and (weight is None or weight.dtype == x.dtype)
            and not torch.compiler.is_compiling() and autocast_dtype(x.device) is None
            and kernel_backend(x.device, x.dtype, None if backend == "auto" else backend)
            == "cpu")


class BatchNormActivationFunction(torch.autograd.Function):
    """``act(batch_norm(x))`` on batch statistics; inputs x, weight, bias, the BatchNorm module
    (for its running statistics and settings) and the activation's name (or None)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None,
                bias: torch.Tensor | None, norm: nn.Module, activation: str | None
                ) -> torch.Tensor:
        mean, invstd = batch_statistics("cpu", norm, x)
        ctx.activation = activation or "none"
        ctx.save_for_backward(x, weight, bias, mean, invstd)
        return torch.ops.mobilefuse.batch_norm_activation(x, mean, invstd, weight, bias,
                                                          ctx.activation)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, bias, mean, invstd = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        affine = weight is not None and (need_w or need_b)
        grad = grad.contiguous(memory_format=memory_format_of(x))
        gx, gw, gb = torch.ops.mobilefuse.batch_norm_activation_backward(
            grad, x, mean, invstd, weight, bias, ctx.activation, [need_x, affine, affine])
        return (gx if need_x else None, gw if affine and need_w else None,
                gb if affine and need_b and bias is not None else None, None, None)


def batch_norm_activation_train(norm: nn.Module, x: torch.Tensor, activation: str | None
                                ) -> torch.Tensor:
    """``act(norm(x))`` for a BatchNorm in training mode, where :func:`serves` says so."""
    return BatchNormActivationFunction.apply(x, norm.weight, norm.bias, norm, activation)
