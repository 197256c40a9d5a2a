"""Backend choice: which implementation runs an op.

Backends are ``"auto" | "cuda" | "triton" | "cpu" | "reference"``. The choice is global
(``set_backend``), scoped (``use_backend``) or set by the ``MOBILEFUSE_BACKEND`` environment
variable at import. Each backend answers why it cannot take an input
(:func:`unsupported_reasons`); an op that no chosen backend can take falls back to the
pure-PyTorch reference and warns once with those reasons.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

from mobilefuse._extension import EXTENSION_ERROR, build_info, has_extension

BACKENDS: tuple[str, ...] = ("auto", "cuda", "triton", "cpu", "reference")
# What "auto" tries, fastest first, for tensors on each device type.
AUTO_ORDER: dict[str, tuple[str, ...]] = {"cuda": ("cuda", "triton"), "cpu": ("cpu",)}
FLOAT_DTYPES: tuple[torch.dtype, ...] = (
    torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check_name(name: str, source: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"{source} must be a str, one of {', '.join(BACKENDS)}; got "
                        f"{type(name).__name__}")
    if name not in BACKENDS:
        raise ValueError(f"{source} must be one of {', '.join(BACKENDS)}; got {name!r}")
    return name


_current: str = _check_name(os.environ.get("MOBILEFUSE_BACKEND", "auto").strip().lower(),
                            "MOBILEFUSE_BACKEND")


def _probe_machine() -> dict[str, str | None]:
    """Why each backend cannot run at all on this build and machine (None: it can)."""
    triton_found = importlib.util.find_spec("triton") is not None
    interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"
    cuda_built = has_extension() and bool(build_info().get("cuda"))
    cuda_visible = torch.cuda.is_available()
    reasons: dict[str, str | None] = {"reference": None}
    if not has_extension():
        reasons["cpu"] = f"the extension mobilefuse._C did not load ({EXTENSION_ERROR})"
    else:
        reasons["cpu"] = None
    if not has_extension():
        reasons["cuda"] = reasons["cpu"]
    elif not cuda_built:
        reasons["cuda"] = "mobilefuse._C was built without CUDA kernels"
    elif not cuda_visible:
        reasons["cuda"] = "no CUDA device is visible"
    else:
        reasons["cuda"] = None
    if not triton_found:
        reasons["triton"] = "triton is not installed"
    elif not (cuda_visible or interpret):
        reasons["triton"] = "Triton needs a CUDA device, or TRITON_INTERPRET=1 for CPU tensors"
    else:
        reasons["triton"] = None
    return reasons


_MACHINE: dict[str, str | None] = _probe_machine()
_TRITON_INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0") == "1"
_warned: set[tuple[str, str]] = set()


def set_backend(name: str) -> None:
    """Choose the backend for every later op call (``"auto"`` restores the default)."""
    global _current
    _current = _check_name(name, "backend")


def get_backend() -> str:
    """The backend name currently chosen."""
    return _current


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager: run the ops inside the ``with`` block on backend ``name``."""
    global _current
    previous = _current
    _current = _check_name(name, "backend")
    try:
        yield
    finally:
        _current = previous


def run_on_backend(backend: str, fn: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
    """``fn(*args)`` on ``backend``; "auto" leaves the current choice as it is."""
    if backend == "auto":
        return fn(*args)
    with use_backend(backend):
        return fn(*args)


def available_backends() -> list[str]:
    """The backends this build and machine can run (``"reference"`` always)."""
    return [name for name in BACKENDS[1:] if _MACHINE[name] is None]


def backend_status() -> dict[str, str]:
    """For every backend: ``"available"`` or the reason it is not."""
    return {name: _MACHINE[name] or "available" for name in BACKENDS[1:]}


def unsupported_reasons(backend: str, device: torch.device, dtype: torch.dtype,
                        dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES) -> list[str]:
    """Why ``backend`` cannot run an op on tensors of this device and dtype ([] if it can)."""
    reasons = [] if _MACHINE[backend] is None else [str(_MACHINE[backend])]
    if backend == "cpu" and device.type != "cpu":
        reasons.append(f"the cpu backend takes CPU tensors, got {device.type}")
    if backend == "cuda" and device.type != "cuda":
        reasons.append(f"the cuda backend takes CUDA tensors, got {device.type}")
    if backend == "triton" and device.type != "cuda" and not (
        device.type == "cpu" and _TRITON_INTERPRET
    ):
        reasons.append(f"Triton runs {device.type} tensors only under TRITON_INTERPRET=1"
                       if device.type == "cpu" else f"Triton cannot run {device.type} tensors")
    if dtype not in dtypes:
        reasons.append(f"dtype {dtype} is not one of {', '.join(str(d) for d in dtypes)}")
    return reasons


def candidate_backends(device: torch.device, requested: str | None = None) -> tuple[str, ...]:
    """The kernel backends tried, in order, for tensors on ``device`` when ``requested`` (default:
    the current choice) is asked for: ``"auto"``'s list, the one named, none for the reference."""
    requested = _current if requested is None else requested
    if requested == "reference":
        return ()
    return AUTO_ORDER.get(device.type, ()) if requested == "auto" else (requested,)


def kernel_backend(device: torch.device, dtype: torch.dtype,
                   requested: str | None = None) -> str | None:
    """The backend whose kernels would run on these tensors, or None (the reference), when
    ``requested`` (default: the current choice) is asked for; like :func:`select_backend` but
    silent."""
    for name in candidate_backends(device, requested):
        if not unsupported_reasons(name, device, dtype):
            return name
    return None


def select_backend(op: str, device: torch.device, dtype: torch.dtype,
                   dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES,
                   op_reason: str | None = None) -> str:
    """The backend that runs ``op`` on these tensors; warns once when it must be the reference.

    ``op_reason`` says why no kernel of ``op`` takes these arguments (a valid input that only
    the reference computes), or is None.
    """
    if _current == "reference":
        return "reference"
    why: dict[str, list[str]] = {}
    for name in candidate_backends(device):
        reasons = unsupported_reasons(name, device, dtype, dtypes)
        if op_reason is not None:
            reasons.append(op_reason)
        if not reasons:
            return name
        why[name] = reasons
    _warn_fallback(op, _current, why)
    return "reference"


def _warn_fallback(op: str, requested: str, why: dict[str, list[str]]) -> None:
    detail = "; ".join(f"{name}: {', '.join(r)}" for name, r in why.items()) or (
        "no fused backend serves this device")
    key = (op, detail)
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(f"mobilefuse.{op}: backend {requested!r} cannot take this input ({detail}); "
                  "using the PyTorch reference", RuntimeWarning, stacklevel=4)
