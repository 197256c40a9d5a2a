"""Named ranges for the ops that are not single dispatcher calls.

Every ``torch.ops.mobilefuse.<op>`` already appears under its own name in ``torch.profiler``
traces and, under ``torch.autograd.profiler.emit_nvtx()``, as an NVTX range: the dispatcher
records each call. Python-level work does not: the whole inverted-residual block (several
dispatcher calls), its training autograd function, and the reference fallbacks. They open a
``mobilefuse::<op>`` range here, and only while a profiler listens, so an unprofiled call pays
one flag read (about 0.1 us) instead of a ``record_function`` (about 5 us).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import ParamSpec, TypeVar

import torch

PREFIX = "mobilefuse::"
P = ParamSpec("P")
R = TypeVar("R")


def op_range(op: str) -> AbstractContextManager[object]:
    """A ``mobilefuse::<op>`` profiler range when a profiler (or ``emit_nvtx``) is on, else a
    no-op context. Not opened inside a ``torch.compile`` trace, whose graph names its ops."""
    if torch.compiler.is_compiling() or not torch.autograd._profiler_enabled():
        return contextlib.nullcontext()
    return torch.profiler.record_function(PREFIX + op)


def in_op_range(op: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator: run the function inside :func:`op_range` ``(op)``."""
    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            with op_range(op):
                return fn(*args, **kwargs)
        return run
    return wrap
