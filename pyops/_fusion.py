"""Folding a BatchNorm and an activation into the convolution before them.

``accelerate()`` finds runs ``depthwise conv → BatchNorm2d → activation`` (BatchNorm or
activation optional) inside an ``nn.Sequential``. The convolution becomes a
:class:`~mobilefuse.nn.DepthwiseConv2d` linked to a :class:`Fusion`; the BatchNorm and the
activation stay where they are (so every ``state_dict`` key is unchanged) as
:class:`FoldedBatchNorm2d` and :class:`FusedActivation`, which pass their input through while
the fusion is active and otherwise do their usual work.

The fusion is active when the BatchNorm uses its running statistics (eval mode): the
convolution then runs with the BatchNorm folded into its weight and bias and the activation in
its epilogue, one kernel instead of three. In training mode the BatchNorm must see batch
statistics: on CPU the BatchNorm and the activation then run as one op on batch statistics
(:mod:`mobilefuse._batch_norm_train`), elsewhere the three layers run one after the other,
exactly as before. A run without a BatchNorm fuses its activation in both modes.

Other convolutions (dense, grouped) followed by a BatchNorm become :class:`FoldedConv2d`: in
eval mode the vendor convolution runs with the BatchNorm folded into its weight and bias and the
activation applied on its output (a oneDNN post-op in CPU inference, see
:mod:`mobilefuse._onednn`; elsewhere in place when no gradient is recorded), which saves the
BatchNorm's and the activation's passes over memory.

A BatchNorm after timm's ``MixedConv2d`` (MixNet's layers: channel groups convolved with
different kernels, then concatenated) folds into each of its convolutions, each taking the
channels its output fills (``Fusion.channels``).
"""

from __future__ import annotations

import torch
from torch import nn

from mobilefuse import _batch_norm_train as batch_norm_train
from mobilefuse import _pointwise_stride as pointwise_stride
from mobilefuse import ops
from mobilefuse._call_memo import CallMemo
from mobilefuse._onednn import conv2d_epilogue, epilogue_call
from mobilefuse._swap import origin_class
from mobilefuse.backends import run_on_backend

# The activation modules a depthwise kernel can take in its epilogue, by exact type.
FUSABLE_ACTIVATIONS: dict[type[nn.Module], str] = {
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardswish: "hardswish", nn.SiLU: "silu"}


def _is_timm_class(module: nn.Module, name: str) -> bool:
    """Whether ``module`` is exactly timm's class ``name`` (wherever timm defines it)."""
    kind = type(module)
    return kind.__name__ == name and kind.__module__.startswith("timm.")


def is_mixed_conv(module: nn.Module) -> bool:
    """Whether ``module`` is timm's ``MixedConv2d``: channel groups convolved by its children
    (kernels of several sizes), outputs concatenated in the children's order."""
    return _is_timm_class(module, "MixedConv2d")


def norm_activation(norm: nn.Module) -> tuple[str | None, str | None]:
    """(why ``norm`` is not a BatchNorm that can fold, or None; the activation it applies
    itself, or None): an ``nn.BatchNorm2d``, or timm's ``BatchNormAct2d`` without dropout."""
    if type(norm) is nn.BatchNorm2d:
        return None, None
    # timm's BatchNormAct2d: a BatchNorm2d followed by its own `drop` and `act` children.
    if not _is_timm_class(norm, "BatchNormAct2d"):
        return "not an nn.BatchNorm2d", None
    if type(norm.drop) is not nn.Identity:
        return "its dropout cannot fold", None
    if type(norm.act) is nn.Identity:
        return None, None
    name = FUSABLE_ACTIVATIONS.get(type(norm.act))
    if name is None:
        return f"its activation {type(norm.act).__name__} has no fused kernel", None
    return None, name


class Fusion:
    """What a depthwise convolution absorbs from the layers after it: a BatchNorm, an activation.

    Not a module: it holds the BatchNorm by reference (it stays registered at its own place in
    the model) so that its parameters and running statistics are read at call time.
    ``channels`` (start, stop) folds only those channels of the BatchNorm: one convolution of
    several whose outputs are concatenated before it (timm's ``MixedConv2d``).
    """

    def __init__(self, norm: nn.BatchNorm2d | None, activation: str | None,
                 backend: str = "auto", channels: tuple[int, int] | None = None) -> None:
        self.norm = norm
        self.activation = activation
        self.channels = channels
        # The backend of the training-mode BatchNorm + activation op (see trains_fused).
        self.backend = backend
        # The last folded weight and bias, reused while no input tensor changed (inference).
        self._cache: tuple[tuple, tuple[torch.Tensor, torch.Tensor | None]] | None = None
        # The convolution's last built inference call (see mobilefuse._call_memo).
        self.memo = CallMemo()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": None, "memo": CallMemo()}

    def active(self) -> bool:
        """Whether the convolution runs the fused form now (the BatchNorm is in eval mode)."""
        return self.norm is None or not self.norm.training

    def trains_fused(self, x: torch.Tensor) -> bool:
        """Whether the BatchNorm, in training mode, applies the activation itself on ``x`` (its
        input, or the activation's: same dtype, device and rank), as one CPU op
        (:mod:`mobilefuse._batch_norm_train`); only an ``nn.BatchNorm2d`` swapped here does."""
        norm = self.norm
        return (isinstance(norm, FoldedBatchNorm2d) and norm.__dict__.get("fusion") is self
                and origin_class(norm) is nn.BatchNorm2d
                and batch_norm_train.serves(norm, x, self.backend))

    def fold(self, weight: torch.Tensor, bias: torch.Tensor | None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The convolution's weight and bias with the BatchNorm's affine map applied."""
        norm = self.norm
        if norm is None:
            return weight, bias
        if not ops.eager_no_grad():
            return self._fold(weight, bias)
        # Read from the module's dicts: nn.Module.__getattr__ costs ~0.4 us a name, and this
        # runs on every call.
        buffers, params = norm._buffers, norm._parameters
        tensors = (weight, bias, buffers.get("running_mean"), buffers.get("running_var"),
                   params.get("weight"), params.get("bias"))
        try:
            # Storage and version of every input: any in-place update or new tensor misses
            # (a new dtype or device is new storage).
            key = (weight.dtype, weight.device, norm.eps, *[
                None if t is None else (t.data_ptr(), t._version) for t in tensors])
        except RuntimeError:  # an inference tensor has no version counter: no cache
            return self._fold(weight, bias)
        if self._cache is None or self._cache[0] != key:
            # Outside inference mode, so the cached weight keeps a version counter and the
            # vendor convolution may keep its reordered copy (mobilefuse._onednn); leaving
            # inference mode turns grad mode back on, so no_grad keeps the cache graph-free.
            with torch.inference_mode(False), torch.no_grad():
                self._cache = (key, self._fold(weight, bias))
        return self._cache[1]

    def _fold(self, weight: torch.Tensor, bias: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        norm = self.norm
        # Computed in float32 at least, rounded once to the weight's dtype.
        dtype = torch.promote_types(weight.dtype, torch.float32)

        def part(t: torch.Tensor) -> torch.Tensor:
            t = t.to(dtype)
            return t if self.channels is None else t[self.channels[0]:self.channels[1]]

        scale = torch.rsqrt(part(norm.running_var) + norm.eps)
        shift = -part(norm.running_mean)
        if bias is not None:
            shift = shift + bias.to(dtype)
        if norm.weight is not None:
            scale = scale * part(norm.weight)
        shift = shift * scale
        if norm.bias is not None:
            shift = shift + part(norm.bias)
        folded = weight.to(dtype) * scale.view(-1, 1, 1, 1)
        return folded.to(weight.dtype), shift.to(weight.dtype)

    def describe(self) -> str:
        """E.g. ``"batchnorm+relu6 (eval)"``: what is folded, and when."""
        norm = "batchnorm" if self.channels is None else "batchnorm[{}:{}]".format(*self.channels)
        parts = ([norm] if self.norm is not None else []) + (
            [self.activation] if self.activation else [])
        return "+".join(parts) + (" (eval)" if self.norm is not None else "")


class FoldedBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d folded into the convolution before it (same state, same keys).

    In eval mode the convolution has already applied it, so it passes its input through; in
    training mode it is an ordinary ``BatchNorm2d`` (batch statistics, running-stat updates).
    Only meaningful at its place after that convolution. A plain ``nn.BatchNorm2d`` trains on
    CPU as one op with the fused activation (:mod:`mobilefuse._batch_norm_train`).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in eval mode (already applied by the convolution); in training mode the
        BatchNorm and the activation after it as one CPU op where that serves, else the
        replaced module's own forward (BatchNorm2d, or e.g. timm's BatchNormAct2d)."""
        if not self.training:
            return x
        fusion = self.__dict__.get("fusion")
        if fusion is not None and fusion.trains_fused(x):
            return batch_norm_train.batch_norm_activation_train(self, x, fusion.activation)
        return origin_class(self).forward(self, x)

    def extra_repr(self) -> str:
        """BatchNorm2d's description plus where it went."""
        return f"{super().extra_repr()}, folded into the conv before it in eval mode"


class FusedActivation(nn.Module):
    """An activation run by the convolution before it (in a depthwise kernel's epilogue).

    Passes its input through while the convolution's :class:`Fusion` is active; otherwise it
    applies the activation itself (hard-swish through :func:`mobilefuse.ops.hardswish`). The
    replaced module's attributes (e.g. ``inplace``) are kept; the result is always a new tensor.
    """

    name: str
    fusion: Fusion
    backend: str = "auto"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` while fused (in the convolution, or in the BatchNorm's training op), else the
        activation of ``x``."""
        if self.fusion.active() or self.fusion.trains_fused(x):
            return x
        return run_on_backend(self.backend, ops.ACTIVATION_FUNCTIONS[self.name], x)

    def extra_repr(self) -> str:
        """The activation and when it is fused."""
        when = "in eval mode" if self.fusion.norm is not None else "always"
        return f"{self.name}, fused into the conv before it {when}"


class FoldedConv2d(nn.Conv2d):
    """A (dense or grouped) ``nn.Conv2d`` with the BatchNorm after it folded in, in eval mode.

    Same parameters and ``state_dict`` keys as the convolution it replaces. While its
    :class:`Fusion` is active it runs the vendor convolution with the folded weight and bias and
    the fused activation (a oneDNN post-op in CPU inference, else in place when no gradient is
    recorded); otherwise it is a plain ``nn.Conv2d``. With no gradient recorded it replays the
    call it built for the last input of the same shape (:mod:`mobilefuse._call_memo`).
    """

    fusion: Fusion

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution, with BatchNorm and activation folded in while the fusion is active."""
        fusion = self.fusion
        if not fusion.active():
            if self.padding_mode != "zeros":
                return super().forward(x)
            return pointwise_stride.conv2d(x, self.weight, self.bias, self.stride, self.padding,
                                           self.dilation, self.groups)
        weight, bias = fusion.fold(self.weight, self.bias)
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            return ops.activate_fresh(self._conv_forward(x, weight, bias), fusion.activation)
        if not ops.eager_no_grad():
            return conv2d_epilogue(x, weight, bias, self.stride, self.padding, self.dilation,
                                   self.groups, fusion.activation)
        return fusion.memo.run(x, weight, bias, lambda: epilogue_call(
            x, weight, bias, self.stride, self.padding, self.dilation, self.groups,
            fusion.activation))

    def extra_repr(self) -> str:
        """nn.Conv2d's description plus what is folded into it."""
        return f"{super().extra_repr()}, fused={self.fusion.describe()!r}"
