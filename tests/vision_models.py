"""torchvision and timm for the tests, when installed (scripts/install-vision-cpu.sh on CPU).

On CPU machines torchvision's compiled ops are removed (they cannot load against this torch);
its import then needs the schemas of the two ops it registers fakes for, defined here first.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch

_SCHEMAS: list[torch.library.Library] = []


def define_missing_torchvision_ops() -> None:
    """Define the schemas of the two ops torchvision registers fakes for at import, where its
    compiled ops were removed (CPU machines); a no-op elsewhere."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or _SCHEMAS or not spec.submodule_search_locations:
        return
    if any(Path(spec.submodule_search_locations[0]).glob("_C*.so")):
        return
    lib = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _SCHEMAS.append(lib)


def torchvision_or_skip() -> ModuleType:
    """The torchvision module, or skip the test (with how to install it)."""
    define_missing_torchvision_ops()
    return pytest.importorskip("torchvision", reason="torchvision is not installed "
                               "(scripts/install-vision-cpu.sh installs it on CPU)")


def timm_or_skip() -> ModuleType:
    """The timm module, or skip the test."""
    define_missing_torchvision_ops()
    return pytest.importorskip("timm", reason="timm is not installed "
                               "(scripts/install-vision-cpu.sh installs it on CPU)")
