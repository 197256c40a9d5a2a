"""An inverted-residual block in training mode that keeps less for its backward than eager.

Eager autograd keeps, per block, every tensor an op needs for its backward: the expansion's
output, its BatchNorm's output, the activation's output, the depthwise output, its BatchNorm's
and activation's outputs and the squeeze-and-excitation's scaled output: about seven tensors
of the expanded width. This block keeps two of them, the expansion's and the depthwise
convolution's raw outputs, plus the block input, the projection's raw output, per-channel
statistics and the squeeze-and-excitation's per-(n, c) excitation (tiny: recomputing it cost
the backward two GEMMs and the custom op's dispatch). BatchNorm-then-activation is an
elementwise map once the batch statistics are known, so the backward recomputes it (one pass
each) where it needs the activations. Keeping the expansion's activation for the depthwise
gradient instead bought nothing: the recomputed map is still in cache when that gradient
reads it (AMD EPYC, 2 threads, batch 8, channels_last, training step, interleaved:
MobileNetV3-Large 78.9 -> 78.7 ms for 171 -> 241 MB kept, EfficientNet-B0 126.0 -> 125.4 ms
for 252 -> 361 MB; eager keeps 353 and 706 MB). On CPU
that map is one op forward (mobilefuse::batch_norm_activation) and BatchNorm's gradient takes
the activation's derivative in the same two passes (batch_norm_activation_backward); the batch
statistics take one read (batch_norm_statistics).

Forward and backward call the kernels eager does for the 1x1 convolutions
(``aten.convolution_backward``) and, off CPU, for the BatchNorm gradients
(``aten.native_batch_norm_backward``), and mobilefuse's kernels for the depthwise
convolution, the squeeze-and-excitation and the BatchNorm application; running statistics are
updated exactly as ``nn.BatchNorm2d`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mobilefuse._ranges import in_op_range
from mobilefuse._squeeze_excite import (
    channel_affine,
    channel_sum,
    excitation_backward,
    gate_gradient_from_output,
    squeeze_excite_backward_op,
    squeeze_excite_parts,
)
from mobilefuse.kernels.layout import memory_format_of
from mobilefuse.ops import INPLACE_ACTIVATIONS

# Activation gradients as eager computes them, from the pre-activation.
_ACTIVATION_BACKWARD = {
    "relu": lambda g, z: torch.ops.aten.threshold_backward(g, z, 0),
    "relu6": lambda g, z: torch.ops.aten.hardtanh_backward(g, z, 0.0, 6.0),
    "hardswish": torch.ops.aten.hardswish_backward,
    "silu": torch.ops.aten.silu_backward,
}
# The recomputation's activations: the torch functions the forward applied in place, so the
# recomputed values equal the forward's (ops.ACTIVATION_FUNCTIONS runs mobilefuse's hard-swish).
_ACTIVATION_OUT_OF_PLACE = {
    "relu": torch.relu, "relu6": F.relu6, "hardswish": F.hardswish, "silu": F.silu}


@dataclass(frozen=True)
class TrainPlan:
    """What the block runs, besides its tensors."""

    norms: tuple[nn.Module | None, nn.Module, nn.Module]
    activations: tuple[str | None, str | None, str | None]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    se: tuple[str, str] | None
    # The backend of the mobilefuse kernels: "cpu", "cuda" or "triton".
    backend: str


def _depthwise(backend: str) -> Any:
    return (torch.ops.mobilefuse.triton_depthwise_conv2d if backend == "triton"
            else torch.ops.mobilefuse.depthwise_conv2d)


def _depthwise_backward(backend: str) -> Any:
    return (torch.ops.mobilefuse.triton_depthwise_conv2d_backward if backend == "triton"
            else torch.ops.mobilefuse.depthwise_conv2d_backward)


def batch_statistics(backend: str, norm: nn.Module, t: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, 1 / std) of ``t`` per channel over the batch, updating ``norm``'s running
    statistics and batch counter as ``nn.BatchNorm2d.forward`` does in training mode. On CPU
    one read of ``t`` (mobilefuse::batch_norm_statistics). Raises, as ``F.batch_norm`` does,
    where a channel has a single value (its unbiased variance would divide by zero)."""
    if t.numel() // max(t.shape[1], 1) == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input "
                         f"size {t.size()}")
    factor = 0.0 if norm.momentum is None else norm.momentum
    tracked = norm.track_running_stats
    if tracked and norm.num_batches_tracked is not None:
        norm.num_batches_tracked.add_(1)
        factor = (1.0 / float(norm.num_batches_tracked) if norm.momentum is None
                  else norm.momentum)
    running_mean = norm.running_mean if tracked else None
    running_var = norm.running_var if tracked else None
    if backend == "cpu":
        # Its schema marks the running tensors mutated, so their versions are bumped.
        return torch.ops.mobilefuse.batch_norm_statistics(
            t, running_mean, running_var, factor, norm.eps)
    mean, var = torch.batch_norm_update_stats(t, running_mean, running_var, factor)
    if tracked and running_mean is not None:
        # This op updates them in place without bumping their version counters (its schema
        # does not mark them mutated); the eval caches keyed on versions must see it.
        torch.autograd.graph.increment_version((running_mean, running_var))
    return mean, torch.rsqrt(var + norm.eps)


def _normalize(backend: str, t: torch.Tensor, norm: nn.Module, mean: torch.Tensor,
               invstd: torch.Tensor) -> torch.Tensor:
    """BatchNorm of ``t`` with these statistics, one pass (the same pass in both directions,
    so the recomputed values equal the forward's bit for bit)."""
    scale = invstd if norm.weight is None else invstd * norm.weight.to(invstd.dtype)
    shift = -mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias.to(invstd.dtype)
    n, c = t.shape[:2]
    return channel_affine(backend, t, scale.expand(n, c), shift.expand(n, c))


def _activate(t: torch.Tensor, name: str | None) -> torch.Tensor:
    return t if name is None else INPLACE_ACTIVATIONS[name](t)


def _forward_norm_act(backend: str, t: torch.Tensor, norm: nn.Module,
                      stats: tuple[torch.Tensor, torch.Tensor], act: str | None) -> torch.Tensor:
    """act(BatchNorm(t)) in the forward: on CPU one pass, elsewhere normalize then activate
    in place."""
    if backend == "cpu":
        return _norm_act(backend, t, norm, *stats, act)[0]
    return _activate(_normalize(backend, t, norm, *stats), act)


def _norm_act(backend: str, t: torch.Tensor, norm: nn.Module, mean: torch.Tensor,
              invstd: torch.Tensor, act: str | None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(act(BatchNorm(t)), BatchNorm(t) where the activation's backward will need it, else
    None). On CPU one pass (mobilefuse::batch_norm_activation); elsewhere the normalization
    then the activation, out of place so the normalized tensor survives."""
    if backend == "cpu":
        return torch.ops.mobilefuse.batch_norm_activation(
            t, mean, invstd, norm.weight, norm.bias, act or "none"), None
    h = _normalize(backend, t, norm, mean, invstd)
    return (h, h) if act is None else (_ACTIVATION_OUT_OF_PLACE[act](h), h)


def _norm_act_backward(backend: str, grad: torch.Tensor, t: torch.Tensor, norm: nn.Module,
                       mean: torch.Tensor, invstd: torch.Tensor, act: str | None,
                       needs_affine: bool, normalized: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Gradients (t, norm weight, norm bias) of act(BatchNorm(t)) on batch statistics. On CPU
    two passes that recompute the pre-activation (mobilefuse::batch_norm_activation_backward);
    elsewhere the activation's backward from ``normalized`` (recomputed when not given), then
    BatchNorm's."""
    if backend == "cpu":
        affine = needs_affine and norm.weight is not None
        gi, gw, gb = torch.ops.mobilefuse.batch_norm_activation_backward(
            grad, t, mean, invstd, norm.weight, norm.bias, act or "none", [True, affine, affine])
        return gi, (gw if affine else None), (gb if affine else None)
    if act is not None:
        if normalized is None:
            normalized = _normalize(backend, t, norm, mean, invstd)
        grad = _ACTIVATION_BACKWARD[act](grad, normalized)
    return _norm_backward(grad, t, norm, mean, invstd, needs_affine)


def _norm_backward(grad: torch.Tensor, t: torch.Tensor, norm: nn.Module, mean: torch.Tensor,
                   invstd: torch.Tensor, needs_affine: bool
                   ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    affine = needs_affine and norm.weight is not None
    gi, gw, gb = torch.ops.aten.native_batch_norm_backward(
        grad, t, norm.weight, None, None, mean, invstd, True, norm.eps, [True, affine, affine])
    return gi, (gw if affine else None), (gb if affine else None)


def _conv1x1_backward(grad: torch.Tensor, inp: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor | None, mask: tuple[bool, bool, bool]
                      ) -> tuple[torch.Tensor | None, ...]:
    gi, gw, gb = torch.ops.aten.convolution_backward(
        grad, inp, weight, None if bias is None else [bias.shape[0]], [1, 1], [0, 0], [1, 1],
        False, [0, 0], 1, [mask[0], mask[1], mask[2] and bias is not None])
    return (gi if mask[0] else None, gw if mask[1] else None,
            gb if mask[2] and bias is not None else None)


def _matrix(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0], w.shape[1])


def _se_stage_backward_cpu(plan: TrainPlan, grad: torch.Tensor, d: torch.Tensor,
                           stats2: tuple[torch.Tensor, torch.Tensor], pooled: torch.Tensor,
                           excitation: tuple[torch.Tensor, ...],
                           params: list[torch.Tensor | None], needs: tuple[bool, ...],
                           grads: list[torch.Tensor | None]) -> torch.Tensor:
    """Backward from the projection's output gradient to the depthwise output ``d`` of a
    block with squeeze-and-excitation, on CPU; fills grads[6:14] (depthwise norm, SE,
    projection conv). The projection's input is recomputed gated (BatchNorm, activation and
    the gate in one pass); the gate's gradient comes from sums of grad times that gated input;
    the gate and the pool's gradient are applied to the incoming gradient inside BatchNorm's
    backward: neither the ungated activation nor its gradient is written. ``excitation``: the
    forward's (pre-activation, hidden, pre-gate, gate)."""
    (_, _, _, _, _, _, g2, b2, wr, br, wx, bx, wp, bp, _, _) = params
    norm2, act2 = plan.norms[1], plan.activations[1]
    pre, hidden, z_gate, gate = excitation
    z = torch.ops.mobilefuse.batch_norm_activation(d, *stats2, norm2.weight, norm2.bias,
                                                   act2 or "none", gate)
    grad, grads[12], grads[13] = _conv1x1_backward(grad, z, wp, bp, (True, needs[12], needs[13]))
    dz = gate_gradient_from_output(channel_sum("cpu", grad, z), z_gate, gate, plan.se[1])
    del z
    mask = [True, needs[8], needs[9] and br is not None, needs[10], needs[11] and bx is not None]
    dpooled, *se_grads = excitation_backward(dz, pre, hidden, pooled, _matrix(wr), _matrix(wx),
                                             plan.se[0], mask)
    for i, (m, g, w) in enumerate(zip(mask[1:], se_grads, (wr, br, wx, bx), strict=True)):
        grads[8 + i] = g.to(w.dtype).reshape(w.shape) if m else None
    affine = (needs[6] or needs[7]) and norm2.weight is not None
    gi, gw, gb = torch.ops.mobilefuse.batch_norm_activation_backward(
        grad, d, *stats2, norm2.weight, norm2.bias, act2 or "none", [True, affine, affine],
        gate, dpooled / max(d.shape[2] * d.shape[3], 1))
    grads[6], grads[7] = (gw, gb) if affine else (None, None)
    return gi


class BlockTrainFunction(torch.autograd.Function):
    """Branch of an inverted-residual block in training mode (BatchNorms on batch statistics).

    Inputs after ``plan``: x, expand (weight, bias), expand norm (weight, bias), depthwise
    (weight, bias), depthwise norm (weight, bias), SE (w_reduce, b_reduce, w_expand,
    b_expand), projection (weight, bias), projection norm (weight, bias); absent ones None.
    """

    @staticmethod
    @in_op_range("inverted_residual")
    def forward(ctx: Any, plan: TrainPlan, x: torch.Tensor, *params: torch.Tensor | None
                ) -> torch.Tensor:
        (we, be, _, _, wd, bd, _, _, wr, br, wx, bx, wp, bp, _, _) = params
        norm1, norm2, norm3 = plan.norms
        act1, act2, act3 = plan.activations
        e = x
        stats1 = None
        if we is not None:
            e = F.conv2d(x, we, be)
            stats1 = batch_statistics(plan.backend, norm1, e)
            a1 = _forward_norm_act(plan.backend, e, norm1, stats1, act1)
        else:
            a1 = x
        d = _depthwise(plan.backend)(a1, wd, bd, list(plan.stride), list(plan.padding),
                                     list(plan.dilation), "none")
        del a1
        stats2 = batch_statistics(plan.backend, norm2, d)
        a2 = _forward_norm_act(plan.backend, d, norm2, stats2, act2)
        pooled, excitation = None, (None,) * 4
        if plan.se is not None:
            # The op's passes without its custom-op dispatch (no autograd here), keeping the
            # excitation's (N, C) tensors: recomputed, they cost the backward two GEMMs.
            a2, pooled, excitation = squeeze_excite_parts(a2, _matrix(wr), br, _matrix(wx), bx,
                                                          *plan.se, plan.backend)
        p = F.conv2d(a2, wp, bp)
        del a2
        stats3 = batch_statistics(plan.backend, norm3, p)
        out = _forward_norm_act(plan.backend, p, norm3, stats3, act3)
        ctx.plan = plan
        ctx.stats = (stats1, stats2, stats3)
        ctx.save_for_backward(x, None if we is None else e, d, p, pooled, *excitation, *params)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    @in_op_range("inverted_residual_backward")
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        plan = ctx.plan
        (x, e, d, p, pooled, *rest) = ctx.saved_tensors
        excitation, params = tuple(rest[:4]), rest[4:]
        (we, be, g1, b1, wd, bd, g2, b2, wr, br, wx, bx, wp, bp, g3, b3) = params
        needs = ctx.needs_input_grad[2:]
        (stats1, stats2, stats3) = ctx.stats
        norm1, norm2, norm3 = plan.norms
        act1, act2, act3 = plan.activations
        grads: list[torch.Tensor | None] = [None] * 16
        backend = plan.backend
        grad = grad.contiguous(memory_format=memory_format_of(p))
        grad, grads[14], grads[15] = _norm_act_backward(backend, grad, p, norm3, *stats3, act3,
                                                        needs[14] or needs[15])
        if plan.se is not None and backend == "cpu":
            grad = _se_stage_backward_cpu(plan, grad, d, stats2, pooled, excitation, params,
                                          needs, grads)
        else:
            # The depthwise stage's output, recomputed: BatchNorm, then the activation.
            a2, h2 = _norm_act(backend, d, norm2, *stats2, act2)
            z = a2
            if plan.se is not None:
                z = channel_affine(backend, a2, excitation[3], None)
            grad, grads[12], grads[13] = _conv1x1_backward(grad, z, wp, bp,
                                                           (True, needs[12], needs[13]))
            del z
            if plan.se is not None:
                mask = [True, needs[8], needs[9] and br is not None, needs[10],
                        needs[11] and bx is not None]
                se_grads = squeeze_excite_backward_op(grad, a2, pooled, _matrix(wr), br,
                                                      _matrix(wx), bx, *plan.se, backend, mask)
                grad = se_grads[0]
                for i, (m, g, w) in enumerate(zip(mask[1:], se_grads[1:], (wr, br, wx, bx),
                                                  strict=True)):
                    grads[8 + i] = g.reshape(w.shape) if m else None
            del a2
            grad, grads[6], grads[7] = _norm_act_backward(backend, grad, d, norm2, *stats2, act2,
                                                          needs[6] or needs[7], h2)
            del h2
        if we is not None:
            a1, h1 = _norm_act(backend, e, norm1, *stats1, act1)
        else:
            h1 = a1 = x
        need_a1 = we is not None or ctx.needs_input_grad[1]
        mask = [need_a1, needs[4], needs[5] and bd is not None]
        ga1, gwd, gbd = _depthwise_backward(backend)(
            grad, a1, wd, bd, list(plan.stride), list(plan.padding), list(plan.dilation), "none",
            mask)
        grads[4] = gwd if mask[1] else None
        grads[5] = gbd if mask[2] else None
        del a1
        grad_x = ga1 if need_a1 else None
        if we is not None:
            ge, grads[2], grads[3] = _norm_act_backward(backend, ga1, e, norm1, *stats1, act1,
                                                        needs[2] or needs[3], h1)
            del h1
            grad_x, grads[0], grads[1] = _conv1x1_backward(
                ge, x, we, be, (ctx.needs_input_grad[1], needs[0], needs[1]))
        return (None, grad_x, *grads)
