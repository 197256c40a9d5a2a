"""Correctness before speed: every op on every fused backend against the float64 reference.

A backend that silently hands an input to the PyTorch reference would pass on numbers
alone, so mobilefuse's fallback warnings are turned into errors here and count as FAIL.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable

import torch

from mobilefuse import ops, reference, use_backend
from mobilefuse.backends import available_backends, unsupported_reasons
from mobilefuse.bench.cases import LAYOUTS, OPS, SHUFFLE_OPS, make_input
from mobilefuse.bench.timing import error_text

# Odd sizes, so no kernel gets away with assuming a multiple of its block or vector width.
ACTIVATION_SHAPE: tuple[int, ...] = (3, 7, 9, 11)
SHUFFLE_SHAPE: tuple[int, ...] = (3, 12, 9, 11)
SHUFFLE_GROUPS = 3
DEPTHWISE_SHAPE: tuple[int, ...] = (2, 5, 9, 11)
# (kernel, stride, activation): the networks' kernels and strides, activations with kinks
# (relu6, hardswish) and a smooth one (silu); padding k // 2 as in the networks.
DEPTHWISE_CASES: tuple[tuple[int, int, str], ...] = (
    (3, 1, "relu6"), (5, 2, "hardswish"), (3, 2, "silu"))
DEPTHWISE = "depthwise_conv2d"
SE_SHAPE: tuple[int, ...] = (2, 12, 9, 11)
SE_REDUCED = 3
SE_CASES: tuple[tuple[str, str], ...] = (("relu", "hardsigmoid"), ("silu", "sigmoid"))
SQUEEZE_EXCITE = "squeeze_excite"
DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16)

# Max abs error / max |reference|, as in DESIGN.md.
FORWARD_TOL: dict[torch.dtype, float] = {
    torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
BACKWARD_TOL: dict[torch.dtype, float] = {
    torch.float64: 1e-12, torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}

_OP: dict[str, Callable[..., torch.Tensor]] = {
    "hardswish": ops.hardswish, "hardsigmoid": ops.hardsigmoid,
    "channel_shuffle": ops.channel_shuffle, "concat_shuffle": ops.concat_shuffle}
_REF: dict[str, Callable[..., torch.Tensor]] = {
    "hardswish": reference.hardswish, "hardsigmoid": reference.hardsigmoid}


@dataclasses.dataclass
class Check:
    """The outcome of one (backend, op, dtype, layout[, case]) verification.

    ``backward_error`` is the worst over the inputs' gradients, listed in ``grad_errors``
    when there are several; ``case`` names an op's settings (e.g. ``k3 s1 relu6``).
    """

    backend: str
    device: str
    op: str
    dtype: str
    memory_format: str
    status: str = "FAIL"
    forward_error: float | None = None
    backward_error: float | None = None
    detail: str = ""
    case: str = ""
    grad_errors: dict[str, float] | None = None

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict of this check."""
        return dataclasses.asdict(self)


def backend_devices() -> dict[str, torch.device]:
    """Each available fused backend and the device its kernels can be checked on here."""
    cuda = torch.cuda.is_available()
    interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"
    devices: dict[str, torch.device] = {}
    for name in available_backends():
        if name == "cpu":
            devices[name] = torch.device("cpu")
        elif name == "cuda" and cuda:
            devices[name] = torch.device("cuda")
        elif name == "triton" and (cuda or interpret):
            devices[name] = torch.device("cuda" if cuda else "cpu")
    return devices


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Max abs error scaled by max |expected|; inf when ``actual`` has a NaN or inf."""
    actual64 = actual.detach().double().cpu()
    expected64 = expected.detach().double().cpu()
    if not torch.isfinite(actual64).all():
        return float("inf")
    scale = expected64.abs().max().item() if expected64.numel() else 0.0
    err = (actual64 - expected64).abs().max().item() if expected64.numel() else 0.0
    return err / scale if scale > 0 else err


def _grad_like(x: torch.Tensor, layout: str, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + 1)
    grad = torch.randn(x.shape, generator=gen, dtype=torch.float32)
    return grad.to(device=x.device, dtype=x.dtype).contiguous(memory_format=LAYOUTS[layout])


def _check_activation(check: Check, x: torch.Tensor, seed: int) -> None:
    grad = _grad_like(x, check.memory_format, seed)
    x_ref = x.detach().double().requires_grad_(True)
    expected = _REF[check.op](x_ref)
    expected.backward(grad.double())
    x_in = x.detach().clone().requires_grad_(True)
    out = _OP[check.op](x_in)
    out.backward(grad)
    check.forward_error = relative_error(out, expected)
    check.backward_error = relative_error(x_in.grad, x_ref.grad)
    problems = []
    if check.forward_error > FORWARD_TOL[x.dtype]:
        problems.append(f"forward error {check.forward_error:.2e} > {FORWARD_TOL[x.dtype]:.0e}")
    if check.backward_error > BACKWARD_TOL[x.dtype]:
        problems.append(
            f"backward error {check.backward_error:.2e} > {BACKWARD_TOL[x.dtype]:.0e}")
    _finish(check, out, x, problems)


def _check_moves(check: Check, x: torch.Tensor, seed: int,
                 fused: Callable[[torch.Tensor], torch.Tensor],
                 oracle: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """An op that only moves values: its output and the gradient reaching ``x`` must equal
    the reference's bit for bit (the reference in ``x``'s own dtype is then exact)."""
    grad = _grad_like(x, check.memory_format, seed)
    x_ref = x.detach().clone().requires_grad_(True)
    expected = oracle(x_ref)
    expected.backward(grad)
    x_in = x.detach().clone().requires_grad_(True)
    out = fused(x_in)
    out.backward(grad)
    check.forward_error = relative_error(out, expected)
    check.backward_error = relative_error(x_in.grad, x_ref.grad)
    problems = []
    if not torch.equal(out, expected):
        problems.append("forward is not bit-exact")
    if not torch.equal(x_in.grad, x_ref.grad):
        problems.append("backward is not bit-exact")
    _finish(check, out, x, problems)


def _check_shuffle(check: Check, x: torch.Tensor, seed: int) -> None:
    _check_moves(check, x, seed, lambda t: ops.channel_shuffle(t, SHUFFLE_GROUPS),
                 lambda t: reference.channel_shuffle(t, SHUFFLE_GROUPS))


def _check_concat_shuffle(check: Check, x: torch.Tensor, seed: int) -> None:
    # x's two channel halves are views, as in a ShuffleNetV2 unit (read in place on CPU).
    _check_moves(check, x, seed, lambda t: ops.concat_shuffle(*t.chunk(2, 1)),
                 lambda t: reference.concat_shuffle(*t.chunk(2, 1)))


def _check_against_reference(check: Check, x: torch.Tensor, inputs: list[torch.Tensor],
                             names: tuple[str, ...], fused: Callable[..., torch.Tensor],
                             oracle: Callable[..., torch.Tensor], seed: int) -> None:
    """``fused(*inputs)`` and its gradients for every input against ``oracle`` in float64."""
    refs = [t.detach().double().requires_grad_() for t in inputs]
    expected = oracle(*refs)
    grad = _grad_like(expected.detach().to(x.dtype), check.memory_format, seed)
    expected_grads = torch.autograd.grad(expected, refs, grad.double())
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fused(*leaves)
    grads = torch.autograd.grad(out, leaves, grad)
    check.forward_error = relative_error(out, expected)
    check.grad_errors = {name: relative_error(got, want) for name, got, want in zip(
        names, grads, expected_grads, strict=True)}
    check.backward_error = max(check.grad_errors.values())
    problems = []
    if check.forward_error > FORWARD_TOL[x.dtype]:
        problems.append(f"forward error {check.forward_error:.2e} > {FORWARD_TOL[x.dtype]:.0e}")
    problems += [f"grad {name} error {err:.2e} > {BACKWARD_TOL[x.dtype]:.0e}"
                 for name, err in check.grad_errors.items() if err > BACKWARD_TOL[x.dtype]]
    _finish(check, out, x, problems)


def _check_depthwise(check: Check, x: torch.Tensor, kernel: int, stride: int,
                     activation: str, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed + 2)
    channels = x.shape[1]
    weight = (torch.randn(channels, 1, kernel, kernel, generator=gen) / kernel).to(x.device,
                                                                                  x.dtype)
    bias = torch.randn(channels, generator=gen).to(x.device, x.dtype)
    settings = (stride, kernel // 2, 1, activation)
    _check_against_reference(
        check, x, [x, weight, bias], ("x", "weight", "bias"),
        lambda *t: ops.depthwise_conv2d(*t, *settings),
        lambda *t: reference.depthwise_conv2d(*t, *settings), seed)


def _check_squeeze_excite(check: Check, x: torch.Tensor, activation: str, gate: str,
                          seed: int) -> None:
    gen = torch.Generator().manual_seed(seed + 3)
    channels = x.shape[1]
    weights = [torch.randn(shape, generator=gen).to(x.device, x.dtype) for shape in (
        (SE_REDUCED, channels), (SE_REDUCED,), (channels, SE_REDUCED), (channels,))]
    _check_against_reference(
        check, x, [x, *weights], ("x", "w_reduce", "b_reduce", "w_expand", "b_expand"),
        lambda *t: ops.squeeze_excite(*t, activation, gate),
        lambda *t: reference.squeeze_excite(*t, activation, gate), seed)


def _finish(check: Check, out: torch.Tensor, x: torch.Tensor, problems: list[str]) -> None:
    # The ops promise an output in the input's memory format.
    layout = LAYOUTS[check.memory_format]
    if not out.is_contiguous(memory_format=layout):
        problems.append(f"output is not {check.memory_format}")
    check.status = "FAIL" if problems else "PASS"
    check.detail = "; ".join(problems)


def _run_check(check: Check, backend: str, device: torch.device, dtype: torch.dtype,
               dtypes: tuple[torch.dtype, ...], body: Callable[[], None]) -> Check:
    reasons = unsupported_reasons(backend, device, dtype, dtypes)
    if reasons:
        check.detail = "; ".join(reasons)
        return check
    with warnings.catch_warnings(), use_backend(backend):
        # A fallback to the reference is a failure of the backend under test.
        warnings.filterwarnings("error", message="mobilefuse", category=RuntimeWarning)
        try:
            body()
        except Exception as exc:  # noqa: BLE001  (any error is a FAIL with its message)
            check.status = "FAIL"
            check.detail = error_text(exc, 200)
    return check


def verify_one(backend: str, device: torch.device, op: str, dtype: torch.dtype,
               layout: str, seed: int = 0) -> Check:
    """Check ``op``'s forward and backward on ``backend`` for one dtype and memory format."""
    check = Check(backend, device.type, op, str(dtype).removeprefix("torch."), layout)
    shuffle = op in SHUFFLE_OPS
    shape = SHUFFLE_SHAPE if shuffle else ACTIVATION_SHAPE
    dtypes = ops.SHUFFLE_DTYPES if shuffle else (dtype,)
    checker = {"channel_shuffle": _check_shuffle,
               "concat_shuffle": _check_concat_shuffle}.get(op, _check_activation)

    def body() -> None:
        x = make_input(shape, dtype, layout, device, seed)
        checker(check, x, seed)

    return _run_check(check, backend, device, dtype, dtypes, body)


def verify_depthwise(backend: str, device: torch.device, dtype: torch.dtype, layout: str,
                     kernel: int, stride: int, activation: str, seed: int = 0) -> Check:
    """Check depthwise_conv2d's forward and its x, weight and bias gradients on ``backend``."""
    check = Check(backend, device.type, DEPTHWISE, str(dtype).removeprefix("torch."), layout,
                  case=f"k{kernel} s{stride} {activation}")

    def body() -> None:
        x = make_input(DEPTHWISE_SHAPE, dtype, layout, device, seed)
        _check_depthwise(check, x, kernel, stride, activation, seed)

    return _run_check(check, backend, device, dtype, (dtype,), body)


def verify_squeeze_excite(backend: str, device: torch.device, dtype: torch.dtype, layout: str,
                          activation: str, gate: str, seed: int = 0) -> Check:
    """Check squeeze_excite's forward and all five gradients on ``backend``."""
    check = Check(backend, device.type, SQUEEZE_EXCITE, str(dtype).removeprefix("torch."),
                  layout, case=f"{activation} {gate}")

    def body() -> None:
        x = make_input(SE_SHAPE, dtype, layout, device, seed)
        _check_squeeze_excite(check, x, activation, gate, seed)

    return _run_check(check, backend, device, dtype, (dtype,), body)


def verify_all(seed: int = 0) -> list[Check]:
    """Every op (and depthwise case) x backend x dtype x memory format this machine can check."""
    checks = []
    grid = [(dtype, layout) for dtype in DTYPES for layout in LAYOUTS]
    for backend, device in backend_devices().items():
        for op in OPS:
            checks += [verify_one(backend, device, op, dtype, layout, seed)
                       for dtype, layout in grid]
        for case in DEPTHWISE_CASES:
            checks += [verify_depthwise(backend, device, dtype, layout, *case, seed=seed)
                       for dtype, layout in grid]
        for activation, gate in SE_CASES:
            checks += [verify_squeeze_excite(backend, device, dtype, layout, activation, gate,
                                             seed=seed) for dtype, layout in grid]
    return checks


__all__ = ["Check", "backend_devices", "relative_error", "verify_all", "verify_depthwise",
           "verify_one", "verify_squeeze_excite"]
