"""The functional API: ``mobilefuse.ops.<op>(...)``.

Each op checks its arguments, asks :mod:`mobilefuse.backends` which implementation takes the
input, and calls it: ``torch.ops.mobilefuse.<op>`` (C++/CUDA kernels), the Triton custom op
``torch.ops.mobilefuse.triton_<op>``, or the pure-PyTorch reference. All are differentiable.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from mobilefuse import _flops, _native_ops, _triton_ops, reference  # noqa: F401  (registers the ops)
from mobilefuse._autocast import autocast_args
from mobilefuse._block_args import OP as INVERTED_RESIDUAL
from mobilefuse._block_args import BlockArgs, SEWeights, check_block_args
from mobilefuse._checks import (
    check_float_tensor,
    check_groups,
    check_min_rank,
    check_same_device,
    check_same_shape_dtype,
    check_tensor,
)
from mobilefuse._conv_args import OP as DEPTHWISE
from mobilefuse._conv_args import check_depthwise_args, vendor_forward_faster
from mobilefuse._expand_fusion import NO_SE_ARGS, expansion_fuses
from mobilefuse._onednn import conv2d_epilogue
from mobilefuse._ranges import in_op_range, op_range
from mobilefuse._se_args import OP as SQUEEZE_EXCITE
from mobilefuse._se_args import check_squeeze_excite_args
from mobilefuse._squeeze_excite import squeeze_excite_forward, squeeze_excite_op
from mobilefuse.backends import FLOAT_DTYPES, get_backend, select_backend

_flops.register()

__all__ = ["hardswish", "hardsigmoid", "channel_shuffle", "concat_shuffle", "depthwise_conv2d",
           "squeeze_excite", "inverted_residual"]

# channel_shuffle only moves bits, so its kernels take every dtype 1, 2, 4 or 8 bytes wide.
SHUFFLE_DTYPES: tuple[torch.dtype, ...] = FLOAT_DTYPES + (
    torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool)

_Impl = Callable[..., torch.Tensor]

_HARDSWISH: dict[str, _Impl] = {
    "cpu": lambda x: torch.ops.mobilefuse.hardswish(x),
    "cuda": lambda x: torch.ops.mobilefuse.hardswish(x),
    "triton": lambda x: torch.ops.mobilefuse.triton_hardswish(x),
    "reference": in_op_range("hardswish")(reference.hardswish),
}
_HARDSIGMOID: dict[str, _Impl] = {
    "cpu": lambda x: torch.ops.mobilefuse.hardsigmoid(x),
    "cuda": lambda x: torch.ops.mobilefuse.hardsigmoid(x),
    "triton": lambda x: torch.ops.mobilefuse.triton_hardsigmoid(x),
    "reference": in_op_range("hardsigmoid")(reference.hardsigmoid),
}
_CHANNEL_SHUFFLE: dict[str, _Impl] = {
    "cpu": lambda x, g: torch.ops.mobilefuse.channel_shuffle(x, g),
    "cuda": lambda x, g: torch.ops.mobilefuse.channel_shuffle(x, g),
    "triton": lambda x, g: torch.ops.mobilefuse.triton_channel_shuffle(x, g),
    "reference": in_op_range("channel_shuffle")(reference.channel_shuffle),
}


def _activation_backend(op: str, x: torch.Tensor) -> str:
    """The backend that runs a standalone activation on ``x``: the chosen one, except that
    ``"auto"`` leaves CPU tensors to PyTorch's own kernel (the reference, named ``mobilefuse::<op>``
    under a profiler). A pass over memory with nothing to fuse gains nothing from a kernel of
    ours there, and PyTorch's costs less per call: on a 2-core AMD EPYC, side by side, its
    hard-swish took 0.5-0.9x the time of mobilefuse's (float32 at batch 1 3.7 vs 7.0 us,
    1.6 M values 195 vs 211 us, bfloat16 0.65x), hard-sigmoid 0.5-1.04x, and so did their
    backward passes. Fused into a convolution's epilogue the activation costs no pass at all."""
    if get_backend() == "auto" and x.device.type == "cpu":
        return "reference"
    return select_backend(op, x.device, x.dtype)


def hardswish(x: torch.Tensor) -> torch.Tensor:
    """Hard-swish, ``x * relu6(x + 3) / 6``, as ``F.hardswish``.

    Args:
        x: a float16, bfloat16, float32 or float64 tensor of any shape and strides.

    Returns:
        A new tensor in ``x``'s memory format. Its backward saves only ``x``.

    On CPU, backend ``"auto"`` runs PyTorch's own kernel (see :func:`_activation_backend`);
    backend ``"cpu"`` runs mobilefuse's.
    """
    check_float_tensor("hardswish", "x", x)
    return _HARDSWISH[_activation_backend("hardswish", x)](x)


def hardsigmoid(x: torch.Tensor) -> torch.Tensor:
    """Hard-sigmoid, ``relu6(x + 3) / 6``, as ``F.hardsigmoid``.

    Args:
        x: a float16, bfloat16, float32 or float64 tensor of any shape and strides.

    Returns:
        A new tensor in ``x``'s memory format. Its backward saves only ``x``.

    On CPU, backend ``"auto"`` runs PyTorch's own kernel (see :func:`_activation_backend`);
    backend ``"cpu"`` runs mobilefuse's.
    """
    check_float_tensor("hardsigmoid", "x", x)
    return _HARDSIGMOID[_activation_backend("hardsigmoid", x)](x)


# The activations a block may apply, by name (hard-swish through mobilefuse), and their in-place
# forms for a fresh tensor that nothing else refers to and no gradient is recorded for.
ACTIVATION_FUNCTIONS: dict[str, _Impl] = {
    "relu": F.relu, "relu6": F.relu6, "hardswish": hardswish, "silu": F.silu}
INPLACE_ACTIVATIONS: dict[str, _Impl] = {
    "relu": torch.relu_, "relu6": lambda y: F.relu6(y, inplace=True),
    "hardswish": lambda y: F.hardswish(y, inplace=True), "silu": lambda y: F.silu(y, inplace=True)}


def _kernel_layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` when contiguous or channels_last-contiguous, else a copy in its suggested format."""
    if x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)):
        return x
    # A meta tensor answers which layout empty_like (suggest_memory_format) picks, for free.
    probe = torch.empty_like(x, device="meta")
    channels_last = x.dim() == 4 and probe.is_contiguous(memory_format=torch.channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.contiguous(memory_format=fmt)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle, as ``x.view(N, g, C//g, *).transpose(1, 2).reshape(x.shape)``.

    Args:
        x: a tensor of shape ``(N, C, *)``, any dtype; contiguous or channels_last
            (other strides are made contiguous in their suggested format first).
        groups: a positive int dividing ``C``.

    Returns:
        A new tensor (never ``x`` or a view of it), channels_last when ``x`` is. The values
        are moved bit for bit; the backward is the inverse shuffle (``C // groups`` groups).
    """
    check_tensor("channel_shuffle", "x", x)
    check_min_rank("channel_shuffle", "x", x, 3, "(N, C, *)")
    check_groups("channel_shuffle", groups, x.shape[1])
    backend = select_backend("channel_shuffle", x.device, x.dtype, SHUFFLE_DTYPES)
    return _CHANNEL_SHUFFLE[backend](_kernel_layout(x), groups)


# The backends with a concat_shuffle of their own; the others shuffle the concatenation with
# their channel_shuffle kernel.
_CONCAT_SHUFFLE: dict[str, _Impl] = {
    "cpu": lambda a, b: torch.ops.mobilefuse.concat_shuffle(a, b),
    "reference": in_op_range("concat_shuffle")(reference.concat_shuffle),
}


def concat_shuffle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """ShuffleNetV2's unit output, ``channel_shuffle(torch.cat((a, b), 1), 2)``: channel ``2i``
    is ``a``'s channel ``i`` and ``2i + 1`` is ``b``'s.

    Args:
        a, b: tensors of one shape ``(N, C, *)`` and dtype (any dtype), on one device. Channel
            slices of a larger tensor (``x.chunk(2, 1)``) are read in place on CPU.

    Returns:
        A new ``(N, 2C, *)`` tensor, channels_last when ``a`` is laid out channels_last (also
        as a channel slice), else contiguous. On CPU one pass writes it (the concatenation is
        never formed); elsewhere the backend's channel_shuffle shuffles the concatenation.
        The values are moved bit for bit; the backward is the inverse shuffle split in halves.
    """
    check_tensor("concat_shuffle", "a", a)
    check_tensor("concat_shuffle", "b", b)
    check_min_rank("concat_shuffle", "a", a, 3, "(N, C, *)")
    check_same_shape_dtype("concat_shuffle", "b", b, "a", a)
    check_same_device("concat_shuffle", a=a, b=b)
    backend = select_backend("concat_shuffle", a.device, a.dtype, SHUFFLE_DTYPES)
    if backend in _CONCAT_SHUFFLE:
        return _CONCAT_SHUFFLE[backend](a, b)
    return _CHANNEL_SHUFFLE[backend](torch.cat((a, b), 1), 2)


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     stride: int | tuple[int, int] = 1,
                     padding: int | tuple[int, int] | str = 0,
                     dilation: int | tuple[int, int] = 1,
                     activation: str | None = None) -> torch.Tensor:
    """Depthwise convolution with bias and activation fused into one kernel.

    Same result as ``act(F.conv2d(x, weight, bias, stride, padding, dilation, groups=C))``.

    Args:
        x: ``(N, C, H, W)``, float16/bfloat16/float32/float64, contiguous or channels_last
            (other strides are made dense first); the output keeps its memory format.
        weight: ``(C, 1, kh, kw)``. A channel multiplier (``(m*C, 1, kh, kw)``) is computed by
            the reference, with a one-time warning.
        bias: ``(C,)`` or None.
        stride, dilation: an int or a pair, >= 1.
        padding: an int or a pair (>= 0), ``"valid"``, or ``"same"`` (stride 1 only).
        activation: None, ``"relu"``, ``"relu6"``, ``"hardswish"`` or ``"silu"``, applied in
            the kernel; its derivative is fused into the backward, which recomputes the
            pre-activation rather than storing it.

    Under ``torch.autocast`` float32 inputs are cast to autocast's dtype, as ``F.conv2d``'s are.
    On CPU (backend ``"auto"``), a float32 call that records no gradient with a kernel of more
    than 25 taps other than 7x7 at dilation 1 (e.g. 9x9) runs oneDNN's convolution, faster
    there than the kernel's run-time-sized loop; with a gradient the kernel runs (its backward
    is 2-5x eager's).
    """
    x, weight, bias = autocast_args(x, weight, bias)
    return depthwise_call(x, weight, bias, stride, padding, dilation, activation)(x)


def depthwise_call(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   stride: int | tuple[int, int], padding: int | tuple[int, int] | str,
                   dilation: int | tuple[int, int], activation: str | None
                   ) -> Callable[[torch.Tensor], torch.Tensor]:
    """The call computing :func:`depthwise_conv2d` of inputs like ``x`` (shape, strides, dtype,
    device) with these weights and settings, on the backend chosen now: the arguments checked,
    the route taken, the input alone left to pass. Autocast's casts are the caller's."""
    args = check_depthwise_args(x, weight, bias, stride, padding, dilation, activation)
    backend = select_backend(DEPTHWISE, x.device, x.dtype, op_reason=args.kernel_gap)
    if backend == "reference" or (backend == "cpu" and get_backend() == "auto"
                                  and vendor_forward_faster(x, weight, bias, args)):
        def run_reference(x: torch.Tensor) -> torch.Tensor:
            with op_range(DEPTHWISE):
                return reference.depthwise_conv2d(x, weight, bias, args.stride,
                                                  args.reference_padding, args.dilation,
                                                  args.activation)
        return run_reference
    op = (torch.ops.mobilefuse.triton_depthwise_conv2d if backend == "triton"
          else torch.ops.mobilefuse.depthwise_conv2d)
    stride_hw, padding_hw, dilation_hw = list(args.stride), list(args.padding), list(args.dilation)
    return lambda x: op(_kernel_layout(x), weight, bias, stride_hw, padding_hw, dilation_hw,
                        args.activation)


def squeeze_excite(x: torch.Tensor, w_reduce: torch.Tensor, b_reduce: torch.Tensor | None,
                   w_expand: torch.Tensor, b_expand: torch.Tensor | None,
                   activation: str = "relu", gate: str = "hardsigmoid") -> torch.Tensor:
    """Squeeze-and-excitation: ``x * gate(conv1x1(act(conv1x1(x.mean((2, 3), keepdim=True)))))``.

    The pool is one read of ``x`` with float32 accumulation, the excitation runs on the
    ``(N, C)`` means, the gating is one read and one write. The backward keeps only ``x`` and
    the per-(n, c) means, and makes two passes: one reduction, one write of the input gradient.
    Without a gradient on CPU the whole layer is one C++ call.

    Args:
        x: ``(N, C, H, W)``, float16/bfloat16/float32/float64, contiguous or channels_last
            (other strides are made dense first); the output keeps its memory format.
        w_reduce: ``(R, C)`` or ``(R, C, 1, 1)``; b_reduce: ``(R,)`` or None.
        w_expand: ``(C, R)`` or ``(C, R, 1, 1)``; b_expand: ``(C,)`` or None.
        activation: ``"relu"`` or ``"silu"``, after the reduction.
        gate: ``"sigmoid"`` or ``"hardsigmoid"``.

    Under ``torch.autocast`` float32 inputs are cast to autocast's dtype (it holds two 1x1
    convolutions), and so is the result.
    """
    x, w_reduce, b_reduce, w_expand, b_expand = autocast_args(x, w_reduce, b_reduce, w_expand,
                                                              b_expand)
    args = check_squeeze_excite_args(x, w_reduce, b_reduce, w_expand, b_expand, activation,
                                     gate)
    backend = select_backend(SQUEEZE_EXCITE, x.device, x.dtype)
    if backend == "reference":
        with op_range(SQUEEZE_EXCITE):
            return reference.squeeze_excite(x, w_reduce, b_reduce, w_expand, b_expand,
                                            args.activation, args.gate)
    call = (_kernel_layout(x), *args.op_args)
    if eager_no_grad():  # nothing to record: no custom op's dispatch, one C++ call on CPU
        with op_range(SQUEEZE_EXCITE):
            if backend == "cpu":
                return torch.ops.mobilefuse.se_inference(*call)
            return squeeze_excite_forward(*call, backend)[0]
    return squeeze_excite_op(*call, backend)[0]


def eager_no_grad() -> bool:
    """Whether no gradient is recorded and no ``torch.compile`` trace runs: then fresh outputs
    may be updated in place and values derived from weights may be cached."""
    return not torch.is_grad_enabled() and not torch.compiler.is_compiling()


def activate_fresh(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    """``activation`` of ``y``, a fresh output nothing else refers to: in place when
    :func:`eager_no_grad` says so."""
    if activation is None:
        return y
    table = INPLACE_ACTIVATIONS if eager_no_grad() else ACTIVATION_FUNCTIONS
    return table[activation](y)


def _pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               activation: str | None, residual: torch.Tensor | None = None) -> torch.Tensor:
    """``act(conv1x1(x))`` (``+ residual``) through the vendor convolution (a GEMM), with the
    activation and the add as oneDNN post-ops in CPU inference."""
    return conv2d_epilogue(x, weight if weight.dim() == 4 else weight[:, :, None, None], bias,
                           activation=activation, residual=residual)


def inverted_residual(x: torch.Tensor, expand_weight: torch.Tensor | None,
                      expand_bias: torch.Tensor | None, dw_weight: torch.Tensor,
                      dw_bias: torch.Tensor | None, project_weight: torch.Tensor,
                      project_bias: torch.Tensor | None, se_weights: SEWeights | None = None, *,
                      stride: int | tuple[int, int] = 1,
                      padding: int | tuple[int, int] | None = None,
                      dilation: int | tuple[int, int] = 1,
                      activation: str | None | tuple[str | None, str | None] = "relu6",
                      se_activation: str = "relu", se_gate: str = "hardsigmoid",
                      project_activation: str | None = None,
                      residual: bool | None = None) -> torch.Tensor:
    """One MBConv (inverted residual) block, its BatchNorms already folded into the convolutions.

    Same result as::

        h = act(conv1x1(x, expand_weight, expand_bias))            # when expand_weight is given
        h = act(depthwise_conv2d(h, dw_weight, dw_bias, stride, padding, dilation))
        h = squeeze_excite(h, *se_weights, se_activation, se_gate)  # when se_weights is given
        out = project_act(conv1x1(h, project_weight, project_bias))
        out = out + x                                              # when residual

    The 1x1 convolutions run on the vendor GEMM (oneDNN on CPU, cuDNN/cuBLAS on GPU). In CPU
    inference (float32, channels_last, no gradient recorded) their activation and the
    residual add are oneDNN post-ops on a cached reordered weight, and the depthwise
    convolution and the squeeze-and-excitation are one op that takes the SE pool in the
    depthwise kernel's epilogue. Elsewhere the activation and the add are applied in place on
    the fresh output when no gradient is recorded, the depthwise convolution runs its fused
    kernel with bias and activation in its epilogue, and the squeeze-and-excitation is one
    fused op (two passes over its input). All of it is differentiable.
    :class:`mobilefuse.nn.InvertedResidual` calls this with BatchNorms folded in eval mode.

    Args:
        x: ``(N, C, H, W)``, float16/bfloat16/float32/float64, contiguous or channels_last;
            the output keeps its memory format.
        expand_weight: ``(M, C)`` or ``(M, C, 1, 1)``, or None for a block without expansion
            (then ``M = C``); expand_bias: ``(M,)`` or None.
        dw_weight: ``(M, 1, kh, kw)``; dw_bias: ``(M,)`` or None.
        project_weight: ``(O, M)`` or ``(O, M, 1, 1)``; project_bias: ``(O,)`` or None.
        se_weights: None, or ``(w_reduce (R, M), b_reduce, w_expand (M, R), b_expand)`` as
            :func:`squeeze_excite` takes them.
        stride, dilation: the depthwise convolution's, an int or a pair.
        padding: the depthwise convolution's, an int or a pair; None pads ``dilation * (k - 1)
            // 2`` (the output keeps the input's size at stride 1).
        activation: after the expansion and after the depthwise convolution: None, ``"relu"``,
            ``"relu6"``, ``"hardswish"`` or ``"silu"``; or a pair of them (expansion,
            depthwise).
        se_activation, se_gate: as :func:`squeeze_excite`'s ``activation`` and ``gate``.
        project_activation: after the projection (timm's ``pw_act``), usually None.
        residual: add ``x`` to the output. None adds it when the shapes allow (stride 1,
            ``O == C``); True raises ValueError when they do not.

    Under ``torch.autocast`` every float32 input, ``x`` included, is cast to autocast's dtype,
    and so is the result.
    """
    x, (expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias), \
        se_weights = _autocast_block(x, (expand_weight, expand_bias, dw_weight, dw_bias,
                                         project_weight, project_bias), se_weights)
    args = check_block_args(x, expand_weight, expand_bias, dw_weight, dw_bias, project_weight,
                            project_bias, se_weights, stride, padding, dilation, activation,
                            se_activation, se_gate, project_activation, residual)
    with op_range(INVERTED_RESIDUAL):
        return _run_block(x, expand_weight, expand_bias, dw_weight, dw_bias, project_weight,
                          project_bias, se_weights, args, se_activation, se_gate)


def _autocast_block(x: object, weights: tuple[object, ...], se_weights: object,
                    ) -> tuple[object, tuple[object, ...], object]:
    """``x``, the block's six convolution tensors and its SE weights (a 4-tuple or anything
    the checks then refuse), cast as :func:`autocast_args` casts them."""
    x, *weights = autocast_args(x, *weights)
    if isinstance(se_weights, (tuple, list)):
        se_weights = autocast_args(x, *se_weights)[1:]
    return x, tuple(weights), se_weights


def run_inverted_residual(x: torch.Tensor, expand_weight: torch.Tensor | None,
                          expand_bias: torch.Tensor | None, dw_weight: torch.Tensor,
                          dw_bias: torch.Tensor | None, project_weight: torch.Tensor,
                          project_bias: torch.Tensor | None, se_weights: SEWeights | None,
                          args: BlockArgs, se_activation: str, se_gate: str) -> torch.Tensor:
    """:func:`inverted_residual` on arguments already checked (``args`` normalized), inside
    one ``mobilefuse::inverted_residual`` profiler range; cast for autocast as it casts."""
    x, (expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias), \
        se_weights = _autocast_block(x, (expand_weight, expand_bias, dw_weight, dw_bias,
                                         project_weight, project_bias), se_weights)
    with op_range(INVERTED_RESIDUAL):
        return _run_block(x, expand_weight, expand_bias, dw_weight, dw_bias, project_weight,
                          project_bias, se_weights, args, se_activation, se_gate)


def _depthwise_squeeze_excite(h: torch.Tensor, dw_weight: torch.Tensor,
                              dw_bias: torch.Tensor | None, args: BlockArgs,
                              se_weights: SEWeights, se_activation: str, se_gate: str
                              ) -> torch.Tensor | None:
    """The depthwise convolution and the squeeze-and-excitation after it as one C++ inference
    op (the pool taken in the depthwise kernel's epilogue), or None where that op does not
    serve: gradients recorded, a trace, not a float32/float64 channels_last CPU tensor, or a
    convolution the depthwise kernels do not take."""
    if not (eager_no_grad() and h.device.type == "cpu"
            and h.dtype in (torch.float32, torch.float64) and h.dim() == 4
            and h.is_contiguous(memory_format=torch.channels_last)):
        return None
    dw = check_depthwise_args(h, dw_weight, dw_bias, args.stride, args.padding, args.dilation,
                              args.activations[1])
    se = check_squeeze_excite_args(h, *se_weights, se_activation, se_gate)
    if dw.kernel_gap is not None or select_backend(DEPTHWISE, h.device, h.dtype) != "cpu" or (
            select_backend(SQUEEZE_EXCITE, h.device, h.dtype) != "cpu"):
        return None
    return torch.ops.mobilefuse.depthwise_squeeze_excite(
        h, dw_weight, dw_bias, list(dw.stride), list(dw.padding), list(dw.dilation),
        dw.activation, *se.op_args)


def _expand_depthwise(x: torch.Tensor, expand_weight: torch.Tensor,
                      expand_bias: torch.Tensor | None, dw_weight: torch.Tensor,
                      dw_bias: torch.Tensor | None, args: BlockArgs,
                      se_weights: SEWeights | None, se_activation: str, se_gate: str
                      ) -> torch.Tensor | None:
    """The expansion, the depthwise convolution and the squeeze-and-excitation (if any) as one
    C++ inference op, the expanded map kept in cache row by row; None where that op does not
    serve (gradients recorded, a trace, not a float32 channels_last CPU tensor, a convolution
    the depthwise kernels do not take) or does not pay (see :func:`expansion_fuses`)."""
    if not (eager_no_grad() and x.device.type == "cpu" and x.dtype == torch.float32
            and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
            and expansion_fuses(tuple(x.shape))):
        return None
    hidden = x.new_empty(()).expand(x.shape[0], expand_weight.shape[0], *x.shape[2:])
    dw = check_depthwise_args(hidden, dw_weight, dw_bias, args.stride, args.padding,
                              args.dilation, args.activations[1])
    if dw.kernel_gap is not None or select_backend(DEPTHWISE, x.device, x.dtype) != "cpu":
        return None
    se_args: tuple = NO_SE_ARGS
    if se_weights is not None:
        if select_backend(SQUEEZE_EXCITE, x.device, x.dtype) != "cpu":
            return None
        se_args = check_squeeze_excite_args(hidden, *se_weights, se_activation,
                                            se_gate).op_args
    return torch.ops.mobilefuse.expand_depthwise(
        x, expand_weight, expand_bias, args.activations[0] or "none", dw_weight, dw_bias,
        list(dw.stride), list(dw.padding), list(dw.dilation), dw.activation, *se_args)


def _run_block(x: torch.Tensor, expand_weight: torch.Tensor | None,
               expand_bias: torch.Tensor | None, dw_weight: torch.Tensor,
               dw_bias: torch.Tensor | None, project_weight: torch.Tensor,
               project_bias: torch.Tensor | None, se_weights: SEWeights | None,
               args: BlockArgs, se_activation: str, se_gate: str) -> torch.Tensor:
    backend = select_backend(INVERTED_RESIDUAL, x.device, x.dtype)
    if backend == "reference":
        return reference.inverted_residual(
            x, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
            se_weights, args.stride, args.padding, args.dilation, args.activations, se_activation,
            se_gate, args.project_activation, args.residual)
    h = x
    fused = None if expand_weight is None else _expand_depthwise(
        x, expand_weight, expand_bias, dw_weight, dw_bias, args, se_weights, se_activation,
        se_gate)
    if fused is not None:
        return _pointwise(fused, project_weight, project_bias, args.project_activation,
                          x if args.residual else None)
    if expand_weight is not None:
        h = _pointwise(h, expand_weight, expand_bias, args.activations[0])
    fused = None if se_weights is None else _depthwise_squeeze_excite(
        h, dw_weight, dw_bias, args, se_weights, se_activation, se_gate)
    if fused is not None:
        h = fused
    else:
        h = depthwise_conv2d(h, dw_weight, dw_bias, args.stride, args.padding, args.dilation,
                             args.activations[1])
        if se_weights is not None:
            h = squeeze_excite(h, *se_weights, se_activation, se_gate)
    return _pointwise(h, project_weight, project_bias, args.project_activation,
                      x if args.residual else None)
