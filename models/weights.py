"""Loading weights from local files only: nothing is ever downloaded."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

__all__ = ["load_weights"]

# Keys that training scripts commonly wrap a state_dict in.
_WRAPPERS = ("state_dict", "model", "model_state_dict")


def _read(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        if importlib.util.find_spec("safetensors") is None:
            raise RuntimeError(f"{path} is a safetensors file but safetensors is not installed")
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    # weights_only: a checkpoint cannot run code when it is unpickled.
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in _WRAPPERS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise TypeError(f"{path} holds a {type(state).__name__}, not a state_dict")
    return state


def load_weights(model: nn.Module, path: str | os.PathLike[str], strict: bool = True) -> nn.Module:
    """Load the state_dict stored at local ``path`` into ``model`` and return the model.

    ``path`` is a ``torch.save`` file (read with ``weights_only=True``; a dict wrapping the
    state_dict under ``"state_dict"``, ``"model"`` or ``"model_state_dict"`` is unwrapped) or,
    when the ``safetensors`` package is installed, a ``.safetensors`` file. torchvision's
    checkpoints load into the models that share its module names with ``strict=True``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path} (weights are never downloaded)")
    model.load_state_dict(_read(path), strict=strict)
    return model
