"""depthwise_conv2d on the depthwise layers of MobileNetV2, MobileNetV3-Large, EfficientNet-B0 and
ConvNeXt-T: mobilefuse vs eager PyTorch vs torch.compile of the reference, forward and forward +
backward, float32, with each layer's activation fused.

Layers: a handful spanning the map sizes, kernels, strides and activations by default;
``MOBILEFUSE_BENCH_DW=all`` for every distinct layer (as the runner times them). Batch:
``MOBILEFUSE_BENCH_DW_BATCH``, else N of ``MOBILEFUSE_BENCH_SHAPE``, else 8.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

from mobilefuse.bench import cases, timing
from mobilefuse.bench import depthwise_cases as dw
from mobilefuse.models.specs import DepthwiseLayer

DEVICE = cases.bench_device()
SELECTION_ENV = "MOBILEFUSE_BENCH_DW"
BATCH_ENV = "MOBILEFUSE_BENCH_DW_BATCH"
HANDFUL_EVERY = 5  # 7 of the 32 layers: 112 to 14 pixels, k3, k5 and k7, s1 and s2


def _layers() -> list[DepthwiseLayer]:
    layers = dw.select_layers()
    if os.environ.get(SELECTION_ENV, "").strip().lower() == "all":
        return layers
    return layers[::HANDFUL_EVERY]


def _batch() -> int:
    text = os.environ.get(BATCH_ENV, "").strip()
    if text:
        return int(text)
    if os.environ.get(cases.SHAPE_ENV, "").strip():
        return cases.shape_from_env()[0]
    return dw.DEFAULT_BATCH


LAYERS = _layers()
BATCH = _batch()
_inputs: dict[tuple[str, str], dw.DepthwiseInputs] = {}


def _inputs_for(layer: DepthwiseLayer, layout: str) -> dw.DepthwiseInputs:
    # One set of inputs per layer and layout, shared by every implementation and pass.
    key = (dw.label(layer), layout)
    if key not in _inputs:
        _inputs.clear()  # tests run layer by layer: keep only the current layer's tensors
        _inputs[key] = dw.make_inputs(layer, BATCH, torch.float32, layout, DEVICE)
    return _inputs[key]


@pytest.mark.parametrize("impl", dw.impl_names(DEVICE))
@pytest.mark.parametrize("pass_", dw.PASSES)
@pytest.mark.parametrize("layout", list(cases.LAYOUTS))
@pytest.mark.parametrize("layer", LAYERS, ids=[dw.label(layer).replace(" ", "-")
                                               for layer in LAYERS])
def test_depthwise(benchmark: Any, layer: DepthwiseLayer, layout: str, pass_: str,
                   impl: str) -> None:
    """One pass of one implementation on one layer, beside its rivals in the same group."""
    inputs = _inputs_for(layer, layout)
    call = dw.build_call(impl, layer, inputs, pass_)
    if not benchmark.disabled:  # disabled, the benchmark runs the call once, untimed
        # Compiles on the first call, then runs until the allocator has settled.
        timing.warm_up(call)
    benchmark.group = f"depthwise {dw.label(layer)} {layout} {pass_} float32"
    benchmark.extra_info.update(
        bytes=dw.moved_bytes(layer, BATCH, torch.float32, pass_),
        shape=list(dw.input_shape(layer, BATCH)), memory_format=layout, impl=impl,
        pass_=pass_, layer=f"{layer.model}:{layer.name}", shared_by=dw.shared_by(layer))
    benchmark(call)
