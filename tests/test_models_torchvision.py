"""The zoo against torchvision: same state_dict keys and shapes, strict loading, same outputs.

Small models run on random weights in float64 on a 64x64 input (loaded strictly from
torchvision's state_dict, also through a file and load_weights); every model that torchvision
has is compared on the meta device (keys, shapes, parameter counts) at no cost.
"""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close_to_reference, randomize_norms
from torch import nn
from vision_models import torchvision_or_skip

from mobilefuse import models

SHARED = [name for name in models.list_models() if models.model_info(name).torchvision]
NUMERIC = ["mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "efficientnet_b0",
           "efficientnet_b1", "efficientnet_b5", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0",
           "resnet18", "resnet50"]


def torchvision_model(name: str, **kwargs: object) -> nn.Module:
    return getattr(torchvision_or_skip().models, name)(**kwargs)


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


@pytest.mark.parametrize("name", SHARED)
def test_state_dict_keys_and_shapes_equal(name: str) -> None:
    """Same state_dict keys in the same order, same shapes, same parameter count."""
    with torch.device("meta"):
        theirs = torchvision_model(name)
        ours = models.create_model(name)
    assert shapes(ours) == shapes(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert sum(p.numel() for p in ours.parameters()) == sum(
        p.numel() for p in theirs.parameters())


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"])
@pytest.mark.parametrize("width", [0.35, 0.5, 0.75, 1.3, 1.4])
def test_width_multiplier_matches_torchvision(name: str, width: float) -> None:
    """Width multipliers scale and round every layer as torchvision does."""
    with torch.device("meta"):
        assert shapes(models.create_model(name, width_mult=width)) == shapes(
            torchvision_model(name, width_mult=width))


@pytest.mark.parametrize("name", NUMERIC)
def test_loads_strictly_and_gives_the_same_outputs(name: str, tmp_path) -> None:
    """torchvision's weights (saved to a file) load strictly; outputs agree in float64."""
    torch.manual_seed(0)
    theirs = torchvision_model(name, num_classes=10).eval()
    randomize_norms(theirs)
    torch.save(theirs.state_dict(), tmp_path / f"{name}.pth")
    ours = models.load_weights(models.create_model(name, num_classes=10), tmp_path / f"{name}.pth")
    ours.eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        assert_close_to_reference(ours.double()(x), theirs.double()(x), 1e-12, name)


def test_batchnorm_settings_follow_torchvision() -> None:
    """BatchNorm eps and momentum are those torchvision's weights were trained with."""
    for name in ("mobilenet_v2", "mobilenet_v3_large", "efficientnet_b4", "efficientnet_b7"):
        with torch.device("meta"):
            theirs, ours = torchvision_model(name), models.create_model(name)
        settings = {(m.eps, m.momentum) for m in theirs.modules() if isinstance(m, nn.BatchNorm2d)}
        assert {(m.eps, m.momentum) for m in ours.modules()
                if isinstance(m, nn.BatchNorm2d)} == settings, name
