"""Tensors past 2**31 elements need 64-bit indexing: the kernels must neither crash nor wrap
around. Slow (several GB of bfloat16 each): run with ``pytest --slow``.

Each test states the memory it needs and skips, saying so, on a machine with less: on CPU the
depthwise and SE kernels work on float32 copies of bfloat16 tensors, so a 2**31-element
convolution needs ~40 GB there."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from conftest import FORWARD_TOL, HAS_CUDA, assert_close_to_reference

import mobilefuse
from mobilefuse import reference

pytestmark = pytest.mark.slow
BEYOND_INT32 = 2**31 + 4099
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])
TOL = FORWARD_TOL[torch.bfloat16]


def _needs_memory(device: str, gigabytes: float) -> None:
    """Skip unless ``device`` has ``gigabytes`` of memory in all."""
    if device == "cuda":
        total = torch.cuda.get_device_properties(0).total_memory
    else:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if total < gigabytes * 2**30:
        pytest.skip(f"needs {gigabytes} GB of {device} memory, this machine has "
                    f"{total / 2**30:.0f} GB")


CHUNK = 1 << 26  # elements per slice when filling or summing (a 512 MiB int64 temporary)


def _pattern(numel: int, device: str, offset: float = 0.0) -> torch.Tensor:
    """Values from -4 to 4 (plus ``offset``) that differ element to element, filled a slice at
    a time: one int64 index per element would take 17 GB."""
    out = torch.empty(numel, device=device, dtype=torch.bfloat16)
    for start in range(0, numel, CHUNK):
        index = torch.arange(start, min(start + CHUNK, numel), device=device)
        out[start:start + CHUNK] = (index % 2039 - 1019).to(torch.float32) / 256 + offset
    return out


def _channel_means(x: torch.Tensor) -> torch.Tensor:
    """Each channel's mean of ``x`` (1, C, ...), summed in float64 a slice at a time."""
    flat = x.reshape(x.shape[1], -1)
    sums = [sum(float(row[s:s + CHUNK].double().sum()) for s in range(0, row.numel(), CHUNK))
            for row in flat]
    return torch.tensor(sums, dtype=torch.float64) / flat.shape[1]


@pytest.mark.parametrize("device", DEVICES)
def test_hardswish_past_int32(device):
    _needs_memory(device, 12)
    x = _pattern(BEYOND_INT32, device)
    out = mobilefuse.ops.hardswish(x)
    for part in (slice(0, 1 << 20), slice(-(1 << 20), None)):
        assert_close_to_reference(out[part], reference.hardswish(x[part].double()), TOL,
                                  f"hardswish {part}")


@pytest.mark.parametrize("device", DEVICES)
def test_channel_shuffle_past_int32(device):
    _needs_memory(device, 12)
    x = _pattern(2 * 4 * 268_435_969, device).view(2, 4, -1)  # 2**31 + 4104 elements
    out = mobilefuse.ops.channel_shuffle(x, 2)
    for c_out, c_in in enumerate((0, 2, 1, 3)):
        assert torch.equal(out[1, c_out, -4096:], x[1, c_in, -4096:]), c_out


@pytest.mark.parametrize("device", DEVICES)
def test_depthwise_conv2d_past_int32(device):
    _needs_memory(device, 40)
    # One sample of 2 channels of 32,771 x 32,771 pixels: 2,147,876,882 elements.
    side = 32771
    x = _pattern(2 * side * side, device).view(1, 2, side, side)
    w = torch.tensor([0.5, -0.25, 0.125] * 6, dtype=torch.bfloat16, device=device).view(2, 1, 3, 3)
    out = mobilefuse.ops.depthwise_conv2d(x, w, None, 1, 1, activation="relu")
    # The last rows of the last channel: their indices are past 2**31.
    rows = x[:, :, -6:, :].double()
    ref = F.relu(F.conv2d(F.pad(rows, (1, 1, 0, 1)), w.double(), groups=2))  # zero row below
    assert_close_to_reference(out[:, :, -5:, :], ref, TOL, "depthwise, last rows")


SIDE = 32771  # one sample of 2 channels of 32,771 x 32,771 pixels: 2,147,876,882 elements
DEPTHWISE = [0.5, -0.25, 0.125] * 6


def _se_weights(device: str) -> tuple[torch.Tensor, ...]:
    """SE weights for 2 channels reduced to 1, with gates well inside (0, 1)."""
    values = ([[0.5, -0.25]], [0.25], [[1.0], [-0.5]], [0.125, 0.5])
    return tuple(torch.tensor(v, dtype=torch.bfloat16, device=device) for v in values)


def _reference_gates(means: torch.Tensor, se_weights: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The reference SE gate (relu, hard-sigmoid) of each channel, from the channel means: the
    reference SE of a 1x1 map of the means, divided by them."""
    pooled = means.view(1, -1, 1, 1)
    scaled = reference.squeeze_excite(pooled, *(w.double().cpu() for w in se_weights),
                                      "relu", "hardsigmoid")
    return (scaled / pooled).view(1, -1, 1, 1)


def _depthwise_rows(x: torch.Tensor, weight: torch.Tensor, first: int, last: int,
                    ) -> torch.Tensor:
    """relu(3x3 depthwise conv of ``x``, padding 1) for output rows ``first:last``, in float64
    on the CPU, rounded to bfloat16 as the block stores it."""
    side = x.shape[2]
    rows = x[:, :, max(first - 1, 0):min(last + 1, side)].double().cpu()
    rows = F.pad(rows, (1, 1, int(first == 0), int(last == side)))
    out = F.relu(F.conv2d(rows, weight.double().cpu(), groups=x.shape[1]))
    return out.to(torch.bfloat16).double()


@pytest.mark.parametrize("device", DEVICES)
def test_squeeze_excite_past_int32(device):
    _needs_memory(device, 32)
    x = _pattern(2 * SIDE * SIDE, device, offset=1.0).view(1, 2, SIDE, SIDE)
    se_weights = _se_weights(device)
    out = mobilefuse.ops.squeeze_excite(x, *se_weights, "relu", "hardsigmoid")
    gates = _reference_gates(_channel_means(x), se_weights)
    for part in (slice(0, 4), slice(-4, None)):
        ref = x[:, :, part].double().cpu() * gates
        assert_close_to_reference(out[:, :, part].cpu(), ref, TOL, f"squeeze_excite rows {part}")


@pytest.mark.parametrize("device", DEVICES)
def test_inverted_residual_past_int32(device):
    _needs_memory(device, 48)
    x = _pattern(2 * SIDE * SIDE, device, offset=0.5).view(1, 2, SIDE, SIDE)
    dw_weight = torch.tensor(DEPTHWISE, dtype=torch.bfloat16, device=device).view(2, 1, 3, 3)
    project = torch.tensor([[1.0, 0.5], [-0.5, 1.0]], dtype=torch.bfloat16, device=device)
    se_weights = _se_weights(device)
    with torch.no_grad():
        out = mobilefuse.ops.inverted_residual(
            x, None, None, dw_weight, None, project, None, se_weights, activation="relu",
            se_activation="relu", se_gate="hardsigmoid", residual=True)
    # The SE pools the whole depthwise output: sum it a band of rows at a time.
    band = CHUNK // SIDE
    sums = sum(_depthwise_rows(x, dw_weight, r, min(r + band, SIDE)).sum((0, 2, 3))
               for r in range(0, SIDE, band))
    gates = _reference_gates(sums / (SIDE * SIDE), se_weights)
    # The last rows of the last channel: their indices are past 2**31.
    excited = (_depthwise_rows(x, dw_weight, SIDE - 5, SIDE) * gates).to(torch.bfloat16)
    ref = F.conv2d(excited.double(), project.double().cpu()[:, :, None, None])
    ref = ref.to(torch.bfloat16).double() + x[:, :, -5:].double().cpu()
    assert_close_to_reference(out[:, :, -5:].cpu(), ref, TOL, "inverted_residual, last rows")
