"""Loads the compiled extension `mobilefuse._C`, and says why when it cannot."""

from __future__ import annotations

import importlib
from typing import Any

try:
    _C = importlib.import_module("mobilefuse._C")
    EXTENSION_ERROR: str | None = None
except ImportError as exc:  # a source tree that was never built, or a broken build
    _C = None
    EXTENSION_ERROR = f"{type(exc).__name__}: {exc}"


def has_extension() -> bool:
    """Whether `mobilefuse._C` (the C++ ops and their schemas) loaded."""
    return _C is not None


def build_info() -> dict[str, Any]:
    """What the compiled extension was built with.

    Returns a dict with ``compiler``, ``openmp``, ``vector_isa``, ``avx512_kernels`` (bool:
    AVX-512 copies of the channels_last depthwise kernels are built in, and run on CPUs with
    AVX-512), ``cuda`` (bool), ``cuda_version`` and ``cuda_archs``; when the extension is
    missing, the dict has ``extension: False`` and the import ``error`` instead.
    """
    if _C is None:
        return {"extension": False, "error": EXTENSION_ERROR}
    return {"extension": True, **_C.build_info()}
