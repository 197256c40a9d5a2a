"""The block spec tables: depthwise layers, widths and feature-map sizes of the published nets."""

from __future__ import annotations

from dataclasses import replace

import pytest

from mobilefuse.models import specs

MODELS = ("mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0")
DEPTHWISE_COUNT = {"mobilenet_v2": 17, "mobilenet_v3_large": 15, "efficientnet_b0": 16}
ACTIVATIONS = {"mobilenet_v2": {"relu6"}, "mobilenet_v3_large": {"relu", "hardswish"},
               "efficientnet_b0": {"silu"}}
# (name, channels, kernel, stride, input size) of the first and last depthwise conv.
FIRST_LAST = {
    "mobilenet_v2": (("features.1.conv.0.0", 32, 3, 1, 112),
                     ("features.17.conv.1.0", 960, 3, 1, 7)),
    "mobilenet_v3_large": (("features.1.block.0.0", 16, 3, 1, 112),
                           ("features.15.block.1.0", 960, 5, 1, 7)),
    "efficientnet_b0": (("features.1.0.block.0.0", 32, 3, 1, 112),
                        ("features.7.0.block.1.0", 1152, 3, 1, 7)),
}


def _summary(layer: specs.DepthwiseLayer) -> tuple[str, int, int, int, int]:
    return (layer.name, layer.channels, layer.kernel, layer.stride, layer.input_size)


@pytest.mark.parametrize("model", MODELS)
def test_depthwise_count_and_ends(model: str) -> None:
    """As many depthwise convs as the published net, with its first and last one."""
    layers = specs.depthwise_layers(model)
    assert len(layers) == DEPTHWISE_COUNT[model]
    assert (_summary(layers[0]), _summary(layers[-1])) == FIRST_LAST[model]
    assert len({layer.name for layer in layers}) == len(layers)
    assert {layer.activation for layer in layers} == ACTIVATIONS[model]


@pytest.mark.parametrize("model", specs.list_specs())
@pytest.mark.parametrize("resolution", [224, 256])
def test_sizes_chain(model: str, resolution: int) -> None:
    """Each layer's input is the previous one's output; five stride-2 steps after the stem."""
    layers = specs.depthwise_layers(model, resolution)
    assert layers[0].input_size == resolution // 2  # the stem has stride 2
    for before, after in zip(layers, layers[1:], strict=False):
        assert after.input_size == before.output_size, (before, after)
    assert layers[-1].output_size == resolution // 32
    assert sum(layer.stride == 2 for layer in layers) == 4
    assert all(layer.padding == layer.kernel // 2 for layer in layers)


def test_mobilenet_v2_widths() -> None:
    """Depthwise widths are the expanded widths of torchvision's t, c, n, s table."""
    widths = [layer.channels for layer in specs.depthwise_layers("mobilenet_v2")]
    assert widths == [32, 96, 144, 144, 192, 192, 192, 384, 384, 384, 384, 576, 576, 576,
                      960, 960, 960]


def test_mobilenet_v3_large_bneck() -> None:
    """The paper's bneck table: expanded widths, kernels, activations, SE widths."""
    layers = specs.depthwise_layers("mobilenet_v3_large")
    assert [layer.channels for layer in layers] == [
        16, 64, 72, 72, 120, 120, 240, 200, 184, 184, 480, 672, 672, 960, 960]
    assert [layer.kernel for layer in layers] == [3, 3, 3, 5, 5, 5, 3, 3, 3, 3, 3, 3, 5, 5, 5]
    assert [layer.activation for layer in layers] == ["relu"] * 6 + ["hardswish"] * 9
    se = [b.se_channels for b in specs.expand_blocks(specs.get_spec("mobilenet_v3_large"))]
    assert se == [None, None, None, 24, 32, 32, None, None, None, None, 120, 168, 168, 240, 240]


def test_mobilenet_v1_table() -> None:
    """The paper's Table 1: 13 depthwise-separable blocks, ReLU, no expansion, no SE."""
    blocks = specs.expand_blocks(specs.get_spec("mobilenet_v1"))
    assert [b.mid_channels for b in blocks] == [32, 64, 128, 128, 256, 256] + [512] * 6 + [1024]
    assert [b.out_channels for b in blocks] == [64, 128, 128, 256, 256] + [512] * 6 + [1024] * 2
    assert [b.stride for b in blocks] == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
    assert {(b.activation, b.se_channels, b.has_expansion) for b in blocks} == {
        ("relu", None, False)}
    assert specs.depthwise_layers("mobilenet_v1")[-1].name == "features.13.0.0"
    quarter = replace(specs.get_spec("mobilenet_v1"), width_mult=0.25)
    assert [b.out_channels for b in specs.expand_blocks(quarter)][-1] == 256


def test_mobilenet_v3_small_bneck() -> None:
    """The paper's Small table: expanded widths, kernels, strides, activations, SE widths."""
    blocks = specs.expand_blocks(specs.get_spec("mobilenet_v3_small"))
    assert [b.mid_channels for b in blocks] == [16, 72, 88, 96, 240, 240, 120, 144, 288, 576,
                                                576]
    assert [b.out_channels for b in blocks] == [16, 24, 24, 40, 40, 40, 48, 48, 96, 96, 96]
    assert [b.kernel for b in blocks] == [3, 3, 3] + [5] * 8
    assert [b.stride for b in blocks] == [2, 2, 1, 2, 1, 1, 1, 1, 2, 1, 1]
    assert [b.activation for b in blocks] == ["relu"] * 3 + ["hardswish"] * 8
    assert [b.se_channels for b in blocks] == [8, None, None, 24, 64, 64, 32, 40, 72, 144, 144]


def test_efficientnet_scaled_tables() -> None:
    """B1…B7: B0's rows with ceil(repeats * depth) blocks and widths * width, made divisible."""
    b0 = specs.get_spec("efficientnet_b0")
    for variant, (width, depth, resolution, _) in specs.EFFICIENTNET_SCALING.items():
        spec = specs.get_spec(f"efficientnet_{variant}")
        assert (spec.width_mult, spec.depth_mult, spec.resolution) == (width, depth, resolution)
        assert spec.blocks == b0.blocks
    b7 = specs.expand_blocks(specs.get_spec("efficientnet_b7"))
    assert len(b7) == 55 and b7[0].in_channels == 64 and b7[-1].out_channels == 640
    assert specs.get_spec("efficientnet_b7").head_channels() == 2560


def test_efficientnet_b0_stages() -> None:
    """B0's seven stages: widths, kernels, and SE widths from the block's input width."""
    blocks = specs.expand_blocks(specs.get_spec("efficientnet_b0"))
    assert [b.out_channels for b in blocks] == [16, 24, 24, 40, 40, 80, 80, 80, 112, 112, 112,
                                                192, 192, 192, 192, 320]
    assert [b.stage_index for b in blocks if b.stage == 5] == [0, 1, 2, 3]
    assert [b.se_channels for b in blocks][:3] == [8, 4, 6]
    layer = specs.depthwise_layers("efficientnet_b0")[3]
    assert _summary(layer) == ("features.3.0.block.1.0", 144, 5, 2, 56)
    assert (layer.padding, layer.output_size) == (2, 28)


def test_make_divisible() -> None:
    """torchvision's rounding: nearest multiple of 8, never more than 10% down."""
    assert [specs.make_divisible(v) for v in (32, 18, 184, 200, 12, 3)] == [32, 24, 184, 200,
                                                                             16, 8]


def test_unique_layers_keep_first() -> None:
    """Deduplication keeps one layer per (channels, size, kernel, stride), first met first."""
    unique = specs.unique_depthwise_layers(MODELS)
    assert len({layer.key for layer in unique}) == len(unique) == 28
    assert unique[0].model == "mobilenet_v2" and unique[0].key == (32, 112, 3, 1)
    # Any list of layers: the later twin of an earlier key is dropped, the order kept.
    v3 = specs.depthwise_layers("mobilenet_v3_large")
    again = specs.unique_layers([v3[3], v3[0], v3[3], v3[1]])
    assert again == [v3[3], v3[0], v3[1]]
    assert specs.unique_layers(unique + unique[::-1]) == unique


def test_unknown_model() -> None:
    """An unknown name lists the known ones."""
    with pytest.raises(ValueError, match="mobilenet_v2"):
        specs.depthwise_layers("resnet50")
