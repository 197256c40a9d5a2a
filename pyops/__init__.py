"""mobilefuse: fused CPU, CUDA and Triton kernels for the building blocks of efficient CNNs.

``mobilefuse.ops`` holds the functional ops, ``mobilefuse.nn`` the drop-in modules. Backends
are chosen with :func:`set_backend`, :func:`use_backend` or ``MOBILEFUSE_BACKEND``.
"""

from __future__ import annotations

import warnings

from mobilefuse import analysis, nn, ops, reference
from mobilefuse._extension import EXTENSION_ERROR, build_info, has_extension
from mobilefuse.accelerate import accelerate, restore
from mobilefuse.accelerate_report import AccelerateReport, accelerate_report
from mobilefuse.backends import (
    BACKENDS,
    available_backends,
    backend_status,
    get_backend,
    set_backend,
    use_backend,
)
from mobilefuse.profile import ProfileComparison, ProfileResult, profile

__version__ = "0.1.0"
__all__ = [
    "AccelerateReport", "accelerate", "accelerate_report", "restore",
    "BACKENDS", "available_backends", "backend_status", "build_info", "get_backend",
    "analysis", "has_extension", "nn", "ops", "reference", "set_backend", "use_backend",
    "profile", "ProfileComparison", "ProfileResult",
]

if EXTENSION_ERROR is not None:
    warnings.warn(
        f"mobilefuse: the compiled extension is missing ({EXTENSION_ERROR}); the 'cpu' and "
        "'cuda' backends are off and ops run on Triton or the PyTorch reference. Build it with "
        "`pip install --no-build-isolation -e .`.", RuntimeWarning, stacklevel=2)
