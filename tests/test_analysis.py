"""mobilefuse.analysis: conv_cost against the MobileNets arithmetic, se_gates against gates
computed by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mobilefuse
from mobilefuse.analysis import conv_cost, is_se_layer, plot_se_gates, se_gates


def test_conv_cost_matches_the_mobilenets_formulas():
    cost = conv_cost(32, 64, 3, 112, 112)
    pixels = 112 * 112
    assert cost.standard_macs == 3 * 3 * 32 * 64 * pixels
    assert cost.separable_macs == 3 * 3 * 32 * pixels + 32 * 64 * pixels
    assert cost.standard_params == 3 * 3 * 32 * 64
    assert cost.separable_params == 3 * 3 * 32 + 32 * 64
    assert cost.reduction == pytest.approx(1 / 64 + 1 / 9)
    assert cost.speedup == pytest.approx(1 / (1 / 64 + 1 / 9))


def test_conv_cost_stride_rounds_the_output_up():
    cost = conv_cost(8, 16, 5, 15, 9, stride=2)
    assert (cost.out_h, cost.out_w) == (8, 5)
    assert cost.depthwise_macs == 25 * 8 * 8 * 5


@pytest.mark.parametrize("kwargs", [dict(c_in=0), dict(k=-3), dict(stride=1.5), dict(h=True)])
def test_conv_cost_rejects_bad_sizes(kwargs):
    args = dict(c_in=8, c_out=8, k=3, h=8, w=8, stride=1) | kwargs
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=f"{name} must be a positive int"):
        conv_cost(**args)


class SqueezeExcitation(nn.Module):
    """An SE layer with its gate as a child (as torchvision names it)."""

    def __init__(self, c: int, r: int = 4) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1)
        self.scale_activation = nn.Sigmoid()

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale_activation(self.fc2(torch.relu(self.fc1(x.mean((2, 3), True)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class SELayer(nn.Module):
    """An SE layer whose gate is computed inline: read back from input and output."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc = nn.Linear(c, c)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(x.mean((2, 3))))[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


def test_se_gates_reads_each_layer_gate():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), SqueezeExcitation(8), nn.Conv2d(8, 12, 3),
                          SELayer(12)).eval()
    x = torch.randn(3, 3, 11, 9)
    gates = se_gates(model, x)
    assert list(gates) == ["1", "3"]
    with torch.no_grad():
        h = model[0](x)
        expected1 = model[1].gate(h).flatten(1)
        expected3 = model[3].gate(model[2](model[1](h))).flatten(1)
    torch.testing.assert_close(gates["1"], expected1)
    torch.testing.assert_close(gates["3"], expected3, rtol=1e-5, atol=1e-6)
    assert gates["3"].shape == (3, 12)
    # Hooks are gone afterwards.
    assert not any(m._forward_hooks for m in model.modules())


def test_se_gates_on_an_accelerated_model_and_plot(tmp_path):
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Hardswish(),
                          SqueezeExcitation(4, 2))
    fast = mobilefuse.accelerate(model.eval())
    x = torch.randn(2, 4, 7, 7)
    torch.testing.assert_close(se_gates(fast, x)["2"], se_gates(model, x)["2"])
    path = plot_se_gates(se_gates(fast, x), tmp_path / "gates.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_se_layer_names():
    assert is_se_layer(SqueezeExcitation(4)) and is_se_layer(SELayer(4))
    assert not is_se_layer(nn.Conv2d(1, 1, 1)) and not is_se_layer(nn.Sequential())


def test_se_gates_bad_input():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        se_gates("model", torch.randn(1))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        se_gates(nn.Identity(), [1.0])
    with pytest.raises(ValueError, match="no squeeze-and-excitation layer"):
        se_gates(nn.Conv2d(3, 3, 1), torch.randn(1, 3, 4, 4))
