"""The model registry: ``create_model(name)``, ``list_models()``, ``model_info(name)``."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

from mobilefuse.models.weights import load_weights

__all__ = ["ModelInfo", "create_model", "list_models", "model_info", "register_model"]

ModelFn = TypeVar("ModelFn", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class ModelInfo:
    """What the report needs to know about a model without building it.

    Attributes:
        name: the registered name (the function's name).
        family: ``"mobilenet_v1"``, ``"mobilenet_v2"``, ``"mobilenet_v3"``, ``"efficientnet"``,
            ``"shufflenet_v1"``, ``"shufflenet_v2"``, ``"resnet"`` or ``"vgg"``.
        input_size: the default input ``(channels, height, width)``.
        torchvision: whether torchvision has the same network (same module names and weights).
        paper: where the architecture comes from.
    """

    name: str
    family: str
    input_size: tuple[int, int, int]
    torchvision: bool
    paper: str


_MODELS: dict[str, tuple[Callable[..., nn.Module], ModelInfo]] = {}


def register_model(family: str, paper: str, resolution: int = 224,
                   torchvision: bool = True) -> Callable[[ModelFn], ModelFn]:
    """Decorator: register a model function under its own name."""
    def wrap(fn: ModelFn) -> ModelFn:
        info = ModelInfo(fn.__name__, family, (3, resolution, resolution), torchvision, paper)
        _MODELS[fn.__name__] = (fn, info)
        return fn
    return wrap


def _lookup(name: str) -> tuple[Callable[..., nn.Module], ModelInfo]:
    try:
        return _MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(_MODELS))}") from None


def list_models(pattern: str | None = None) -> list[str]:
    """The registered model names, sorted; ``pattern`` filters them (``fnmatch``, e.g.
    ``"efficientnet_*"``)."""
    names = sorted(_MODELS)
    return names if pattern is None else fnmatch.filter(names, pattern)


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of model ``name`` (its default input size among others)."""
    return _lookup(name)[1]


def create_model(name: str, weights: str | os.PathLike[str] | None = None,
                 **kwargs: Any) -> nn.Module:
    """Build model ``name`` with ``kwargs`` passed to its function (``num_classes``,
    ``act_layer``, ``norm_layer``, ...). Weights are random unless ``weights`` names a local
    file, loaded strictly with :func:`~mobilefuse.models.load_weights` (never downloaded)."""
    model = _lookup(name)[0](**kwargs)
    if weights is not None:
        load_weights(model, weights)
    return model
