"""Tensors past 2**31 elements need 64-bit indexing: the kernels must neither crash nor wrap
around. Slow (several GB of bfloat16 each): run with ``pytest --slow``."""

from __future__ import annotations

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


def _pattern(numel: int, device: str) -> torch.Tensor:
    # Values from -4 to 4 that differ element to element, made without a float32 copy.
    return (torch.arange(numel, device=device, dtype=torch.int64) % 2039 - 1019).to(
        torch.bfloat16).mul_(1 / 256)


@pytest.mark.parametrize("device", DEVICES)
def test_hardswish_past_int32(device):
    x = _pattern(BEYOND_INT32, device)
    out = mobilefuse.ops.hardswish(x)
    for part in (slice(0, 1 << 20), slice(-(1 << 20), None)):
        assert_close_to_reference(out[part], reference.hardswish(x[part].double()), TOL,
                                  f"hardswish {part}")


@pytest.mark.parametrize("device", DEVICES)
def test_channel_shuffle_past_int32(device):
    x = _pattern(BEYOND_INT32 + 1, device).view(2, 4, -1)  # 2 x 4 x 268,435,969
    out = mobilefuse.ops.channel_shuffle(x, 2)
    for c_out, c_in in enumerate((0, 2, 1, 3)):
        assert torch.equal(out[1, c_out, -4096:], x[1, c_in, -4096:]), c_out


@pytest.mark.parametrize("device", DEVICES)
def test_depthwise_conv2d_past_int32(device):
    # One sample of 2 channels of 32,771 x 32,771 pixels: 2,147,876,882 elements.
    side = 32771
    x = _pattern(2 * side * side, device).view(1, 2, side, side)
    w = torch.tensor([0.5, -0.25, 0.125] * 6, dtype=torch.bfloat16, device=device).view(2, 1, 3, 3)
    out = mobilefuse.ops.depthwise_conv2d(x, w, None, 1, 1, activation="relu")
    # The last rows of the last channel: their indices are past 2**31.
    rows = x[:, :, -6:, :].double()
    ref = F.relu(F.conv2d(F.pad(rows, (1, 1, 0, 1)), w.double(), groups=2))  # zero row below
    assert_close_to_reference(out[:, :, -5:, :], ref, TOL, "depthwise, last rows")
