"""Both vector-ISA builds of the channels_last depthwise kernels against the float64 reference.

Where the build has the AVX-512 copies of the kernels, the rest of the suite runs them (on a CPU
with AVX-512); ``ATEN_CPU_CAPABILITY=avx2`` sends a process to the AVX2 ones. Each setting runs
in its own process (ATen reads the variable once)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import BACKWARD_TOL, FORWARD_TOL

import mobilefuse

# Channels around the 8- and 16-lane vector widths, every kernel size, stride and activation.
CHECK = r"""
import itertools, json, sys
import torch
import torch.nn.functional as F
sys.path.insert(0, TESTS)
from conftest import scaled_error
import mobilefuse
from mobilefuse import reference

worst = {}
gen = torch.Generator().manual_seed(0)
activations = [None, "relu", "relu6", "hardswish", "silu"]
cases = itertools.product([(2, 19, 11, 13), (1, 40, 7, 9)], [3, 5, 7], [1, 2], activations,
                          [torch.float32, torch.float64])
with mobilefuse.use_backend("cpu"):
    for shape, k, stride, act, dtype in cases:
        x = torch.randn(shape, generator=gen).to(dtype)
        x = x.contiguous(memory_format=torch.channels_last)
        w = (torch.randn(shape[1], 1, k, k, generator=gen) / k).to(dtype)
        b = torch.randn(shape[1], generator=gen).to(dtype)
        leaves = [t.clone().requires_grad_() for t in (x, w, b)]
        out = mobilefuse.ops.depthwise_conv2d(*leaves, stride, k // 2, 1, act)
        doubles = [t.double().requires_grad_() for t in (x, w, b)]
        ref = reference.depthwise_conv2d(*doubles, stride, k // 2, 1, act)
        grad = torch.randn(out.shape, generator=gen).to(dtype)
        got = torch.autograd.grad(out, leaves, grad)
        want = torch.autograd.grad(ref, doubles, grad.double())
        name = str(dtype)
        errors = [scaled_error(out, ref)[0]] + [scaled_error(a, e)[0] for a, e in zip(got, want)]
        fwd, bwd = worst.get(name, (0.0, 0.0))
        worst[name] = (max(fwd, errors[0]), max([bwd] + errors[1:]))
        assert out.is_contiguous(memory_format=torch.channels_last)
print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "worst": worst}))
"""


def _run_check(**env: str) -> dict:
    code = CHECK.replace("TESTS", repr(str(Path(__file__).parent)))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _assert_within_tolerance(result: dict) -> None:
    for name, (forward, backward) in result["worst"].items():
        dtype = getattr(torch, name.removeprefix("torch."))
        assert forward <= FORWARD_TOL[dtype], (result["capability"], name, forward)
        assert backward <= BACKWARD_TOL[dtype], (result["capability"], name, backward)


@pytest.mark.parametrize("capability", ["avx2", "default"])
def test_channels_last_kernels_per_isa(capability):
    """``default`` runs what ATen picks (AVX-512 where the CPU has it); ``avx2`` forces the
    AVX2 kernels, which a CPU with AVX-512 otherwise never runs."""
    if not mobilefuse.build_info().get("avx512_kernels"):
        pytest.skip("built without the AVX-512 kernels: the rest of the suite covers AVX2")
    env = {"ATEN_CPU_CAPABILITY": capability} if capability != "default" else {}
    result = _run_check(**env)
    if capability == "avx2":
        assert result["capability"] == "AVX2"
    _assert_within_tolerance(result)
