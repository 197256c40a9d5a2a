"""Argument checks for squeeze_excite: every error names the argument and what was expected."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mobilefuse._checks import check_float_tensor, check_like_x, check_tensor

OP = "squeeze_excite"
SE_ACTIVATIONS: tuple[str, ...] = ("relu", "silu")
SE_GATES: tuple[str, ...] = ("sigmoid", "hardsigmoid")


@dataclass(frozen=True)
class SqueezeExciteArgs:
    """The weights as matrices (``(R, C)`` and ``(C, R)``) and the validated option names."""

    w_reduce: torch.Tensor
    w_expand: torch.Tensor
    activation: str
    gate: str


def _matrix(name: str, w: torch.Tensor, rows: int | None, cols: int | None,
            expected: str) -> torch.Tensor:
    ok = w.dim() == 2 or (w.dim() == 4 and w.shape[2:] == (1, 1))
    if ok:
        ok = (rows is None or w.shape[0] == rows) and (cols is None or w.shape[1] == cols)
    if not ok or w.shape[0] == 0:
        raise ValueError(f"mobilefuse.{OP}: {name} must have shape {expected} (or the same with "
                         f"trailing 1, 1 as a 1x1 conv weight), got {tuple(w.shape)}")
    return w.reshape(w.shape[0], w.shape[1])


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"mobilefuse.{OP}: {name} must be one of "
                         f"{', '.join(repr(a) for a in allowed)}, got {value!r}")
    return str(value)


def check_squeeze_excite_args(x: object, w_reduce: object, b_reduce: object, w_expand: object,
                              b_expand: object, activation: object,
                              gate: object) -> SqueezeExciteArgs:
    """Validate a squeeze_excite call; return the weights as matrices."""
    x = check_float_tensor(OP, "x", x)
    if x.dim() != 4:
        raise ValueError(f"mobilefuse.{OP}: x must have rank 4 (N, C, H, W), got shape "
                         f"{tuple(x.shape)}")
    channels = x.shape[1]
    w1 = _matrix("w_reduce", check_tensor(OP, "w_reduce", w_reduce), None, channels,
                 f"(R, {channels})")
    reduced = w1.shape[0]
    w2 = _matrix("w_expand", check_tensor(OP, "w_expand", w_expand), channels, reduced,
                 f"({channels}, {reduced})")
    tensors = {"x": x, "w_reduce": w1, "w_expand": w2}
    for name, bias, size in (("b_reduce", b_reduce, reduced), ("b_expand", b_expand, channels)):
        if bias is None:
            continue
        bias = check_tensor(OP, name, bias)
        if tuple(bias.shape) != (size,):
            raise ValueError(f"mobilefuse.{OP}: {name} must have shape ({size},), got "
                             f"{tuple(bias.shape)}")
        tensors[name] = bias
    check_like_x(OP, tensors)
    return SqueezeExciteArgs(w1, w2, _choice("activation", activation, SE_ACTIVATIONS),
                             _choice("gate", gate, SE_GATES))
