"""Both vector-ISA builds of the depthwise kernels (channels_last, and NCHW through channel
blocks) against the float64 reference.

Where the build has the AVX-512 copies of the kernels, the rest of the suite runs them (on a CPU
with AVX-512); ``ATEN_CPU_CAPABILITY=avx2`` sends a process to the AVX2 ones. Each setting runs
in its own process (ATen reads the variable once)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import mobilefuse

# Channels around the 8- and 16-lane vector widths (partial channel blocks; in the 100-wide
# rows, several channel tiles with a partial last one), every kernel size, stride, activation
# and memory format.
CHECK = r"""
import itertools, sys
import torch
sys.path.insert(0, TESTS)
from property_check import check_against_reference
import mobilefuse
from mobilefuse import reference

gen = torch.Generator().manual_seed(0)
activations = [None, "relu", "relu6", "hardswish", "silu"]
cases = itertools.product([(2, 19, 11, 13), (1, 40, 7, 9), (1, 37, 7, 100)], [3, 5, 7],
                          [1, 2], activations, [torch.float32, torch.float64],
                          [torch.channels_last, torch.contiguous_format])
for shape, k, stride, act, dtype, fmt in cases:
    args = (stride, k // 2, 1, act)  # stride, padding, dilation, activation
    inputs = {"x": torch.randn(shape, generator=gen).to(dtype).contiguous(memory_format=fmt),
              "weight": (torch.randn(shape[1], 1, k, k, generator=gen) / k).to(dtype),
              "bias": torch.randn(shape[1], generator=gen).to(dtype)}
    out = check_against_reference(
        "depthwise_conv2d", lambda x, weight, bias: mobilefuse.ops.depthwise_conv2d(
            x, weight, bias, *args),
        lambda x, weight, bias: reference.depthwise_conv2d(x, weight, bias, *args), inputs,
        "cpu", tuple(inputs), what=f"{shape} k={k} {args} {dtype} {fmt}")
    assert out.is_contiguous(memory_format=fmt)
print(torch.backends.cpu.get_cpu_capability())
"""


def _run_check(**env: str) -> str:
    """Run CHECK (it fails on the first result or gradient out of tolerance); the CPU
    capability ATen ran with."""
    code = CHECK.replace("TESTS", repr(str(Path(__file__).parent)))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("capability", ["avx2", "default"])
def test_kernels_per_isa(capability):
    """``default`` runs what ATen picks (AVX-512 where the CPU has it); ``avx2`` forces the
    AVX2 kernels, which a CPU with AVX-512 otherwise never runs."""
    if not mobilefuse.build_info().get("avx512_kernels"):
        pytest.skip("built without the AVX-512 kernels: the rest of the suite covers AVX2")
    env = {"ATEN_CPU_CAPABILITY": capability} if capability != "default" else {}
    ran_with = _run_check(**env)
    if capability == "avx2":
        assert ran_with == "AVX2"
