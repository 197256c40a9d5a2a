"""Pure-PyTorch reference implementations: the oracle every kernel is tested against.

Tests call these on float64 copies of the inputs; ops fall back to them when no fused
backend can take an input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hardswish(x: torch.Tensor) -> torch.Tensor:
    """``x * relu6(x + 3) / 6`` (``F.hardswish``)."""
    return F.hardswish(x)


def hardswish_backward(grad_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Gradient of hard-swish at ``x`` times ``grad_out``, with PyTorch's choice at the kinks
    (0 for ``x <= -3``, ``grad_out`` for ``x >= 3``), exact in ``x``'s dtype."""
    inside = grad_out * (x / 3 + 0.5)
    return torch.where(x <= -3, torch.zeros_like(inside), torch.where(x >= 3, grad_out, inside))


def hardsigmoid(x: torch.Tensor) -> torch.Tensor:
    """``relu6(x + 3) / 6`` (``F.hardsigmoid``)."""
    return F.hardsigmoid(x)


def hardsigmoid_backward(grad_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Gradient of hard-sigmoid at ``x`` times ``grad_out`` (0 outside ``-3 < x < 3``), exact in
    ``x``'s dtype (``aten.hardsigmoid_backward`` rounds 1/6 to float32 even for float64)."""
    inside = grad_out / 6
    return torch.where((x > -3) & (x < 3), inside, torch.zeros_like(inside))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """The ShuffleNet idiom: split C into ``groups``, transpose, flatten back."""
    n, c = x.shape[:2]
    rest = x.shape[2:]
    return x.reshape(n, groups, c // groups, *rest).transpose(1, 2).reshape(x.shape)


def concat_shuffle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The end of a ShuffleNetV2 unit: concatenate the two halves, shuffle with 2 groups."""
    return channel_shuffle(torch.cat((a, b), 1), 2)


# PyTorch's own functions, so the gradient at a kink (z exactly 0, 6 or +-3, which happens
# with low-precision inputs) is the one PyTorch gives; all are exact in float64.
_ACTIVATIONS = {
    "none": lambda z: z,
    "relu": F.relu,
    "relu6": F.relu6,
    "hardswish": F.hardswish,
    "silu": F.silu,
}


def activation(z: torch.Tensor, name: str | None) -> torch.Tensor:
    """The activation ``name`` (None, "none", "relu", "relu6", "hardswish", "silu") of ``z``."""
    return _ACTIVATIONS["none" if name is None else name](z)


# For functions whose own argument is called ``activation``.
_activate = activation


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     stride: int | tuple[int, int] = 1,
                     padding: int | tuple[int, int] | str = 0,
                     dilation: int | tuple[int, int] = 1,
                     activation_name: str | None = None) -> torch.Tensor:
    """``act(F.conv2d(x, weight, bias, stride, padding, dilation, groups=C))``."""
    z = F.conv2d(x, weight, bias, stride, padding, dilation, groups=x.shape[1])
    return activation(z, activation_name)


_SE_ACTIVATIONS = {"relu": F.relu, "silu": F.silu}
# relu6(z + 3) / 6 is hard-sigmoid with the same kinks (slope 0 at exactly -3 and 3) and an
# exact float64 gradient (aten.hardsigmoid_backward rounds 1/6 to float32).
_SE_GATES = {"sigmoid": torch.sigmoid, "hardsigmoid": lambda z: F.relu6(z + 3) / 6}


def _as_conv1x1(w: torch.Tensor) -> torch.Tensor:
    return w if w.dim() == 4 else w[:, :, None, None]


def squeeze_excite(x: torch.Tensor, w_reduce: torch.Tensor, b_reduce: torch.Tensor | None,
                   w_expand: torch.Tensor, b_expand: torch.Tensor | None,
                   activation: str = "relu", gate: str = "hardsigmoid") -> torch.Tensor:
    """``x * gate(conv1x1(act(conv1x1(x.mean((2, 3), keepdim=True)))))``; the 1×1 weights are
    ``(R, C, 1, 1)``/``(C, R, 1, 1)`` or the same as matrices."""
    pooled = x.mean((2, 3), keepdim=True)
    hidden = _SE_ACTIVATIONS[activation](F.conv2d(pooled, _as_conv1x1(w_reduce), b_reduce))
    return x * _SE_GATES[gate](F.conv2d(hidden, _as_conv1x1(w_expand), b_expand))


def inverted_residual(x: torch.Tensor, expand_weight: torch.Tensor | None,
                      expand_bias: torch.Tensor | None, dw_weight: torch.Tensor,
                      dw_bias: torch.Tensor | None, project_weight: torch.Tensor,
                      project_bias: torch.Tensor | None,
                      se_weights: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor,
                                        torch.Tensor | None] | None = None,
                      stride: int | tuple[int, int] = 1,
                      padding: int | tuple[int, int] = 0,
                      dilation: int | tuple[int, int] = 1,
                      activation: str | None | tuple[str | None, str | None] = "relu6",
                      se_activation: str = "relu",
                      se_gate: str = "hardsigmoid", project_activation: str | None = None,
                      residual: bool = False) -> torch.Tensor:
    """One MBConv block with its BatchNorms folded into the convolutions: ``[act(1x1)]``,
    ``act(depthwise)``, ``[squeeze_excite]``, ``[act](1x1)``, ``[+ x]``; ``activation`` is one
    name or a pair (after the expansion, after the depthwise convolution)."""
    act1, act2 = activation if isinstance(activation, tuple) else (activation, activation)
    h = x
    if expand_weight is not None:
        h = _activate(F.conv2d(h, _as_conv1x1(expand_weight), expand_bias), act1)
    h = depthwise_conv2d(h, dw_weight, dw_bias, stride, padding, dilation, act2)
    if se_weights is not None:
        h = squeeze_excite(h, *se_weights, se_activation, se_gate)
    out = _activate(F.conv2d(h, _as_conv1x1(project_weight), project_bias),
                        project_activation)
    return out + x if residual else out

