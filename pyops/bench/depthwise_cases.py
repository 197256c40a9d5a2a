"""Depthwise-convolution benchmark cases: the depthwise layers of real networks, their inputs,
the implementations compared and the bytes each pass must move.

Shared by the runner's depthwise section and ``benchmarks/test_bench_depthwise.py``, so both
time the same calls. Every implementation computes ``act(conv2d(x, w, b, groups=C))`` with the
activation the layer has in its network (BatchNorm folded into the bias, as in eval mode).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Sequence

import torch

from mobilefuse import ops, reference
from mobilefuse.bench import cases
from mobilefuse.models.specs import DepthwiseLayer, depthwise_layers, unique_layers

OP = "depthwise_conv2d"
CONVNEXT_TINY = "convnext_tiny"
# The zoo's networks, then ConvNeXt-T for the 7x7 kernel (which none of them has).
MODELS: tuple[str, ...] = ("mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0",
                           CONVNEXT_TINY)
RESOLUTION = 224
DEFAULT_BATCH = 8
FORWARD = "forward"
FORWARD_BACKWARD = "forward_backward"
PASSES: tuple[str, ...] = (FORWARD, FORWARD_BACKWARD)
# --quick times every fourth distinct layer from the second: 8 of 32, still covering maps of
# 112 to 7 pixels, every kernel, both strides and every activation, in about half the time.
QUICK_LAYERS = slice(1, None, 4)
# ConvNeXt-T's stage depths and first-stage width: each block's depthwise 7x7 convolution has
# a bias and no activation (a LayerNorm follows).
_CONVNEXT_TINY_DEPTHS = (3, 3, 9, 3)
_CONVNEXT_TINY_WIDTH = 96

Conv = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _convnext_tiny_layers(resolution: int) -> list[DepthwiseLayer]:
    """ConvNeXt-T's depthwise layers (torchvision's module paths), which the zoo does not
    build: one 7x7 stride-1 convolution per block, at 1/4, 1/8, 1/16 and 1/32 of the input."""
    layers, block = [], 0
    for stage, depth in enumerate(_CONVNEXT_TINY_DEPTHS):
        for i in range(depth):
            layers.append(DepthwiseLayer(
                model=CONVNEXT_TINY, name=f"features.{2 * stage + 1}.{i}.block.0", block=block,
                channels=_CONVNEXT_TINY_WIDTH << stage, kernel=7, stride=1, padding=3,
                input_size=resolution // (4 << stage), activation=None))
            block += 1
    return layers


def model_layers(model: str) -> list[DepthwiseLayer]:
    """Every depthwise layer of ``model`` (one of :data:`MODELS`) at :data:`RESOLUTION`."""
    if model == CONVNEXT_TINY:
        return _convnext_tiny_layers(RESOLUTION)
    return depthwise_layers(model, RESOLUTION)


def select_layers(models: Sequence[str] = MODELS, quick: bool = False,
                  limit: int | None = None) -> list[DepthwiseLayer]:
    """The unique layers (by channels, size, kernel, stride) of ``models`` in order of first
    appearance; with ``quick`` the subset :data:`QUICK_LAYERS`; with ``limit`` the first
    ``limit`` of those."""
    layers = unique_layers(layer for model in models for layer in model_layers(model))
    if quick:
        layers = layers[QUICK_LAYERS]
    return layers if limit is None else layers[:limit]


def shared_by(layer: DepthwiseLayer, models: Sequence[str] = MODELS) -> list[str]:
    """``model:name`` of every layer of ``models`` that costs the same as ``layer``."""
    return [f"{other.model}:{other.name}" for model in models
            for other in model_layers(model) if other.key == layer.key]


def label(layer: DepthwiseLayer) -> str:
    """A short readable name: ``C144 56x56 k3 s2 relu6``."""
    size = layer.input_size
    return (f"C{layer.channels} {size}x{size} k{layer.kernel} s{layer.stride} "
            f"{layer.activation or 'none'}")


@dataclasses.dataclass
class DepthwiseInputs:
    """One layer's input, weight, bias and output gradient, in one dtype and memory format."""

    x: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    grad: torch.Tensor


def input_shape(layer: DepthwiseLayer, batch: int) -> tuple[int, int, int, int]:
    """``(N, C, H, W)`` of the layer's input."""
    return (batch, layer.channels, layer.input_size, layer.input_size)


def make_inputs(layer: DepthwiseLayer, batch: int, dtype: torch.dtype, layout: str,
                device: torch.device, seed: int = 0) -> DepthwiseInputs:
    """Random inputs for ``layer``; ``grad`` is random too (a ones gradient hides index bugs)."""
    gen = torch.Generator().manual_seed(seed)
    fmt = cases.LAYOUTS[layout]
    x = cases.make_input(input_shape(layer, batch), dtype, layout, device, seed)
    k = layer.kernel
    # Scaled so the output spreads like the input and crosses the activations' kinks.
    weight = torch.randn(layer.channels, 1, k, k, generator=gen) / k
    bias = torch.randn(layer.channels, generator=gen)
    out = (batch, layer.channels, layer.output_size, layer.output_size)
    grad = torch.randn(out, generator=gen)
    return DepthwiseInputs(
        x=x, weight=weight.to(device=device, dtype=dtype),
        bias=bias.to(device=device, dtype=dtype),
        grad=grad.to(device=device, dtype=dtype).contiguous(memory_format=fmt))


def moved_bytes(layer: DepthwiseLayer, batch: int, dtype: torch.dtype, pass_: str) -> int:
    """Bytes a pass must move at least.

    Forward: read x, weight and bias, write the output. Forward + backward adds: read the
    output gradient and x again (the fused backward recomputes the pre-activation), write the
    gradients of x, weight and bias.
    """
    size = torch.empty((), dtype=dtype).element_size()
    x = batch * layer.channels * layer.input_size ** 2
    out = batch * layer.channels * layer.output_size ** 2
    params = layer.channels * (layer.kernel ** 2 + 1)
    forward = x + params + out
    if pass_ == FORWARD:
        return forward * size
    return (forward + out + x + x + params) * size


def impl_names(device: torch.device, compile: bool = True) -> list[str]:
    """The implementations timed on ``device``, in table order (as for the other ops)."""
    return cases.impl_names(OP, device, compile)


def _fresh_reference() -> Callable[..., torch.Tensor]:
    # A copy with its own code object: dynamo keeps its compiled graphs per code object, and
    # one shared by every layer, layout and pass would pass the recompile limit (8) and fall
    # back to eager; each copy compiles only its own case.
    fn = reference.depthwise_conv2d
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__,
                              fn.__defaults__, fn.__closure__)


def build_conv(impl: str, layer: DepthwiseLayer) -> Conv:
    """``(x, weight, bias) -> out`` of implementation ``impl`` for ``layer``'s settings.

    ``torch_compile`` builds a new compiled function: it compiles on its first call.
    """
    settings = (layer.stride, layer.padding, 1, layer.activation)
    if impl == cases.MOBILEFUSE:
        fn = ops.depthwise_conv2d
    elif impl.startswith(f"{cases.MOBILEFUSE}["):
        fn = cases.on_backend(ops.depthwise_conv2d, impl[len(cases.MOBILEFUSE) + 1:-1])
    elif impl == cases.EAGER:
        fn = reference.depthwise_conv2d  # act(F.conv2d(..., groups=C)) in PyTorch ops
    elif impl == cases.COMPILE:
        fn = torch.compile(_fresh_reference(), dynamic=False)
    else:
        raise ValueError(f"unknown implementation {impl!r} of {OP}")
    return lambda x, w, b: fn(x, w, b, *settings)


def build_call(impl: str, layer: DepthwiseLayer, inputs: DepthwiseInputs,
               pass_: str) -> Callable[[], object]:
    """A no-argument call running one pass of ``impl`` on ``inputs``, synchronized on CUDA.

    The backward pass takes gradients of x, weight and bias with ``torch.autograd.grad``, so
    no ``.grad`` accumulates between calls.
    """
    conv = build_conv(impl, layer)
    if pass_ == FORWARD:
        def call() -> object:
            return conv(inputs.x, inputs.weight, inputs.bias)
    elif pass_ == FORWARD_BACKWARD:
        leaves = tuple(t.detach().requires_grad_() for t in (inputs.x, inputs.weight,
                                                              inputs.bias))

        def call() -> object:
            return torch.autograd.grad(conv(*leaves), leaves, inputs.grad)
    else:
        raise ValueError(f"unknown pass {pass_!r}; expected one of {PASSES}")
    if inputs.x.device.type != "cuda":
        return call

    def synced() -> object:
        out = call()
        torch.cuda.synchronize(inputs.x.device)
        return out

    return synced
