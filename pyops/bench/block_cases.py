"""The inverted-residual (MBConv) blocks of real networks, for the runner's block section.

Blocks and their input shapes come from the model zoo itself: a forward pass on the meta
device records what each ``InvertedResidual`` / ``MBConv`` / ``DepthwiseSeparable`` block of
MobileNetV2, MobileNetV3-Large and EfficientNet-B0 sees at 224×224. Each block is timed as
eager PyTorch, as ``mobilefuse.accelerate(block)`` and as ``torch.compile(block)``, in eval
(forward under ``inference_mode``) and training (forward + backward to the input and every
parameter).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

import mobilefuse
from mobilefuse.bench import cases

MODELS: tuple[str, ...] = ("mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0")
BLOCK_TYPES: tuple[str, ...] = ("InvertedResidual", "MBConv", "DepthwiseSeparable")
RESOLUTION = 224
DEFAULT_BATCH = 8
EVAL, TRAIN = "eval", "train"
PASSES: tuple[str, ...] = (EVAL, TRAIN)


@dataclass(frozen=True)
class BlockCase:
    """One block of a network: where it is and the tensors it sees (batch 1)."""

    model: str
    path: str
    kind: str
    in_shape: tuple[int, int, int]  # (C, H, W)
    out_shape: tuple[int, int, int]
    params: int

    @property
    def label(self) -> str:
        """E.g. ``mobilenet_v3_large.features.4 MBConv 24x56x56->40x28x28``."""
        shape = "x".join(map(str, self.in_shape)) + "->" + "x".join(map(str, self.out_shape))
        return f"{self.model}.{self.path} {self.kind} {shape}"


@functools.cache
def _model(name: str) -> nn.Module:
    """The zoo model with random weights and BatchNorm statistics away from (0, 1)."""
    torch.manual_seed(0)
    model = mobilefuse.models.create_model(name)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    return model


def model_blocks(name: str, resolution: int = RESOLUTION) -> list[BlockCase]:
    """Every block of model ``name`` with its input and output shapes, in forward order."""
    with torch.device("meta"):
        model = mobilefuse.models.create_model(name)
    found: list[BlockCase] = []
    hooks = []
    for path, module in model.named_modules():
        if type(module).__name__ in BLOCK_TYPES:
            def record(mod: nn.Module, inputs: tuple, out: torch.Tensor, path: str = path) -> None:
                found.append(BlockCase(name, path, type(mod).__name__,
                                       tuple(inputs[0].shape[1:]), tuple(out.shape[1:]),
                                       sum(p.numel() for p in mod.parameters())))
            hooks.append(module.register_forward_hook(record))
    with torch.no_grad():
        model.eval()(torch.empty(1, 3, resolution, resolution, device="meta"))
    for hook in hooks:
        hook.remove()
    return found


def select_blocks(models: tuple[str, ...] | list[str], quick: bool = False,
                  limit: int | None = None) -> list[BlockCase]:
    """The blocks of ``models``; ``quick`` takes every fourth one, ``limit`` the first K."""
    blocks = [b for name in models for b in model_blocks(name)]
    if quick:
        blocks = blocks[::4]
    return blocks[:limit] if limit else blocks


def moved_bytes(case: BlockCase, batch: int, dtype: torch.dtype) -> int:
    """The least a forward pass must move: read the input and the weights, write the output."""
    size = torch.empty(0, dtype=dtype).element_size()
    c, h, w = case.in_shape
    co, ho, wo = case.out_shape
    return (batch * (c * h * w + co * ho * wo) + case.params) * size


def build_block(impl: str, case: BlockCase, dtype: torch.dtype, layout: str,
                device: torch.device, train: bool) -> nn.Module | Callable[..., torch.Tensor]:
    """The block as implementation ``impl`` runs it, in train or eval mode."""
    fmt = cases.LAYOUTS[layout]
    block = copy.deepcopy(_model(case.model).get_submodule(case.path))
    block = block.to(device=device, dtype=dtype, memory_format=fmt).train(train)
    if impl == cases.MOBILEFUSE:
        return mobilefuse.accelerate(block, inplace=True)
    if impl == cases.EAGER:
        return block
    if impl == cases.COMPILE:
        # Every block of a network shares its class's forward code: without a reset, dynamo's
        # per-code recompile limit (8) would send the later blocks to eager unnoticed.
        torch._dynamo.reset()
        return torch.compile(block, dynamic=False)
    raise ValueError(f"unknown implementation {impl!r} of a block")


def impl_names(device: torch.device, compile: bool = True) -> list[str]:
    """mobilefuse (accelerate), eager and, unless skipped, torch.compile."""
    return [cases.MOBILEFUSE, cases.EAGER] + ([cases.COMPILE] if compile else [])


def build_call(impl: str, case: BlockCase, batch: int, dtype: torch.dtype, layout: str,
               device: torch.device, pass_: str) -> Callable[[], object]:
    """A no-argument call running one pass of ``impl`` on a random batch (synced on CUDA).

    Training takes the gradients of the input and every parameter with
    ``torch.autograd.grad``, so nothing accumulates between calls.
    """
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch, *case.in_shape), generator=gen).to(device, dtype).contiguous(
        memory_format=cases.LAYOUTS[layout])
    module = build_block(impl, case, dtype, layout, device, train=pass_ == TRAIN)
    if pass_ == EVAL:
        def call() -> object:
            with torch.inference_mode():
                return module(x)
    else:
        leaves = [x.requires_grad_(), *(p for p in module.parameters() if p.requires_grad)]
        grad = torch.randn((batch, *case.out_shape), generator=gen).to(device, dtype)

        def call() -> object:
            return torch.autograd.grad(module(leaves[0]), leaves, grad)
    if device.type != "cuda":
        return call

    def synced() -> object:
        out = call()
        torch.cuda.synchronize(device)
        return out

    return synced


def count_kernel_launches(call: Callable[[], object], device: torch.device) -> int | None:
    """GPU kernels one call launches (None off the GPU), counted with torch.profiler."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    call()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        call()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
