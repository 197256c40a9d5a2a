"""Backend choice: set_backend, use_backend, MOBILEFUSE_BACKEND, fallback with one warning."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch
from conftest import CPU_POISON, HAS_CUDA

import mobilefuse
from mobilefuse import backends


def test_names_and_availability():
    assert mobilefuse.BACKENDS == ("auto", "cuda", "triton", "cpu", "reference")
    available = mobilefuse.available_backends()
    assert "reference" in available and "cpu" in available
    assert ("cuda" in available) == HAS_CUDA
    assert ("triton" in available) == (HAS_CUDA or os.environ.get("TRITON_INTERPRET") == "1")
    status = mobilefuse.backend_status()
    assert set(status) == {"cuda", "triton", "cpu", "reference"}
    assert all((status[b] == "available") == (b in available) for b in status)


def test_set_and_use_backend_restore():
    assert mobilefuse.get_backend() == "auto"
    with mobilefuse.use_backend("reference"):
        assert mobilefuse.get_backend() == "reference"
        with mobilefuse.use_backend("cpu"):
            assert mobilefuse.get_backend() == "cpu"
        assert mobilefuse.get_backend() == "reference"
    assert mobilefuse.get_backend() == "auto"
    mobilefuse.set_backend("reference")
    try:
        assert mobilefuse.get_backend() == "reference"
    finally:
        mobilefuse.set_backend("auto")
    with pytest.raises(RuntimeError), mobilefuse.use_backend("cpu"):
        raise RuntimeError("inside")
    assert mobilefuse.get_backend() == "auto"


def test_unknown_backend_names_are_rejected():
    with pytest.raises(ValueError, match="backend must be one of"):
        mobilefuse.set_backend("gpu")
    with pytest.raises(ValueError, match="backend must be one of"), mobilefuse.use_backend("fast"):
        pass


def test_auto_picks_the_cpu_kernel_for_cpu_tensors():
    assert backends.select_backend("hardswish", torch.device("cpu"), torch.float32) == "cpu"
    backends._warned.clear()
    with pytest.warns(RuntimeWarning, match="no fused backend serves this device"):
        chosen = backends.select_backend("channel_shuffle", torch.device("meta"), torch.float32)
    assert chosen == "reference"


def test_unavailable_backend_falls_back_and_warns_once_with_the_reason():
    backends._warned.clear()
    x = torch.randn(2, 4, 3, 3)
    with mobilefuse.use_backend("cuda"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = mobilefuse.ops.hardswish(x)
        second = mobilefuse.ops.hardswish(x)
    messages = [str(w.message) for w in caught if "mobilefuse.hardswish" in str(w.message)]
    assert len(messages) == 1, messages
    assert "cuda" in messages[0] and "reference" in messages[0]
    assert "CUDA tensors" in messages[0] or "built without CUDA" in messages[0]
    torch.testing.assert_close(first, torch.nn.functional.hardswish(x))
    torch.testing.assert_close(second, first)


def test_unsupported_dtype_falls_back_with_reason():
    backends._warned.clear()
    x = torch.randn(2, 4, 3, 3).to(torch.complex64)
    with pytest.warns(RuntimeWarning, match="dtype torch.complex64"):
        out = mobilefuse.ops.channel_shuffle(x, 2)
    assert torch.equal(out, mobilefuse.reference.channel_shuffle(x, 2))


def test_reference_backend_needs_no_kernel():
    x = torch.randn(3, 5, requires_grad=True)
    with mobilefuse.use_backend("reference"), warnings.catch_warnings():
        warnings.simplefilter("error")
        out = mobilefuse.ops.hardsigmoid(x)
    out.sum().backward()
    torch.testing.assert_close(out, torch.nn.functional.hardsigmoid(x))


def _run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=full_env, timeout=120)


def test_environment_variable_sets_the_default():
    done = _run_python("import mobilefuse; print(mobilefuse.get_backend())",
                       MOBILEFUSE_BACKEND="reference")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "reference"
    bad = _run_python("import mobilefuse", MOBILEFUSE_BACKEND="warp")
    assert bad.returncode != 0 and "MOBILEFUSE_BACKEND must be one of" in bad.stderr


def test_import_without_the_extension_says_what_it_lacks():
    code = (
        "import sys, warnings, torch\n"
        "sys.modules['mobilefuse._C'] = None  # as if the extension was never built\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import mobilefuse\n"
        "print(any('compiled extension is missing' in str(m.message) for m in w))\n"
        "print(mobilefuse.available_backends())\n"
        "print(mobilefuse.build_info()['extension'])\n"
        "x = torch.randn(2, 4, 3, 3)\n"
        "with warnings.catch_warnings():\n"
        "    warnings.simplefilter('ignore')\n"
        "    out = mobilefuse.ops.channel_shuffle(x, 2)\n"
        "print(torch.equal(out, mobilefuse.reference.channel_shuffle(x, 2)))\n"
    )
    done = _run_python(code, TRITON_INTERPRET="0")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n")
    assert lines[0] == "True"
    assert "cpu" not in lines[1] and "reference" in lines[1]
    assert lines[2] == "False" and lines[3] == "True"


def test_build_info_describes_the_build():
    info = mobilefuse.build_info()
    assert info["extension"] is True
    assert info["vector_isa"] in ("avx2", "default")
    assert isinstance(info["avx512_kernels"], bool)
    assert not info["avx512_kernels"] or info["vector_isa"] == "avx2"
    assert isinstance(info["compiler"], str) and info["compiler"]
    assert info["openmp"] is not None, "built without OpenMP: at::parallel_for would run serially"
    assert info["cuda"] == (info["cuda_version"] is not None)


@pytest.mark.skipif(not CPU_POISON, reason="allocator poisoning needs glibc")
def test_cpu_allocations_are_poisoned():
    # The correctness tests rely on this to catch output elements a kernel never writes.
    assert torch.isnan(torch.empty(1000, dtype=torch.float16)).all()
    assert (torch.empty(1000, dtype=torch.float32) > 1e38).all()
