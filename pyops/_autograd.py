"""Autograd formulas shared by the C++ and Triton ops. Every backward calls a mobilefuse op."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def register_activation_autograd(forward_op: Any, backward_op: Callable[..., torch.Tensor]) -> None:
    """Backward of ``forward_op(x)`` is ``backward_op(grad, x)``; only ``x`` is saved."""

    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        (x,) = inputs
        # Memory-efficient: keep the input, recompute the slope in backward.
        ctx.save_for_backward(x if ctx.needs_input_grad[0] else None)

    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor | None:
        (x,) = ctx.saved_tensors
        return None if x is None else backward_op(grad, x)

    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)


def register_shuffle_autograd(op: Any, shuffle: Callable[..., torch.Tensor]) -> None:
    """Backward of ``op(x, g)`` is the inverse shuffle ``shuffle(grad, C // g)``; nothing saved."""

    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        x, groups = inputs
        ctx.inverse_groups = max(1, x.shape[1] // groups)  # C == 0: any valid count

    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None
        return shuffle(grad, ctx.inverse_groups), None

    torch.library.register_autograd(op, backward, setup_context=setup_context)


def register_concat_shuffle_autograd(op: Any, shuffle: Callable[..., torch.Tensor]) -> None:
    """Backward of ``op(a, b)`` (``channel_shuffle(cat((a, b), 1), 2)``): the inverse shuffle
    ``shuffle(grad, C)`` split in halves; nothing saved."""

    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        ctx.half = max(1, inputs[0].shape[1])  # C == 0: any valid count

    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if not any(ctx.needs_input_grad[:2]):
            return None, None
        grad_a, grad_b = shuffle(grad, ctx.half).chunk(2, 1)
        return (grad_a if ctx.needs_input_grad[0] else None,
                grad_b if ctx.needs_input_grad[1] else None)

    torch.library.register_autograd(op, backward, setup_context=setup_context)


def register_depthwise_autograd(forward_op: Any, backward_op: Callable[..., Any]) -> None:
    """Backward of ``forward_op(x, w, b, stride, padding, dilation, act)`` is one call of
    ``backward_op``, which recomputes the pre-activation from ``x`` instead of storing it."""

    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        x, weight, bias, stride, padding, dilation, activation = inputs
        ctx.settings = (stride, padding, dilation, activation)
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight, bias)

    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        x, weight, bias = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        mask = [need_x, need_w, need_b and ctx.has_bias]
        if not any(mask):
            return None, None, None, None, None, None, None
        gx, gw, gb = backward_op(grad, x, weight, bias, *ctx.settings, mask)
        return (gx if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None,
                None, None, None, None)

    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)
