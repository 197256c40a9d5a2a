"""squeeze_excite as one torch.library op over two heavy passes each way.

Forward: ``pooled = channel_sum(x) / HW`` (one read of x, float32 accumulation), the excitation
on the tiny ``(N, C)`` matrix (two GEMMs through torch), ``out = channel_affine(x, gate)`` (one
read, one write). Backward: ``t = channel_sum(grad, x)`` (the gate's gradient), the excitation's
backward on ``(N, C)``, ``grad_x = channel_affine(grad, gate, dpooled / HW)`` (one read, one
write). Only x and the per-(n, c) pooled means are saved; the gate is recomputed from them.

The heavy passes are per backend (``mobilefuse::se_channel_sum``/``se_channel_affine`` in C++ and
CUDA, ``mobilefuse::triton_se_*`` in Triton); the excitation is shared here.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from mobilefuse.kernels.layout import memory_format_of


def channel_sum(backend: str, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """Per-(n, c) sums over H, W of ``x`` (of ``x * y``), float32 (float64 for float64)."""
    if backend == "triton":
        return torch.ops.mobilefuse.triton_se_channel_sum(x, y)
    return torch.ops.mobilefuse.se_channel_sum(x, y)


def channel_affine(backend: str, x: torch.Tensor, scale: torch.Tensor,
                    shift: torch.Tensor | None) -> torch.Tensor:
    """``x * scale[n, c] (+ shift[n, c])`` in ``x``'s dtype and memory format, one pass."""
    if backend == "triton":
        return torch.ops.mobilefuse.triton_se_channel_affine(x, scale, shift)
    return torch.ops.mobilefuse.se_channel_affine(x, scale, shift)


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the per-(n, c) math runs in: float64 for float64, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def excite(pooled: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor,
            b2: torch.Tensor | None, activation: str, gate: str
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pre-activation, hidden, pre-gate, gate) for the pooled means, in pooled's dtype."""
    dtype = pooled.dtype
    pre = F.linear(pooled, w1.to(dtype), None if b1 is None else b1.to(dtype))
    hidden = F.relu(pre) if activation == "relu" else F.silu(pre)
    z = F.linear(hidden, w2.to(dtype), None if b2 is None else b2.to(dtype))
    s = torch.sigmoid(z) if gate == "sigmoid" else F.hardsigmoid(z)
    return pre, hidden, z, s


def _gate_slope(z: torch.Tensor, s: torch.Tensor, gate: str) -> torch.Tensor:
    if gate == "sigmoid":
        return s * (1 - s)
    # PyTorch's hardsigmoid slope: 1/6 strictly inside (-3, 3), else 0.
    return torch.where((z > -3) & (z < 3), torch.full_like(z, 1 / 6), torch.zeros_like(z))


def _activation_slope(pre: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "relu":
        return (pre > 0).to(pre.dtype)
    sig = torch.sigmoid(pre)
    return sig * (1 + pre * (1 - sig))


def _spatial(x: torch.Tensor) -> int:
    return x.shape[2] * x.shape[3]


def squeeze_excite_forward(x: torch.Tensor, w_reduce: torch.Tensor,
                           b_reduce: torch.Tensor | None, w_expand: torch.Tensor,
                           b_expand: torch.Tensor | None, activation: str, gate: str,
                           backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(``x * gate``, pooled means ``(N, C)``); weights as matrices; ``backend`` is
    ``"cpu"``, ``"cuda"`` or ``"triton"`` (which kernels run the heavy passes). The body of
    :func:`squeeze_excite_op`, which calls without a gradient may run directly: the custom
    op's own dispatch costs ~30 us a call, as much as the whole layer at batch 1 (on CPU such
    calls run ``mobilefuse::se_inference`` instead, the whole layer in one C++ call)."""
    out, pooled, _ = squeeze_excite_parts(x, w_reduce, b_reduce, w_expand, b_expand,
                                          activation, gate, backend)
    return out, pooled


def squeeze_excite_parts(x: torch.Tensor, w_reduce: torch.Tensor, b_reduce: torch.Tensor | None,
                         w_expand: torch.Tensor, b_expand: torch.Tensor | None, activation: str,
                         gate: str, backend: str
                         ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    """(``x * gate``, pooled means, the excitation's four (N, C) tensors as :func:`excite`
    returns them): the forward's passes with what a caller that keeps the excitation for its
    backward needs."""
    pooled = channel_sum(backend, x, None) / max(_spatial(x), 1)
    excitation = excite(pooled, w_reduce, b_reduce, w_expand, b_expand, activation, gate)
    return channel_affine(backend, x, excitation[3], None), pooled, excitation


@torch.library.custom_op("mobilefuse::squeeze_excite", mutates_args=())
def squeeze_excite_op(x: torch.Tensor, w_reduce: torch.Tensor, b_reduce: torch.Tensor | None,
                      w_expand: torch.Tensor, b_expand: torch.Tensor | None, activation: str,
                      gate: str, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`squeeze_excite_forward` as an op with autograd and a fake kernel."""
    return squeeze_excite_forward(x, w_reduce, b_reduce, w_expand, b_expand, activation, gate,
                                  backend)


@squeeze_excite_op.register_fake
def _(x, w_reduce, b_reduce, w_expand, b_expand, activation, gate, backend):
    return (torch.empty_like(x, memory_format=memory_format_of(x)),
            x.new_empty((x.shape[0], x.shape[1]), dtype=opmath_dtype(x.dtype)))


def gate_gradient_from_output(dot: torch.Tensor, z: torch.Tensor, s: torch.Tensor,
                              gate: str) -> torch.Tensor:
    """The gradient at the pre-gate ``z`` from ``dot``, the per-(n, c) sums of grad times the
    gated output ``x * s`` (instead of times ``x``): sigmoid's slope is s (1 - s), so
    ``dot * (1 - s)``; hardsigmoid's is 1/6 where -3 < z < 3 (there s > 0), so
    ``dot / (6 s)``, else 0."""
    if gate == "sigmoid":
        return dot * (1 - s)
    inside = (z > -3) & (z < 3) & (s > 0)
    return torch.where(inside, dot / (6 * torch.where(inside, s, 1)), torch.zeros_like(dot))


def excitation_backward(dz: torch.Tensor, pre: torch.Tensor, hidden: torch.Tensor,
                        pooled: torch.Tensor, w_reduce: torch.Tensor, w_expand: torch.Tensor,
                        activation: str, output_mask: list[bool]
                        ) -> tuple[torch.Tensor | None, ...]:
    """From ``dz``, the gradient at the pre-gate (N, C): gradients of the pooled means, then
    of w_reduce, b_reduce, w_expand, b_expand, in dz's dtype (None where output_mask, of those
    five, is False)."""
    dpre = (dz @ w_expand.to(dz.dtype)) * _activation_slope(pre, activation)
    return (dpre @ w_reduce.to(dz.dtype) if output_mask[0] else None,
            dpre.T @ pooled if output_mask[1] else None,
            dpre.sum(0) if output_mask[2] else None,
            dz.T @ hidden if output_mask[3] else None,
            dz.sum(0) if output_mask[4] else None)


@torch.library.custom_op("mobilefuse::squeeze_excite_backward", mutates_args=())
def squeeze_excite_backward_op(grad_out: torch.Tensor, x: torch.Tensor, pooled: torch.Tensor,
                               w_reduce: torch.Tensor, b_reduce: torch.Tensor | None,
                               w_expand: torch.Tensor, b_expand: torch.Tensor | None,
                               activation: str, gate: str, backend: str,
                               output_mask: list[bool]
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                          torch.Tensor]:
    """Gradients of x, w_reduce, b_reduce, w_expand, b_expand (empty where not asked for)."""
    pre, hidden, z, s = excite(pooled, w_reduce, b_reduce, w_expand, b_expand, activation,
                                gate)
    dz = channel_sum(backend, grad_out, x) * _gate_slope(z, s, gate)
    mask = [output_mask[0], output_mask[1], output_mask[2] and b_reduce is not None,
            output_mask[3], output_mask[4] and b_expand is not None]
    dpooled, *param_grads = excitation_backward(dz, pre, hidden, pooled, w_reduce, w_expand,
                                                activation, mask)
    # Distinct empty tensors: a custom op's outputs must not alias each other.
    grads = [x.new_empty(0) for _ in range(5)]
    if mask[0]:
        grads[0] = channel_affine(backend, grad_out, s, dpooled / max(_spatial(x), 1))
    for i, (g, param) in enumerate(zip(param_grads, (w_reduce, b_reduce, w_expand, b_expand),
                                       strict=True)):
        if mask[i + 1]:
            grads[i + 1] = g.to(param.dtype)
    return tuple(grads)


@squeeze_excite_backward_op.register_fake
def _(grad_out, x, pooled, w_reduce, b_reduce, w_expand, b_expand, activation, gate, backend,
      output_mask):
    fmt = memory_format_of(x)
    shapes = [x, w_reduce, b_reduce, w_expand, b_expand]
    return tuple(
        (torch.empty_like(t, memory_format=fmt) if i == 0 else torch.empty_like(t))
        if output_mask[i] and t is not None else x.new_empty(0) for i, t in enumerate(shapes))


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
    x, w_reduce, b_reduce, w_expand, b_expand, activation, gate, backend = inputs
    ctx.settings = (activation, gate, backend)
    ctx.has_bias = (b_reduce is not None, b_expand is not None)
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(x, output[1], w_reduce, b_reduce, w_expand, b_expand)


def _backward(ctx: Any, grad_out: torch.Tensor, _grad_pooled: torch.Tensor | None
              ) -> tuple[Any, ...]:
    x, pooled, w_reduce, b_reduce, w_expand, b_expand = ctx.saved_tensors
    needs = ctx.needs_input_grad
    mask = [needs[0], needs[1], needs[2] and ctx.has_bias[0], needs[3],
            needs[4] and ctx.has_bias[1]]
    if not any(mask):
        return (None,) * 8
    grads = squeeze_excite_backward_op(grad_out.contiguous(memory_format=memory_format_of(x)),
                                       x, pooled, w_reduce, b_reduce, w_expand, b_expand,
                                       *ctx.settings, mask)
    return (*(g if m else None for g, m in zip(grads, mask, strict=True)), None, None, None)


squeeze_excite_op.register_autograd(_backward, setup_context=_setup_context)
