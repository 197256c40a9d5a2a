"""The check every property test makes: an op's result and every gradient against the float64
reference, within DESIGN.md's tolerances, with poisoned outputs."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from conftest import (
    BACKWARD_TOL,
    FORWARD_TOL,
    HAS_CUDA,
    assert_close_to_reference,
    on_backend,
    poison_for,
)
from hypothesis import settings
from hypothesis import strategies as st

import mobilefuse

# Where the property tests run: the C++ kernels, Triton under its interpreter, and on a GPU
# the CUDA and Triton kernels. The interpreter is ~100x slower, so it gets fewer examples.
PROPERTY_BACKENDS = [("cpu", "cpu"), ("triton", "cpu")] + (
    [("cuda", "cuda"), ("triton", "cuda")] if HAS_CUDA else [])
INTERPRETER_SHARE = 40  # the interpreter tries 1/40 of the profile's examples (at least 5)

# Examples checked per (op, backend, device) in this run, printed at the end of the run.
EXAMPLES_CHECKED: Counter[tuple[str, str, str]] = Counter()

# Sizes that find indexing bugs: 1, primes, and a power of two with its neighbours.
SIZES = st.sampled_from([1, 2, 3, 5, 7, 8, 9, 11, 13, 16, 17])
DTYPES = st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64])
LAYOUTS = st.sampled_from(["contiguous", "channels_last", "strided"])


def examples_for(backend: str, device: str, max_examples: int) -> int:
    """The example count for ``backend`` on ``device`` under the loaded profile."""
    if backend == "triton" and device == "cpu":
        return max(5, max_examples // INTERPRETER_SHARE)
    return max_examples


def run_property(prop: Callable[[], None], backend: str, device: str) -> None:
    """Run the ``@given`` test ``prop`` with the loaded profile's example count for ``backend``."""
    settings(max_examples=examples_for(backend, device, settings().max_examples))(prop)()


@st.composite
def tensors(draw: st.DrawFn, shape: tuple[int, ...], dtype: torch.dtype, device: str,
            layout: str = "contiguous", scale: float = 1.0) -> torch.Tensor:
    """Random tensors (values from a drawn seed, so hypothesis shrinks the seed, not the
    values) in ``layout``: contiguous, channels_last (rank 4) or a strided view."""
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    if layout == "strided":
        wide = torch.randn((*shape[:-1], 2 * shape[-1]), generator=gen) * scale
        return wide.to(device=device, dtype=dtype)[..., ::2]
    t = (torch.randn(shape, generator=gen) * scale).to(device=device, dtype=dtype)
    if layout == "channels_last" and len(shape) == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    return t


def check_against_reference(op_name: str, op: Callable[..., torch.Tensor],
                            reference: Callable[..., torch.Tensor],
                            inputs: dict[str, torch.Tensor | None], backend: str,
                            differentiable: tuple[str, ...], slack: float = 1.0,
                            what: str = "", fallback: bool = False,
                            magnitude: bool = False) -> torch.Tensor:
    """Run ``op(**inputs)`` on ``backend`` and ``reference`` on float64 copies; compare the
    result and the gradient of every input named in ``differentiable``; count the example
    under ``op_name``.

    ``fallback``: no kernel takes this input, so the reference runs (with its warning);
    otherwise a fallback fails the check. ``magnitude``: scale errors by the larger of max
    |ref| and the size of the sums that made it (see :func:`_magnitudes`). Returns the
    output."""
    first = next(t for t in inputs.values() if isinstance(t, torch.Tensor))
    dtype, device = first.dtype, first.device.type
    leaves = {name: t.detach().requires_grad_() for name, t in inputs.items()
              if name in differentiable and t is not None}
    poison_for(first)
    with _backend(backend, fallback):
        out = op(**{**inputs, **leaves})
    doubles = {name: t.detach().double().requires_grad_() for name, t in leaves.items()}
    ref = reference(**{**{k: (v.double() if isinstance(v, torch.Tensor) else v)
                          for k, v in inputs.items()}, **doubles})
    assert out.dtype == dtype, f"{what}: output dtype {out.dtype}, expected {dtype}"
    # The output gradient in the op's dtype; the reference gets the same values.
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(ref.numel()))
    grad = grad.to(out.device, dtype)
    scales = (_magnitudes(reference, inputs, tuple(leaves), grad) if magnitude
              else [0.0] * (1 + len(leaves)))
    assert_close_to_reference(out, ref, FORWARD_TOL.get(dtype, 0.0) * slack, f"forward {what}",
                              scales[0])
    if leaves:
        with _backend(backend, fallback):
            grads = torch.autograd.grad(out, list(leaves.values()), grad, allow_unused=True)
        refs = torch.autograd.grad(ref, list(doubles.values()), grad.double(), allow_unused=True)
        for name, got, expected, scale in zip(leaves, grads, refs, scales[1:], strict=True):
            # An input the output does not depend on (batch 0) has a zero gradient.
            expected = torch.zeros_like(doubles[name]) if expected is None else expected
            got = torch.zeros_like(leaves[name]) if got is None else got
            assert got.dtype == dtype, f"{what}: grad {name} dtype {got.dtype}"
            assert_close_to_reference(got, expected, BACKWARD_TOL[dtype] * slack,
                                      f"grad {name} {what}", scale)
    EXAMPLES_CHECKED[op_name, backend, device] += 1
    return out


def _magnitudes(reference: Callable[..., torch.Tensor], inputs: dict[str, torch.Tensor | None],
                differentiable: tuple[str, ...], grad: torch.Tensor) -> list[float]:
    """Max of the reference's output and of each gradient when every input and the output
    gradient are replaced by their absolute values: the size of the sums behind each result.

    A chain of sums can cancel: a block's output of 7e-4 made from intermediates of 0.3 carries
    float32 rounding errors of the intermediates' size, far above 1e-5 of the output. Rounding
    analysis bounds the error of ``w @ x`` by a multiple of ``|w| @ |x|`` (Higham, ch. 3), so
    that, not max |ref|, is the scale for such a result. Each of the block's activations and
    gates is non-negative and non-decreasing on the non-negative inputs the absolute values
    give, so nothing cancels."""
    absolute = {name: (t.detach().double().abs() if isinstance(t, torch.Tensor) else t)
                for name, t in inputs.items()}
    leaves = {name: absolute[name].requires_grad_() for name in differentiable}
    out = reference(**absolute)
    grads = torch.autograd.grad(out, list(leaves.values()), grad.double().abs(),
                                allow_unused=True) if leaves else ()
    return [0.0 if t is None or t.numel() == 0 else float(t.detach().abs().max())
            for t in (out, *grads)]


@contextmanager
def _backend(backend: str, fallback: bool) -> Iterator[None]:
    """``backend``, failing on a reference fallback unless ``fallback`` expects one."""
    if not fallback:
        with on_backend(backend):
            yield
        return
    with mobilefuse.use_backend(backend), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield
