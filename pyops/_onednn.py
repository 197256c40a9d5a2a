"""Vendor convolutions with their epilogue fused, for CPU inference (oneDNN post-ops).

In eval mode a folded convolution is ``act(conv(x, w, b))``, sometimes ``+ residual``: eager
PyTorch runs the convolution and then one more pass over its output per elementwise step.
oneDNN applies the activation (and the residual add) as post-ops while the convolution's
output is still in registers, and runs fastest from a weight already reordered into its own
blocked layout. :func:`conv2d_epilogue` does both where it can: float32 channels_last input on
a CPU, no gradient recorded, no ``torch.compile`` trace, oneDNN enabled. Everywhere else it
runs ``F.conv2d`` and the activation in place on its fresh output, the same numbers within
float32 rounding.

The reordered weight is kept per weight tensor (a weak reference: it goes with the tensor)
and rebuilt when the tensor's data or version changes, so in-place updates (an optimizer step,
``load_state_dict``) are seen. Weights created under ``torch.inference_mode`` carry no version
counter; they run unpacked.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.utils.weak import WeakTensorKeyDictionary

# Our activation names -> (oneDNN post-op attribute, its scalars), as torch.ops.mkldnn names them.
POST_OPS: dict[str | None, tuple[str, list[float]]] = {
    None: ("none", []), "relu": ("relu", []), "relu6": ("hardtanh", [0.0, 6.0]),
    "hardswish": ("hardswish", []), "silu": ("swish", [])}

_Pair = tuple[int, int]


@functools.cache
def ops_present() -> bool:
    mkldnn = torch.ops.mkldnn
    return (torch.backends.mkldnn.is_available() and hasattr(mkldnn, "_convolution_pointwise")
            and hasattr(torch._C._nn, "mkldnn_reorder_conv2d_weight"))


def serves(x: torch.Tensor, weight: torch.Tensor, activation: str | None) -> bool:
    """Whether :func:`conv2d_epilogue` runs oneDNN's fused convolution for these tensors."""
    from mobilefuse import ops  # imported here: ops imports this module

    return (activation in POST_OPS and x.device.type == "cpu" and x.dtype == torch.float32
            and weight.dtype == torch.float32 and weight.device.type == "cpu"
            and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
            and ops.eager_no_grad() and ops_present() and torch.backends.mkldnn.enabled)


# weight -> (what it was packed for, the packed weight)
_packed: WeakTensorKeyDictionary = WeakTensorKeyDictionary()


def packed_weight(weight: torch.Tensor, x_shape: torch.Size, stride: _Pair, padding: _Pair,
                  dilation: _Pair, groups: int) -> torch.Tensor:
    """``weight`` in oneDNN's blocked layout for an input of ``x_shape`` (cached; ``weight``
    itself when it cannot be cached safely)."""
    if weight.is_inference():  # no version counter: an in-place change could not be seen
        return weight
    key = (weight.data_ptr(), weight._version, tuple(x_shape), stride, padding, dilation,
           groups)
    hit = _packed.get(weight)
    if hit is not None and hit[0] == key:
        return hit[1]
    # A normal tensor even under inference_mode, so later calls in either mode may use it.
    with torch.inference_mode(False):
        packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
            weight.detach().contiguous().to_mkldnn(), list(padding), list(stride),
            list(dilation), groups, list(x_shape))
    _packed[weight] = (key, packed)
    return packed


def _adds(x: torch.Tensor, weight: torch.Tensor, stride: _Pair, padding: _Pair,
          activation: str | None, residual: torch.Tensor) -> bool:
    """Whether oneDNN's add post-op can take ``residual``: a 1x1 convolution that keeps the
    input's size, no activation before the add, a residual shaped and laid out as the output."""
    return (activation is None and tuple(weight.shape[2:]) == (1, 1)
            and tuple(stride) == (1, 1) and tuple(padding) == (0, 0)
            and residual.shape == (x.shape[0], weight.shape[0], *x.shape[2:])
            and residual.dtype == x.dtype and residual.device == x.device
            and residual.is_contiguous(memory_format=torch.channels_last))


def conv2d_epilogue(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    stride: _Pair = (1, 1), padding: _Pair = (0, 0), dilation: _Pair = (1, 1),
                    groups: int = 1, activation: str | None = None,
                    residual: torch.Tensor | None = None) -> torch.Tensor:
    """``act(conv2d(x, weight, bias, ...))``, plus ``residual`` when given (added after the
    activation), as one oneDNN convolution with post-ops where :func:`serves` says so.

    ``padding`` is a pair of ints. Elsewhere it is ``F.conv2d`` with the activation and the add
    done in place on the fresh output when no gradient is recorded (out of place otherwise).
    """
    from mobilefuse import ops  # imported here: ops imports this module

    fused = serves(x, weight, activation) and (residual is None or _adds(x, weight, stride,
                                                                        padding, activation,
                                                                        residual))
    if not fused:
        y = ops.activate_fresh(F.conv2d(x, weight, bias, stride, padding, dilation, groups),
                               activation)
        if residual is None:
            return y
        return y.add_(residual) if ops.eager_no_grad() else y + residual
    stride, padding, dilation = tuple(stride), tuple(padding), tuple(dilation)
    w = packed_weight(weight, x.shape, stride, padding, dilation, groups)
    if residual is not None:
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, residual, w, bias, list(padding), list(stride), list(dilation), groups, "add",
            1.0, None, [], None)
    attr, scalars = POST_OPS[activation]
    return torch.ops.mkldnn._convolution_pointwise(
        x, w, bias, list(padding), list(stride), list(dilation), groups, attr, scalars, None)
