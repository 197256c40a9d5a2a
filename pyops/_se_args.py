"""Argument checks for squeeze_excite: every error names the argument and what was expected."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mobilefuse._checks import (
    check_float_tensor,
    check_like_x,
    check_pointwise_weight,
    check_vector,
)

OP = "squeeze_excite"
SE_ACTIVATIONS: tuple[str, ...] = ("relu", "silu")
SE_GATES: tuple[str, ...] = ("sigmoid", "hardsigmoid")


@dataclass(frozen=True)
class SqueezeExciteArgs:
    """The weights as matrices (``(R, C)`` and ``(C, R)``), the biases as given and the
    validated option names."""

    w_reduce: torch.Tensor
    w_expand: torch.Tensor
    activation: str
    gate: str
    b_reduce: torch.Tensor | None = None
    b_expand: torch.Tensor | None = None

    @property
    def op_args(self) -> tuple:
        """``(w_reduce, b_reduce, w_expand, b_expand, activation, gate)``: the arguments that
        follow the activation map in every native op with a squeeze-and-excitation."""
        return (self.w_reduce, self.b_reduce, self.w_expand, self.b_expand, self.activation,
                self.gate)


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"mobilefuse.{OP}: {name} must be one of "
                         f"{', '.join(repr(a) for a in allowed)}, got {value!r}")
    return str(value)


def check_squeeze_excite_args(x: object, w_reduce: object, b_reduce: object, w_expand: object,
                              b_expand: object, activation: object,
                              gate: object) -> SqueezeExciteArgs:
    """Validate a squeeze_excite call; return the weights as matrices, with the biases."""
    x = check_float_tensor(OP, "x", x)
    if x.dim() != 4:
        raise ValueError(f"mobilefuse.{OP}: x must have rank 4 (N, C, H, W), got shape "
                         f"{tuple(x.shape)}")
    channels = x.shape[1]
    w1 = check_pointwise_weight(OP, "w_reduce", w_reduce, None, channels, f"(R, {channels})")
    reduced = w1.shape[0]
    w2 = check_pointwise_weight(OP, "w_expand", w_expand, channels, reduced,
                                f"({channels}, {reduced})")
    tensors = {"x": x, "w_reduce": w1, "w_expand": w2}
    for name, bias, size in (("b_reduce", b_reduce, reduced), ("b_expand", b_expand, channels)):
        if bias is not None:
            tensors[name] = check_vector(OP, name, bias, size)
    check_like_x(OP, tensors)
    return SqueezeExciteArgs(w1, w2, _choice("activation", activation, SE_ACTIVATIONS),
                             _choice("gate", gate, SE_GATES), tensors.get("b_reduce"),
                             tensors.get("b_expand"))
