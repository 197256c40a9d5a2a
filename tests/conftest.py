"""Shared test helpers: tolerances, random odd inputs in every layout, backend cases."""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import torch

# Triton kernels run on CPU tensors through the interpreter; it must be on before triton loads.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

import mobilefuse  # noqa: E402

# Property tests (hypothesis): "ci" tries a bounded, fixed set of examples per op so that CI
# runs are repeatable; "slow" (`pytest --slow`) tries at least 10,000 per op with fresh seeds.
_PROPERTY_SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow],
                      "print_blob": True}
settings.register_profile("ci", max_examples=40, derandomize=True, **_PROPERTY_SETTINGS)
settings.register_profile("slow", max_examples=10_000, **_PROPERTY_SETTINGS)
settings.register_profile("dev", max_examples=1_000, **_PROPERTY_SETTINGS)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true",
                     help="run the slow-marked tests and 10,000 hypothesis examples per op")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long tests, run only with --slow")
    if config.getoption("hypothesis_profile", None) is None:  # --hypothesis-profile wins
        settings.load_profile("slow" if config.getoption("--slow") else "ci")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """How many property-test examples each op passed, per backend (quoted in notes)."""
    checks = sys.modules.get("property_check")
    counts = sorted(checks.EXAMPLES_CHECKED.items()) if checks is not None else []
    if counts:
        terminalreporter.section("property-test examples checked against the reference")
        for (op, backend, device), count in counts:
            terminalreporter.write_line(f"{op:<22} {backend:<8} {device:<5} {count:>7,}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)

HAS_CUDA = torch.cuda.is_available()

# DESIGN.md: max abs error against the float64 reference, scaled by max |ref|.
FORWARD_TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3,
               torch.bfloat16: 1e-2}
BACKWARD_TOL = {torch.float64: 1e-12, torch.float32: 1e-4, torch.float16: 5e-3,
                torch.bfloat16: 2e-2}
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
LAYOUTS = ("contiguous", "channels_last", "strided")

# (backend, device) pairs; CUDA cases skip cleanly without a GPU.
BACKEND_CASES = [
    pytest.param("cpu", "cpu", id="cpu"),
    pytest.param("triton", "cpu", id="triton-interpreter"),
    pytest.param("cuda", "cuda", id="cuda", marks=pytest.mark.skipif(not HAS_CUDA,
                                                                       reason="needs a GPU")),
    pytest.param("triton", "cuda", id="triton-cuda",
                 marks=pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")),
]


def make_input(shape: tuple[int, ...], dtype: torch.dtype, device: str, layout: str,
               generator: torch.Generator | None = None, scale: float = 4.0) -> torch.Tensor:
    """Random values in ``layout``: contiguous, channels_last, or a non-contiguous view."""
    if layout == "strided":
        # Every other element of a wider tensor: neither contiguous nor channels_last, not dense.
        wide = torch.randn((*shape[:-1], 2 * shape[-1]), generator=generator) * scale
        return wide.to(device=device, dtype=dtype)[..., ::2]
    x = torch.randn(shape, generator=generator) * scale
    x = x.to(device=device, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def scaled_error(out: torch.Tensor, ref: torch.Tensor, scale: float = 0.0,
                 ) -> tuple[float, tuple[int, ...]]:
    """Max |out - ref| / max(max |ref|, ``scale``) and the index where the worst error is."""
    out, ref = out.detach(), ref.detach()
    diff = (out.double() - ref.double()).abs()
    diff = torch.where(torch.isnan(diff), torch.full_like(diff, float("inf")), diff)
    if diff.numel() == 0:
        return 0.0, ()
    flat = int(diff.argmax())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape))
    denom = max(float(ref.double().abs().max()), scale, 1e-30)
    return float(diff.max()) / denom, index


def assert_close_to_reference(out: torch.Tensor, ref: torch.Tensor, tol: float, what: str,
                              scale: float = 0.0) -> None:
    """Fail with the worst element's position and values when the scaled error exceeds ``tol``
    (``scale``: a larger denominator than max |ref|, see :func:`scaled_error`)."""
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    err, index = scaled_error(out, ref, scale)
    assert err <= tol, (f"{what}: scaled error {err:.3e} > {tol:.0e} at {index}: "
                        f"got {out[index].item()!r}, reference {ref[index].item()!r}")


def randomize_norms(model: torch.nn.Module, seed: int = 0) -> None:
    """Running statistics and affine parameters of every BatchNorm drawn from ``seed``, away
    from their defaults, so normalizing, folding and the running update are really tested."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                    m.bias.copy_(torch.rand(n, generator=gen) - 0.5)


@contextmanager
def counting_fused_batch_norm() -> Iterator[list[int]]:
    """Count the forwards of the fused training BatchNorm (``calls[0]``), so a test fails if
    the route it means to test is not the one that ran."""
    from mobilefuse._batch_norm_train import BatchNormActivationFunction

    calls = [0]
    original = BatchNormActivationFunction.forward

    def counting(*args: object) -> torch.Tensor:
        calls[0] += 1
        return original(*args)

    BatchNormActivationFunction.forward = staticmethod(counting)
    try:
        yield calls
    finally:
        BatchNormActivationFunction.forward = staticmethod(original)


def assert_step_matches_float64(fast: torch.nn.Module, reference: torch.nn.Module,
                                x: torch.Tensor, layout: torch.memory_format) -> torch.Tensor:
    """One forward and backward of float32 ``fast`` on ``x`` (a leaf that requires grad)
    against its float64 twin ``reference``: the output is in ``layout``, the output and the
    input gradient are within the float32 tolerances. Returns the output."""
    x_ref = x.detach().double().requires_grad_()
    out, expected = fast(x), reference(x_ref)
    assert out.is_contiguous(memory_format=layout)
    assert_close_to_reference(out, expected, FORWARD_TOL[torch.float32], "output")
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad.double())
    assert_close_to_reference(x.grad, x_ref.grad, BACKWARD_TOL[torch.float32], "input gradient")
    return out


# glibc fills every new CPU block with these bytes (mallopt M_PERTURB = 0x80 -> 0x7F fill):
# float32 3.4e38, float16 NaN, bfloat16 3.4e38, float64 1.4e306, bool "127", so an output
# element a kernel never writes fails the comparison with the reference.
POISON_BYTE = 0x7F
CPU_POISON = False
try:
    CPU_POISON = ctypes.CDLL("libc.so.6").mallopt(-6, POISON_BYTE ^ 0xFF) == 1
except OSError:  # not glibc: no poisoning on CPU
    pass


def poison_cuda(nbytes: int) -> None:
    """Leave a freed block of poison bytes in the CUDA caching allocator, which hands it to the
    next request of that size (the CPU is poisoned by glibc for every allocation)."""
    block = torch.empty(max(nbytes, 1), dtype=torch.uint8, device="cuda")
    block.fill_(POISON_BYTE)
    del block


def poison_for(x: torch.Tensor) -> None:
    """Poison the allocator for an output the size of ``x``."""
    if x.is_cuda:
        poison_cuda(x.numel() * x.element_size())


@contextmanager
def on_backend(name: str) -> Iterator[None]:
    """Run on backend ``name`` and fail if the op falls back to the reference instead."""
    with mobilefuse.use_backend(name), warnings.catch_warnings():
        warnings.filterwarnings("error", message="mobilefuse", category=RuntimeWarning)
        yield


def results_at_thread_counts(run, counts: tuple[int, ...] = (1, 2, 2)) -> list:
    """``run()``'s result with each intra-op thread count in turn (the count restored after)."""
    before = torch.get_num_threads()
    results = []
    try:
        for threads in counts:
            torch.set_num_threads(threads)
            results.append(run())
    finally:
        torch.set_num_threads(before)
    return results


def profiled_calls(run) -> Counter:
    """How many times each op or range name appears in a CPU profile of ``run()``."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run()
    return Counter(e.name for e in prof.events())


def load_benchmark_script(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` loaded as a module (the folder is not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
