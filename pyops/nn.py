"""Modules, drop-in replacements for their ``torch.nn`` namesakes (same names, same state)."""

from __future__ import annotations

import torch
from torch import nn

from mobilefuse import ops
from mobilefuse._fusion import Fusion
from mobilefuse._swap import clone_as
from mobilefuse.backends import run_on_backend

__all__ = ["HardSwish", "HardSigmoid", "ChannelShuffle", "DepthwiseConv2d", "SqueezeExcite"]


class HardSwish(nn.Module):
    """Drop-in for ``nn.Hardswish``, running :func:`mobilefuse.ops.hardswish`.

    ``inplace`` is accepted for signature compatibility; the result is always a new tensor
    (the fused backward needs the unmodified input).
    """

    # The backend its op runs on: "auto" follows mobilefuse.set_backend; accelerate() may pin it.
    backend: str = "auto"

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply hard-swish."""
        return run_on_backend(self.backend, ops.hardswish, x)


class HardSigmoid(nn.Module):
    """Drop-in for ``nn.Hardsigmoid``, running :func:`mobilefuse.ops.hardsigmoid`.

    ``inplace`` is accepted for signature compatibility; the result is always a new tensor.
    """

    # The backend its op runs on: "auto" follows mobilefuse.set_backend; accelerate() may pin it.
    backend: str = "auto"

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply hard-sigmoid."""
        return run_on_backend(self.backend, ops.hardsigmoid, x)


class ChannelShuffle(nn.Module):
    """Drop-in for ``nn.ChannelShuffle(groups)``, running :func:`mobilefuse.ops.channel_shuffle`."""

    # The backend its op runs on: "auto" follows mobilefuse.set_backend; accelerate() may pin it.
    backend: str = "auto"

    def __init__(self, groups: int) -> None:
        super().__init__()
        if isinstance(groups, bool) or not isinstance(groups, int) or groups <= 0:
            raise ValueError(f"mobilefuse.nn.ChannelShuffle: groups must be a positive int, "
                             f"got {groups!r}")
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shuffle the channels of ``x`` (N, C, *) across ``groups`` groups."""
        return run_on_backend(self.backend, ops.channel_shuffle, x, self.groups)

    def extra_repr(self) -> str:
        """The group count, as ``nn.ChannelShuffle`` shows it."""
        return f"groups={self.groups}"


class DepthwiseConv2d(nn.Conv2d):
    """Drop-in for ``nn.Conv2d(C, C, k, groups=C)``, running
    :func:`mobilefuse.ops.depthwise_conv2d`.

    It *is* an ``nn.Conv2d`` (same parameters ``weight``/``bias``, initialization, ``state_dict``
    keys and attributes), with an optional ``activation`` fused into the kernel.
    """

    # The backend its op runs on: "auto" follows mobilefuse.set_backend; accelerate() may pin it.
    backend: str = "auto"

    def __init__(self, channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] | str = 0,
                 dilation: int | tuple[int, int] = 1, bias: bool = True,
                 activation: str | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        if isinstance(channels, bool) or not isinstance(channels, int) or channels <= 0:
            raise ValueError(f"mobilefuse.nn.DepthwiseConv2d: channels must be a positive int, "
                             f"got {channels!r}")
        super().__init__(channels, channels, kernel_size, stride, padding, dilation,
                         groups=channels, bias=bias, device=device, dtype=dtype)
        self.activation = activation
        # Set by mobilefuse.accelerate(): the BatchNorm/activation folded in, if any.
        self.fusion: Fusion | None = None

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, activation: str | None = None) -> DepthwiseConv2d:
        """A DepthwiseConv2d sharing ``conv``'s parameters and hooks; ``conv`` must be depthwise."""
        if not (conv.groups == conv.in_channels == conv.out_channels
                and conv.padding_mode == "zeros"):
            raise ValueError("mobilefuse.nn.DepthwiseConv2d.from_conv: conv must have "
                             "groups == in_channels == out_channels and padding_mode='zeros', got "
                             f"{conv!r}")
        return clone_as(conv, cls, activation=activation, fusion=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Depthwise convolution, bias and activation in one kernel.

        When :func:`mobilefuse.accelerate` linked a following BatchNorm/activation and that
        fusion is active (eval mode), they are folded in here as well.
        """
        weight, bias, activation = self.weight, self.bias, self.activation
        fusion = self.fusion
        if fusion is not None and fusion.active():
            weight, bias = fusion.fold(weight, bias)
            activation = fusion.activation
        return run_on_backend(self.backend, ops.depthwise_conv2d, x, weight, bias, self.stride,
                           self.padding, self.dilation, activation)

    def extra_repr(self) -> str:
        """nn.Conv2d's description plus what is fused into it."""
        text = super().extra_repr()
        if self.activation is not None:
            text += f", activation={self.activation!r}"
        if self.fusion is not None:
            text += f", fused={self.fusion.describe()!r}"
        if self.backend != "auto":
            text += f", backend={self.backend!r}"
        return text


_SE_ACTIVATION_MODULES = {"relu": nn.ReLU, "silu": nn.SiLU}
_SE_GATE_MODULES = {"hardsigmoid": nn.Hardsigmoid, "sigmoid": nn.Sigmoid}


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation running :func:`mobilefuse.ops.squeeze_excite` (pool, excitation
    and gating in two passes over ``x``).

    Built directly it has torchvision's ``SqueezeExcitation`` layout (``avgpool``, ``fc1``,
    ``fc2``, ``activation``, ``scale_activation``). :func:`mobilefuse.accelerate` puts it in
    place of torchvision's ``SqueezeExcitation`` and timm's ``SqueezeExcite``/``SEModule``
    keeping *their* children and names (``reduce_name``/``expand_name`` say which 1x1 convs
    hold the weights), so ``state_dict`` keys do not change.
    """

    backend: str = "auto"

    def __init__(self, input_channels: int, squeeze_channels: int, activation: str = "relu",
                 gate: str = "hardsigmoid", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        for name, value in (("input_channels", input_channels),
                            ("squeeze_channels", squeeze_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"mobilefuse.nn.SqueezeExcite: {name} must be a positive int, "
                                 f"got {value!r}")
        if activation not in _SE_ACTIVATION_MODULES:
            raise ValueError(f"mobilefuse.nn.SqueezeExcite: activation must be 'relu' or "
                             f"'silu', got {activation!r}")
        if gate not in _SE_GATE_MODULES:
            raise ValueError(f"mobilefuse.nn.SqueezeExcite: gate must be 'hardsigmoid' or "
                             f"'sigmoid', got {gate!r}")
        factory = {"device": device, "dtype": dtype}
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1, **factory)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1, **factory)
        self.activation = _SE_ACTIVATION_MODULES[activation]()
        self.scale_activation = _SE_GATE_MODULES[gate]()
        self.reduce_name, self.expand_name = "fc1", "fc2"
        self.act_name, self.gate_name = activation, gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` times its per-(sample, channel) gate."""
        reduce, expand = self._modules[self.reduce_name], self._modules[self.expand_name]
        return run_on_backend(self.backend, ops.squeeze_excite, x, reduce.weight, reduce.bias,
                              expand.weight, expand.bias, self.act_name, self.gate_name)

    def extra_repr(self) -> str:
        """The fused activation and gate."""
        text = f"activation={self.act_name!r}, gate={self.gate_name!r}"
        return text if self.backend == "auto" else f"{text}, backend={self.backend!r}"
