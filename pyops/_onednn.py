"""Vendor convolutions with their epilogue fused, for CPU inference (oneDNN post-ops).

In eval mode a folded convolution is ``act(conv(x, w, b))``, sometimes ``+ residual``: eager
PyTorch runs the convolution and then one more pass over its output per elementwise step.
oneDNN applies the activation (and the residual add) as post-ops while the convolution's
output is still in registers, and runs fastest from a weight already reordered into its own
blocked layout. :func:`conv2d_epilogue` does both where it can: float32 channels_last input on
a CPU, no gradient recorded, no ``torch.compile`` trace, oneDNN enabled. Everywhere else it
runs ``F.conv2d`` and the activation in place on its fresh output, the same numbers within
float32 rounding.

A 1x1 convolution at stride 1 without padding is a matrix product of the channels_last input
seen as ``(N*H*W, C_in)`` rows: :class:`PointwiseConv` runs it as oneDNN's linear op on a
weight reordered for that row count, with the same post-ops. It computes the same numbers as
the convolution op (the same GEMM kernels) and spends less time around them: 6-12% less per
call on the 1x1 layers of ShuffleNetV2, MobileNetV3 and EfficientNet at batch 8 on a 2-core
Xeon, most of it the convolution op's fixed cost per call. For small products over few rows
(one image at 14x14 or 7x7) MKL's GEMM through ``torch.addmm``, the activation then in place,
is faster still (see :func:`gemm_runs`); PyTorch's own convolution likewise leaves oneDNN for
its native GEMM path for small single images.

The reordered weight is kept per weight tensor (a weak reference: it goes with the tensor)
and rebuilt when the tensor's data or version changes, so in-place updates (an optimizer step,
``load_state_dict``) are seen. Weights created under ``torch.inference_mode`` carry no version
counter; they run unpacked.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.weak import WeakTensorKeyDictionary

from mobilefuse import _pointwise_stride as pointwise_stride

# Our activation names -> (oneDNN post-op attribute, its scalars), as torch.ops.mkldnn names them.
POST_OPS: dict[str | None, tuple[str, list[float]]] = {
    None: ("none", []), "relu": ("relu", []), "relu6": ("hardtanh", [0.0, 6.0]),
    "hardswish": ("hardswish", []), "silu": ("swish", [])}

_Pair = tuple[int, int]


@functools.cache
def ops_present() -> bool:
    mkldnn = torch.ops.mkldnn
    return (torch.backends.mkldnn.is_available() and hasattr(mkldnn, "_convolution_pointwise")
            and hasattr(torch._C._nn, "mkldnn_reorder_conv2d_weight")
            and hasattr(mkldnn, "_linear_pointwise") and hasattr(mkldnn, "_reorder_linear_weight"))


def serves(x: torch.Tensor, weight: torch.Tensor, activation: str | None) -> bool:
    """Whether :func:`conv2d_epilogue` runs oneDNN's fused convolution for these tensors."""
    from mobilefuse import ops  # imported here: ops imports this module

    return (activation in POST_OPS and x.device.type == "cpu" and x.dtype == torch.float32
            and weight.dtype == torch.float32 and weight.device.type == "cpu"
            and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
            and ops.eager_no_grad() and ops_present() and torch.backends.mkldnn.enabled)


# weight -> {"conv" or "linear": (what it was packed for, the packed weight)}
_packed: WeakTensorKeyDictionary = WeakTensorKeyDictionary()


def _cached_pack(weight: torch.Tensor, kind: str, key: tuple, pack) -> torch.Tensor:
    """``pack(weight)`` kept for ``weight`` while its data and version stay as they were."""
    if weight.is_inference():  # no version counter: an in-place change could not be seen
        return weight
    key = (weight.data_ptr(), weight._version, *key)
    packs = _packed.get(weight)
    if packs is None:
        packs = _packed[weight] = {}
    hit = packs.get(kind)
    if hit is not None and hit[0] == key:
        return hit[1]
    # A normal tensor even under inference_mode, so later calls in either mode may use it.
    with torch.inference_mode(False):
        packed = pack(weight.detach().contiguous())
    packs[kind] = (key, packed)
    return packed


def packed_weight(weight: torch.Tensor, x_shape: torch.Size, stride: _Pair, padding: _Pair,
                  dilation: _Pair, groups: int) -> torch.Tensor:
    """``weight`` in oneDNN's blocked layout for an input of ``x_shape`` (cached; ``weight``
    itself when it cannot be cached safely)."""
    return _cached_pack(
        weight, "conv", (tuple(x_shape), stride, padding, dilation, groups),
        lambda w: torch._C._nn.mkldnn_reorder_conv2d_weight(
            w.to_mkldnn(), list(padding), list(stride), list(dilation), groups, list(x_shape)))


def is_pointwise(weight: torch.Tensor, stride: _Pair, padding: _Pair, groups: int) -> bool:
    """Whether a convolution with these arguments is a matrix product over pixels (1x1, stride
    1, no padding, one group): what :class:`PointwiseConv` runs."""
    return (groups == 1 and weight.dim() == 4 and tuple(weight.shape[2:]) == (1, 1)
            and tuple(stride) == (1, 1) and tuple(padding) == (0, 0))


@functools.cache
def mkl_on_intel() -> bool:
    """Whether torch's matrix products run on MKL on an Intel CPU, where MKL takes its tuned
    code paths (on other vendors' CPUs it runs slower generic ones)."""
    if not torch.backends.mkl.is_available():
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("vendor_id"):
                    return "GenuineIntel" in line
    except OSError:
        pass
    return "GenuineIntel" in platform.processor()


def gemm_runs(rows: int, c_in: int, c_out: int) -> bool:
    """Whether a 1x1 convolution over ``rows`` pixels (N*H*W) runs as MKL's GEMM
    (``torch.addmm`` on the transposed weight, the activation in place after it) rather than
    oneDNN's linear op with post-ops: small products over few rows, where the linear op's fixed
    cost dominates.

    Side by side, float32, one image, GEMM over oneDNN: on a 2-core Xeon at 7x7 (49 rows)
    1.07-1.38x for C 160-1200 <-> 960-1152 (up to 12 M multiply-adds), but 0.82-0.84x for
    ResNet-50's 512 <-> 2048 (51 M); at 14x14 (196 rows) 1.08-1.43x where the channels shrink
    (480 -> 80, 672 -> 112), 0.90-0.95x where they grow; at 392 rows (eight images at 7x7,
    1152 -> 320) 0.93-0.95x. On a 2-core AMD EPYC (Zen 5), where MKL is not tuned, the GEMM
    wins only up to about 1 M multiply-adds (1.1-1.9x), and loses beyond (0.70-0.96x at
    1.6-3.2 M, 0.41-0.56x at 6-12 M)."""
    limit = 2**24 if mkl_on_intel() else 2**20
    if rows * c_in * c_out > limit:
        return False
    return rows <= 64 or (rows <= 256 and c_in >= c_out)


@dataclass
class PointwiseConv:
    """A 1x1 convolution of channels_last inputs with ``rows`` pixels (N*H*W): oneDNN's
    linear op on a reordered weight, its activation (and residual add) post-ops; or, where
    :func:`gemm_runs` says so, ``torch.addmm`` and the activation in place."""

    # (C_out, C_in) reordered for ``rows`` (or plain when uncacheable) for oneDNN; (C_in, C_out)
    # contiguous for the GEMM.
    weight: torch.Tensor
    bias: torch.Tensor | None
    post_op: str
    scalars: list[float]
    # The GEMM's activation, in place on its fresh output (None: none, or the oneDNN path).
    inplace_activation: Callable[[torch.Tensor], torch.Tensor] | None
    gemm: bool

    @classmethod
    def build(cls, weight: torch.Tensor, bias: torch.Tensor | None, x_shape: tuple[int, ...],
              activation: str | None) -> PointwiseConv:
        """The call for a (C_out, C_in, 1, 1) ``weight`` on inputs of ``x_shape`` (N, C, H, W)."""
        c_out, c_in = weight.shape[:2]
        n, _, h, w = x_shape
        rows = n * h * w
        from mobilefuse import ops  # imported here: ops imports this module

        post_op, scalars = POST_OPS[activation]
        if gemm_runs(rows, c_in, c_out):
            transposed = _cached_pack(weight, "gemm", (), lambda w: (
                w.reshape(c_out, c_in).t().contiguous()))
            if transposed is weight:
                transposed = weight.reshape(c_out, c_in).t()
            inplace = None if activation is None else ops.INPLACE_ACTIVATIONS[activation]
            return cls(transposed, bias, post_op, scalars, inplace, gemm=True)
        packed = _cached_pack(weight, "linear", (rows,), lambda w: (
            torch.ops.mkldnn._reorder_linear_weight(w.reshape(c_out, c_in), rows)))
        if packed is weight:
            packed = weight.reshape(c_out, c_in)
        return cls(packed, bias, post_op, scalars, None, gemm=False)

    def _gemm(self, x: torch.Tensor) -> torch.Tensor:
        rows = _pixel_rows(x)
        if self.bias is None:
            return torch.mm(rows, self.weight)
        return torch.addmm(self.bias, rows, self.weight)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``act(conv1x1(x))`` for a channels_last-contiguous ``x``, channels_last."""
        if self.gemm:
            y = self._gemm(x)
            if self.inplace_activation is not None:
                y = self.inplace_activation(y)
        else:
            y = torch.ops.mkldnn._linear_pointwise.default(
                _pixel_rows(x), self.weight, self.bias, self.post_op, self.scalars, None)
        return _image(y, x.shape)

    def add(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``conv1x1(x) + residual`` (both channels_last-contiguous; built without an
        activation), the add as oneDNN's binary post-op or in place after the GEMM."""
        if self.gemm:
            return _image(self._gemm(x).add_(_pixel_rows(residual)), x.shape)
        y = torch.ops.mkldnn._linear_pointwise.binary(
            _pixel_rows(x), _pixel_rows(residual), self.weight, self.bias, "add")
        return _image(y, x.shape)


def _pixel_rows(t: torch.Tensor) -> torch.Tensor:
    """A channels_last-contiguous (N, C, H, W) tensor as its (N*H*W, C) pixel rows (a view)."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def _image(rows: torch.Tensor, x_shape: torch.Size) -> torch.Tensor:
    """(N*H*W, C_out) rows back as a channels_last (N, C_out, H, W) view, N, H, W of x_shape."""
    n, _, h, w = x_shape
    return rows.view(n, h, w, -1).permute(0, 3, 1, 2)


def _adds(x: torch.Tensor, weight: torch.Tensor, stride: _Pair, padding: _Pair,
          activation: str | None, residual: torch.Tensor) -> bool:
    """Whether oneDNN's add post-op can take ``residual``: a 1x1 convolution that keeps the
    input's size, no activation before the add, a residual shaped and laid out as the output."""
    return (activation is None and tuple(weight.shape[2:]) == (1, 1)
            and tuple(stride) == (1, 1) and tuple(padding) == (0, 0)
            and residual.shape == (x.shape[0], weight.shape[0], *x.shape[2:])
            and residual.dtype == x.dtype and residual.device == x.device
            and residual.is_contiguous(memory_format=torch.channels_last))


@dataclass
class SpatialConv:
    """A convolution of channels_last inputs of one shape: oneDNN's convolution on the weight
    reordered for that shape, its activation a post-op."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    stride: list[int]
    padding: list[int]
    dilation: list[int]
    groups: int
    post_op: str
    scalars: list[float]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``act(conv2d(x))`` for a channels_last-contiguous ``x`` of the built shape."""
        return torch.ops.mkldnn._convolution_pointwise(
            x, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups,
            self.post_op, self.scalars, None)

    def add(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``conv2d(x) + residual`` (both channels_last-contiguous; built without an
        activation), the add as oneDNN's binary post-op."""
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, residual, self.weight, self.bias, self.padding, self.stride, self.dilation,
            self.groups, "add", 1.0, None, [], None)


def _onednn_call(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 stride: _Pair, padding: _Pair, dilation: _Pair, groups: int,
                 activation: str | None) -> PointwiseConv | SpatialConv:
    """oneDNN's call for inputs like ``x``, where :func:`serves` said it serves them: the
    linear op for a 1x1 convolution, else the convolution on the weight reordered for x's shape."""
    stride, padding, dilation = tuple(stride), tuple(padding), tuple(dilation)
    if is_pointwise(weight, stride, padding, groups):
        return PointwiseConv.build(weight, bias, x.shape, activation)
    post_op, scalars = POST_OPS[activation]
    return SpatialConv(packed_weight(weight, x.shape, stride, padding, dilation, groups), bias,
                       list(stride), list(padding), list(dilation), groups, post_op, scalars)


def epilogue_call(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  stride: _Pair = (1, 1), padding: _Pair = (0, 0), dilation: _Pair = (1, 1),
                  groups: int = 1, activation: str | None = None
                  ) -> Callable[[torch.Tensor], torch.Tensor]:
    """The call computing ``act(conv2d(x, weight, bias, ...))`` for inputs shaped, laid out and
    typed as ``x``: the oneDNN call where :func:`serves` says so, else ``F.conv2d`` with the
    activation after it (in place when no gradient is recorded). ``padding`` is a pair of ints."""
    if serves(x, weight, activation):
        return _onednn_call(x, weight, bias, stride, padding, dilation, groups, activation)
    from mobilefuse import ops  # imported here: ops imports this module

    def conv_then_activate(x: torch.Tensor) -> torch.Tensor:
        return ops.activate_fresh(pointwise_stride.conv2d(x, weight, bias, stride, padding,
                                                          dilation, groups),
                                  activation)
    return conv_then_activate


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

    if residual is None:
        return epilogue_call(x, weight, bias, stride, padding, dilation, groups, activation)(x)
    if serves(x, weight, activation) and _adds(x, weight, stride, padding, activation, residual):
        return _onednn_call(x, weight, bias, stride, padding, dilation, groups,
                            activation).add(x, residual)
    y = ops.activate_fresh(
        pointwise_stride.conv2d(x, weight, bias, stride, padding, dilation, groups), activation)
    return y.add_(residual) if ops.eager_no_grad() else y + residual
