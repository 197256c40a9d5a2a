"""What the benchmarks run: ops, shapes, inputs and the implementations compared.

Shared by the runner and the pytest-benchmark suites under ``benchmarks/``, so both time
the same callables on the same inputs.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from mobilefuse import ops, reference, use_backend
from mobilefuse.backends import AUTO_ORDER, FLOAT_DTYPES, available_backends, select_backend

OPS: tuple[str, ...] = ("hardswish", "hardsigmoid", "channel_shuffle", "concat_shuffle")
# The ops that only move values: any dtype, and the result is bit-exact.
SHUFFLE_OPS: tuple[str, ...] = ("channel_shuffle", "concat_shuffle")
ACTIVATIONS: tuple[str, ...] = ("hardswish", "hardsigmoid")
DEFAULT_SHAPE: tuple[int, int, int, int] = (32, 96, 56, 56)
SHUFFLE_GROUPS = 2  # ShuffleNetV2 splits every stage in two
SHAPE_ENV = "MOBILEFUSE_BENCH_SHAPE"
LAYOUTS: dict[str, torch.memory_format] = {
    "contiguous": torch.contiguous_format,
    "channels_last": torch.channels_last,
}

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

MOBILEFUSE = "mobilefuse"
EAGER = "eager"
EAGER_VIEW = "eager_view_transpose"  # the x.view().transpose().reshape() idiom
COMPILE = "torch_compile"
COPY = "copy_"  # the dst.copy_(src) baseline of the same bytes

Impl = Callable[[torch.Tensor], torch.Tensor]


def _cat_then_shuffle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """What an eager ShuffleNetV2 unit runs at its end: the concatenation, then the shuffle."""
    return F.channel_shuffle(torch.cat((a, b), 1), 2)


_EAGER: dict[str, Callable[..., torch.Tensor]] = {
    "hardswish": F.hardswish,
    "hardsigmoid": F.hardsigmoid,
    "channel_shuffle": F.channel_shuffle,
    "concat_shuffle": _cat_then_shuffle,
}
_FUSED: dict[str, Callable[..., torch.Tensor]] = {
    "hardswish": ops.hardswish,
    "hardsigmoid": ops.hardsigmoid,
    "channel_shuffle": ops.channel_shuffle,
    "concat_shuffle": ops.concat_shuffle,
}
_REFERENCE: dict[str, Callable[..., torch.Tensor]] = {
    "hardswish": reference.hardswish,
    "hardsigmoid": reference.hardsigmoid,
    "channel_shuffle": reference.channel_shuffle,
    "concat_shuffle": reference.concat_shuffle,
}


def bench_device() -> torch.device:
    """The device benchmarks run on: the current CUDA device when one is visible, else CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def shape_from_env(default: tuple[int, ...] = DEFAULT_SHAPE) -> tuple[int, ...]:
    """The shape in ``MOBILEFUSE_BENCH_SHAPE`` ("N,C,H,W"), else ``default``."""
    text = os.environ.get(SHAPE_ENV, "").strip()
    if not text:
        return default
    shape = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    if len(shape) != 4 or min(shape) <= 0:
        raise ValueError(f"{SHAPE_ENV} must be four positive ints N,C,H,W; got {text!r}")
    return shape


def timed_dtypes(requested: Sequence[str] | None, device: torch.device) -> list[str]:
    """``requested`` dtype names, else float32, and on CUDA also bfloat16."""
    if requested:
        return list(requested)
    return ["float32", "bfloat16"] if device.type == "cuda" else ["float32"]


def auto_backend(op: str, x: torch.Tensor) -> str:
    """The backend ``"auto"`` picks for ``op`` on ``x`` ("reference" means a fallback)."""
    dtypes = ops.SHUFFLE_DTYPES if op in SHUFFLE_OPS else FLOAT_DTYPES
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tables flag a fallback; no need to warn here
        return select_backend(op, x.device, x.dtype, dtypes)


def fused_backends(device: torch.device) -> list[str]:
    """The fused backends that ``"auto"`` can pick for tensors on ``device``, fastest first."""
    usable = set(available_backends())
    return [name for name in AUTO_ORDER.get(device.type, ()) if name in usable]


def impl_names(op: str, device: torch.device, compile: bool = True) -> list[str]:
    """The implementations timed for ``op`` on ``device``, in table order."""
    names = [MOBILEFUSE]
    backends = fused_backends(device)
    # Each kernel, not only the winner: CUDA C++ and Triton on a GPU; on CPU the activations'
    # C++ kernel, which "auto" leaves to PyTorch's (mobilefuse.ops._activation_backend).
    if len(backends) > 1 or (op in ACTIVATIONS and device.type == "cpu" and backends):
        names += [f"{MOBILEFUSE}[{name}]" for name in backends]
    names.append(EAGER)
    if op == "channel_shuffle":
        names.append(EAGER_VIEW)
    if compile:
        names.append(COMPILE)
    return names


@functools.cache
def compiled_reference(op: str) -> Callable[..., torch.Tensor]:
    """``torch.compile`` (inductor, static shapes) of the reference of ``op``, built once."""
    return torch.compile(_REFERENCE[op], dynamic=False)


def on_backend(fn: Callable[..., torch.Tensor], backend: str) -> Callable[..., torch.Tensor]:
    """``fn`` run with mobilefuse's backend set to ``backend``."""

    def run(*args: object) -> torch.Tensor:
        with use_backend(backend):
            return fn(*args)

    return run


def build_impl(op: str, name: str, groups: int = SHUFFLE_GROUPS) -> Impl:
    """The callable ``x -> out`` that implementation ``name`` of ``op`` runs."""
    if name == MOBILEFUSE:
        fn = _FUSED[op]
    elif name.startswith(f"{MOBILEFUSE}["):
        fn = on_backend(_FUSED[op], name[len(MOBILEFUSE) + 1:-1])
    elif name == EAGER:
        fn = _EAGER[op]
    elif name == EAGER_VIEW and op == "channel_shuffle":
        fn = reference.channel_shuffle
    elif name == COMPILE:
        fn = compiled_reference(op)
    else:
        raise ValueError(f"unknown implementation {name!r} of {op}")
    if op == "channel_shuffle":
        return lambda x: fn(x, groups)
    if op == "concat_shuffle":
        return lambda x: fn(*_halves(x))
    return fn


def _halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x``'s two channel halves, as views (a ShuffleNetV2 unit's ``x.chunk(2, 1)``)."""
    if x.shape[1] % 2:
        raise ValueError(f"concat_shuffle is timed on the two channel halves of its input, "
                         f"which needs an even channel count; got {x.shape[1]} channels")
    return x.chunk(2, 1)


def build_impls(op: str, device: torch.device, compile: bool = True,
                groups: int = SHUFFLE_GROUPS) -> dict[str, Impl]:
    """Every implementation of ``op`` timed on ``device``, by name."""
    return {name: build_impl(op, name, groups) for name in impl_names(op, device, compile)}


def make_input(shape: tuple[int, ...], dtype: torch.dtype, layout: str,
               device: torch.device, seed: int = 0) -> torch.Tensor:
    """A random tensor in ``layout`` (a key of :data:`LAYOUTS`), spread over [-6, 6).

    The spread crosses both hard-swish/hard-sigmoid kinks (x = -3 and x = 3), so every
    branch of the activations runs.
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=gen, dtype=torch.float32).mul_(12).sub_(6)
    return x.to(device=device, dtype=dtype).contiguous(memory_format=LAYOUTS[layout])


def moved_bytes(x: torch.Tensor) -> int:
    """Bytes an elementwise op or a shuffle must move: read ``x`` once, write the output once
    (``concat_shuffle`` reads ``x``'s two halves and writes one output of ``x``'s size)."""
    return 2 * x.numel() * x.element_size()


def synchronized(fn: Impl, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    """``fn(x)`` as a no-argument call that waits for device work to finish."""
    if x.device.type != "cuda":
        return lambda: fn(x)

    def run() -> torch.Tensor:
        out = fn(x)
        torch.cuda.synchronize(x.device)
        return out

    return run
