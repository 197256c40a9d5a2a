"""Compile-check the CUDA sources with nvcc, where a CUDA toolkit exists (no GPU needed).

The kernels (csrc/cuda/*.cu) include no torch header and compile as they are. The binding
file needs torch's CUDA headers, which a CPU build of torch ships without one generated
header (c10/cuda/impl/cuda_cmake_macros.h); an empty stand-in lets it compile here too.
"""

from __future__ import annotations

import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
from torch.utils.cpp_extension import include_paths

ROOT = Path(__file__).resolve().parents[1]
NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="no nvcc on this machine")


@pytest.mark.parametrize("source", sorted((ROOT / "csrc" / "cuda").glob("*.cu")),
                         ids=lambda p: p.name)
def test_kernels_compile(source, tmp_path):
    cmd = [NVCC, "-std=c++17", "-c", str(source), "-o", str(tmp_path / "k.o"),
           "-gencode", "arch=compute_90,code=sm_90"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("source", ["cuda/bindings.cpp", "registration.cpp"])
def test_torch_bindings_compile(source, tmp_path):
    stub = tmp_path / "stub" / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n")
    includes = [f"-I{p}" for p in include_paths()] + [
        f"-I{tmp_path / 'stub'}", f"-I{sysconfig.get_paths()['include']}"]
    cmd = [NVCC, "-std=c++20", "-x", "c++", "-DMOBILEFUSE_WITH_CUDA", "-c",
           str(ROOT / "csrc" / source), "-o", str(tmp_path / "b.o"), *includes]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
