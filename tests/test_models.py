"""The model zoo: registry, parameter counts, multiply-adds, injected layers, local weights.

Counts and multiply-adds are taken on the meta device (no memory, no arithmetic), so even
EfficientNet-B7 and VGG-19 cost milliseconds.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import mobilefuse
from mobilefuse import models
from mobilefuse.models import specs

# torchvision's parameter counts (its weights' "num_params"), to the unit.
TORCHVISION_PARAMS = {
    "mobilenet_v2": 3_504_872, "mobilenet_v3_large": 5_483_032, "mobilenet_v3_small": 2_542_856,
    "efficientnet_b0": 5_288_548, "efficientnet_b1": 7_794_184, "efficientnet_b2": 9_109_994,
    "efficientnet_b3": 12_233_232, "efficientnet_b4": 19_341_616, "efficientnet_b5": 30_389_784,
    "efficientnet_b6": 43_040_704, "efficientnet_b7": 66_347_960,
    "shufflenet_v2_x0_5": 1_366_792, "shufflenet_v2_x1_0": 2_278_604,
    "shufflenet_v2_x1_5": 3_503_624, "shufflenet_v2_x2_0": 7_393_996,
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "vgg16": 138_357_544, "vgg19": 143_667_240,
    "vgg16_bn": 138_365_992, "vgg19_bn": 143_678_248,
}
# torchvision's published GFLOPS (its weights' "_ops": multiply-adds of convolutions and
# linear layers, in 1e9) at its evaluation crop.
TORCHVISION_GMACS = {
    "mobilenet_v2": (0.301, 224), "mobilenet_v3_large": (0.217, 224),
    "mobilenet_v3_small": (0.057, 224), "efficientnet_b0": (0.386, 224),
    "efficientnet_b1": (0.687, 240), "efficientnet_b2": (1.088, 288),
    "efficientnet_b3": (1.827, 300), "efficientnet_b4": (4.394, 380),
    "efficientnet_b5": (10.266, 456), "efficientnet_b6": (19.068, 528),
    "efficientnet_b7": (37.746, 600), "shufflenet_v2_x0_5": (0.04, 224),
    "shufflenet_v2_x1_0": (0.145, 224), "shufflenet_v2_x1_5": (0.296, 224),
    "shufflenet_v2_x2_0": (0.583, 224), "resnet18": (1.814, 224), "resnet50": (4.089, 224),
    "vgg16": (15.47, 224),
}
# MobileNetV1 paper, Tables 6 and 7: width α -> (million mult-adds, million parameters) at 224;
# resolution -> million mult-adds at α = 1.
MOBILENET_V1_WIDTH = {1.0: (569, 4.2), 0.75: (325, 2.6), 0.5: (149, 1.3), 0.25: (41, 0.5)}
MOBILENET_V1_RESOLUTION = {224: 569, 192: 418, 160: 290, 128: 186}
# ShuffleNetV1 paper: Table 1 (1x, million FLOPs = mult-adds per group count) and Table 2
# (0.5x at g = 3: 38 MFLOPs). The paper's "FLOPs" are multiply-adds.
SHUFFLENET_V1_MFLOPS = {(1, 1.0): 143, (2, 1.0): 140, (3, 1.0): 137, (4, 1.0): 133,
                        (8, 1.0): 137, (3, 0.5): 38}
EFFICIENTNET_RESOLUTION = [224, 240, 260, 300, 380, 456, 528, 600]


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta_model(name: str, **kwargs: object) -> nn.Module:
    with torch.device("meta"):
        return models.create_model(name, **kwargs)


def macs(model: nn.Module, resolution: int) -> float:
    """Multiply-adds of one image (FlopCounterMode counts 2 FLOPs per multiply-add)."""
    x = torch.empty(1, 3, resolution, resolution, device="meta")
    with FlopCounterMode(display=False) as counter:
        model.eval()(x)
    return counter.get_total_flops() / 2


def test_list_and_create() -> None:
    """Every required model is registered, has a function, and builds by name."""
    names = models.list_models()
    expected = {"mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
                "shufflenet_v1", *TORCHVISION_PARAMS}
    assert expected <= set(names) and names == sorted(names)
    assert all(callable(getattr(models, name)) for name in names)
    assert models.list_models("efficientnet_*") == [f"efficientnet_b{i}" for i in range(8)]
    model = meta_model("mobilenet_v2", num_classes=7)
    assert isinstance(model, models.MobileNet) and model.classifier[-1].out_features == 7
    with pytest.raises(ValueError, match="mobilenet_v2"):
        models.create_model("mobilenet_v9")


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_parameter_count_equals_torchvision(name: str) -> None:
    """Parameter counts equal torchvision's to the unit."""
    assert params(meta_model(name)) == TORCHVISION_PARAMS[name]


def test_model_info_resolutions() -> None:
    """Default input sizes: 224 except EfficientNet-Bn's compound-scaled resolutions."""
    sizes = [models.model_info(f"efficientnet_b{i}").input_size for i in range(8)]
    assert sizes == [(3, r, r) for r in EFFICIENTNET_RESOLUTION]
    for name in models.list_models():
        info = models.model_info(name)
        assert info.name == name and info.paper
        assert info.torchvision == (name in TORCHVISION_PARAMS)
        if info.family != "efficientnet":
            assert info.input_size == (3, 224, 224)
        assert meta_model(name).input_size == info.input_size
    assert models.mobilenet_v1(resolution_mult=160 / 224).input_size == (3, 160, 160)


@pytest.mark.parametrize("width", sorted(MOBILENET_V1_WIDTH))
def test_mobilenet_v1_width_multiplier(width: float) -> None:
    """MobileNetV1 α-224: the paper's mult-adds (within 1%) and parameters (to 0.05 M)."""
    mult_adds, million_params = MOBILENET_V1_WIDTH[width]
    model = meta_model("mobilenet_v1", width_mult=width)
    assert macs(model, 224) / 1e6 == pytest.approx(mult_adds, rel=0.01)
    assert params(model) / 1e6 == pytest.approx(million_params, abs=0.05)


@pytest.mark.parametrize("resolution", sorted(MOBILENET_V1_RESOLUTION))
def test_mobilenet_v1_resolution_multiplier(resolution: int) -> None:
    """MobileNetV1 1.0-ρ: the paper's mult-adds within 1%."""
    model = meta_model("mobilenet_v1", resolution_mult=resolution / 224)
    assert model.input_size == (3, resolution, resolution)
    assert macs(model, resolution) / 1e6 == pytest.approx(MOBILENET_V1_RESOLUTION[resolution],
                                                          rel=0.01)


@pytest.mark.parametrize("groups,width", sorted(SHUFFLENET_V1_MFLOPS))
def test_shufflenet_v1_complexity(groups: int, width: float) -> None:
    """ShuffleNetV1: the paper's complexity per group count within 1.5%."""
    model = meta_model("shufflenet_v1", groups=groups, width_mult=width)
    assert macs(model, 224) / 1e6 == pytest.approx(SHUFFLENET_V1_MFLOPS[groups, width],
                                                   rel=0.015)


def test_shufflenet_v1_shape_rules() -> None:
    """Widths split into the groups for every group count and multiplier; ~1.9 M parameters
    at 1x, g = 3; the first pointwise conv of the net is dense, all others grouped."""
    for groups in models.shufflenet.SHUFFLENET_V1_WIDTHS:
        for width in (0.5, 1.0, 1.5, 2.0):
            model = meta_model("shufflenet_v1", groups=groups, width_mult=width, num_classes=10)
            assert model(torch.empty(1, 3, 64, 64, device="meta")).shape == (1, 10)
    model = meta_model("shufflenet_v1", groups=3)
    assert params(model) / 1e6 == pytest.approx(1.87, abs=0.01)
    pointwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert [m.groups for m in pointwise] == [1] + [3] * (len(pointwise) - 1)
    with pytest.raises(ValueError, match="groups"):
        models.shufflenet_v1(groups=5)


@pytest.mark.parametrize("name", sorted(TORCHVISION_GMACS))
def test_multiply_adds_match_torchvision(name: str) -> None:
    """Multiply-adds equal torchvision's published GFLOPS to its three decimals."""
    published, resolution = TORCHVISION_GMACS[name]
    assert round(macs(meta_model(name), resolution) / 1e9, 3) == pytest.approx(published)


@pytest.mark.parametrize("name", specs.list_specs())
def test_spec_depthwise_layers_are_the_models(name: str) -> None:
    """Every depthwise layer the spec table lists is a depthwise conv of the built model at
    that path, with its shape, and the model has no other depthwise conv."""
    model = meta_model(name)
    modules = dict(model.named_modules())
    layers = specs.depthwise_layers(name)
    for layer in layers:
        conv = modules[layer.name]
        assert isinstance(conv, nn.Conv2d)
        assert (conv.in_channels, conv.groups, conv.out_channels) == (layer.channels,) * 3
        assert conv.kernel_size == (layer.kernel,) * 2 and conv.stride == (layer.stride,) * 2
        assert conv.padding == (layer.padding,) * 2
    depthwise = {n for n, m in modules.items() if isinstance(m, nn.Conv2d) and m.groups > 1}
    assert depthwise == {layer.name for layer in layers}


def test_injected_activation_replaces_the_main_one() -> None:
    """act_layer replaces the main activation; a table's explicit other activations stay."""
    v2 = meta_model("mobilenet_v2", act_layer=nn.ReLU)
    assert not any(isinstance(m, nn.ReLU6) for m in v2.modules())
    v3 = meta_model("mobilenet_v3_large", act_layer=nn.SiLU)
    kinds = {type(m) for m in v3.modules()}
    assert nn.Hardswish not in kinds and {nn.SiLU, nn.ReLU, nn.Hardsigmoid} <= kinds
    b0 = meta_model("efficientnet_b0", act_layer=nn.ReLU)
    assert not any(isinstance(m, nn.SiLU) for m in b0.modules())
    assert all(isinstance(m.activation, nn.ReLU)
               for m in b0.modules() if isinstance(m, models.SqueezeExcitation))


def test_fused_layers_drop_in() -> None:
    """mobilefuse's fused modules go in through act_layer, no patching: same outputs."""
    torch.manual_seed(0)
    plain = models.mobilenet_v3_small(num_classes=10).eval()
    torch.manual_seed(0)
    fused = models.mobilenet_v3_small(num_classes=10, act_layer=mobilefuse.nn.HardSwish).eval()
    assert any(isinstance(m, mobilefuse.nn.HardSwish) for m in fused.modules())
    fused.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), plain(x), rtol=1e-5, atol=1e-5)


class CountingNorm(nn.BatchNorm2d):
    """A BatchNorm subclass, to see where the injected norm layer lands."""


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small",
                                  "efficientnet_b0", "shufflenet_v1", "shufflenet_v2_x1_0",
                                  "resnet18", "vgg16_bn"])
def test_injected_norm_layer_is_used_everywhere(name: str) -> None:
    """norm_layer builds every norm of the network."""
    model = meta_model(name, norm_layer=CountingNorm)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(type(m) is CountingNorm for m in norms)


def test_injected_se_layer() -> None:
    """se_layer is called with (channels, squeeze channels) for every SE block of the table."""
    calls: list[tuple[int, int]] = []

    def se_layer(channels: int, squeeze: int) -> nn.Module:
        calls.append((channels, squeeze))
        return nn.Identity()

    meta_model("mobilenet_v3_large", se_layer=se_layer)
    blocks = specs.expand_blocks(specs.get_spec("mobilenet_v3_large"))
    assert calls == [(b.mid_channels, b.se_channels) for b in blocks if b.se_channels]


def test_efficientnet_compound_scaling() -> None:
    """B0…B7 widths, depths and dropout come from B0's table and the scaling coefficients."""
    for variant, (width, depth, _, dropout) in specs.EFFICIENTNET_SCALING.items():
        spec = specs.get_spec(f"efficientnet_{variant}")
        blocks = specs.expand_blocks(spec)
        assert len(blocks) == sum(int(-(-r.repeats * depth // 1)) for r in spec.blocks)
        assert blocks[-1].out_channels == specs.make_divisible(320 * width)
        model = meta_model(f"efficientnet_{variant}")
        assert model.classifier[0].p == dropout
        drops = [m.p for m in model.modules() if isinstance(m, models.StochasticDepth)]
        assert drops[0] == 0.0 and drops[-1] == pytest.approx(0.2 * (len(blocks) - 1)
                                                              / len(blocks))


def test_load_weights_from_a_local_file(tmp_path) -> None:
    """load_weights reads torch.save files (also wrapped), strictly; never a missing path."""
    torch.manual_seed(0)
    source = models.shufflenet_v2_x0_5(num_classes=5)
    target = models.shufflenet_v2_x0_5(num_classes=5)
    torch.save(source.state_dict(), tmp_path / "plain.pt")
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, tmp_path / "wrapped.pth")
    for file in ("plain.pt", "wrapped.pth"):
        loaded = models.load_weights(target, tmp_path / file)
        assert loaded is target
        for key, value in source.state_dict().items():
            assert torch.equal(target.state_dict()[key], value), key
    by_name = models.create_model("shufflenet_v2_x0_5", num_classes=5,
                                  weights=tmp_path / "plain.pt")
    assert torch.equal(by_name.fc.weight, source.fc.weight)
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        models.load_weights(target, tmp_path / "missing.pt")
    with pytest.raises(RuntimeError, match="Missing key"):
        models.load_weights(models.mobilenet_v3_small(num_classes=5), tmp_path / "plain.pt")
    torch.save({"weights": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pt")
    with pytest.raises(Exception, match="Weights only load failed|weights_only"):
        models.load_weights(target, tmp_path / "pickled.pt")


def test_load_weights_safetensors(tmp_path) -> None:
    """A .safetensors file loads when the library is installed."""
    safetensors = pytest.importorskip("safetensors.torch")
    source = models.mobilenet_v3_small(num_classes=3)
    safetensors.save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    target = models.load_weights(models.mobilenet_v3_small(num_classes=3),
                                 tmp_path / "w.safetensors")
    assert all(torch.equal(target.state_dict()[k], v) for k, v in source.state_dict().items())
