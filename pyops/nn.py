"""Modules, drop-in replacements for their ``torch.nn`` namesakes (same names, same state)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from mobilefuse import ops
from mobilefuse._autocast import autocast_dtype
from mobilefuse._block_args import BlockArgs
from mobilefuse._block_layout import BlockLayout, Stage
from mobilefuse._block_plan import build_plan
from mobilefuse._block_train import BlockTrainFunction, TrainPlan
from mobilefuse._conv_args import ACTIVATIONS as CONV_ACTIVATIONS
from mobilefuse._fusion import FUSABLE_ACTIVATIONS, Fusion
from mobilefuse._se_layout import se_layout, se_options
from mobilefuse._swap import clone_as
from mobilefuse._swap import has_hooks as _has_hooks
from mobilefuse.backends import kernel_backend, run_on_backend
from mobilefuse.models.layers import StochasticDepth

__all__ = ["HardSwish", "HardSigmoid", "ChannelShuffle", "DepthwiseConv2d", "SqueezeExcite",
           "InvertedResidual", "ShuffleUnit", "ShuffleStage", "MaxPool2d"]


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
        if activation is not None and activation not in CONV_ACTIVATIONS[1:]:
            raise ValueError(f"mobilefuse.nn.DepthwiseConv2d: activation must be None or one of "
                             f"{', '.join(map(repr, CONV_ACTIVATIONS[1:]))}, got {activation!r}")
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
        fusion is active (eval mode), they are folded in here as well; with no gradient
        recorded (and backend ``"auto"``, no autocast) the call built for the last input of the
        same shape is replayed (:mod:`mobilefuse._call_memo`).
        """
        weight, bias, activation = self.weight, self.bias, self.activation
        fusion = self.fusion
        if fusion is not None and fusion.active():
            weight, bias = fusion.fold(weight, bias)
            activation = fusion.activation
            if (self.backend == "auto" and ops.eager_no_grad()
                    and autocast_dtype(x.device) is None):
                return fusion.memo.run(x, weight, bias, lambda: ops.depthwise_call(
                    x, weight, bias, self.stride, self.padding, self.dilation, activation))
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


_ACTIVATION_MODULES = {name: cls for cls, name in FUSABLE_ACTIVATIONS.items()}


class MaxPool2d(nn.MaxPool2d):
    """Drop-in for ``nn.MaxPool2d`` (same arguments, a subclass): in inference on CPU it runs
    mobilefuse's channels_last max-pool kernel (``torch.ops.mobilefuse.max_pool2d``, the same
    values bit for bit, NaN propagated); wherever that does not serve (a gradient recorded,
    another device or layout, dilation, ``ceil_mode``, ``return_indices``, ``torch.compile``,
    the ``"reference"`` backend) it is ``nn.MaxPool2d`` itself."""

    # The backend its op runs on: "auto" follows mobilefuse.set_backend; accelerate() may pin it.
    backend: str = "auto"

    def _geometry(self) -> tuple[tuple[int, int], ...] | None:
        """(kernel, stride, padding) as pairs when the kernel takes these settings, else None."""
        kernel, stride, padding, dilation = (_pair(v) for v in (
            self.kernel_size, self.stride, self.padding, self.dilation))
        if dilation != (1, 1) or self.ceil_mode or self.return_indices:
            return None
        if any(2 * p > k for p, k in zip(padding, kernel, strict=True)):
            return None  # nn.MaxPool2d's own error message explains it
        return kernel, stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled ``x`` (see the class description for which path runs)."""
        geometry = self._geometry()
        if (geometry is not None and isinstance(x, torch.Tensor) and x.dim() == 4
                and x.device.type == "cpu" and x.is_floating_point()
                and x.is_contiguous(memory_format=torch.channels_last)
                and not (torch.is_grad_enabled() and x.requires_grad)
                and not torch.compiler.is_compiling()
                and all(x.shape[2 + d] + 2 * geometry[2][d] >= geometry[0][d] for d in (0, 1))
                and kernel_backend(x.device, x.dtype,
                                   None if self.backend == "auto" else self.backend) == "cpu"):
            return torch.ops.mobilefuse.max_pool2d(x, *geometry)
        return super().forward(x)


class ShuffleUnit(nn.Module):
    """A ShuffleNetV2 unit whose concatenation and channel shuffle run as one op
    (:func:`mobilefuse.ops.concat_shuffle`).

    Same children and ``state_dict`` keys as torchvision's ``shufflenetv2.InvertedResidual``
    (``branch1``, stride 2 only, and ``branch2``, flat ``nn.Sequential``s), which
    :func:`mobilefuse.accelerate` puts it in place of (and of the zoo's ``ShuffleV2Unit``,
    keeping that unit's own children). Stride 1 transforms the input's second half and keeps
    the first; stride 2 transforms the whole input twice.
    """

    # The backend its op runs on: "auto" follows mobilefuse.set_backend; accelerate() may pin it.
    backend: str = "auto"

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        from mobilefuse.models.shufflenet import ShuffleV2Unit

        unit = ShuffleV2Unit(in_channels, out_channels, stride, nn.BatchNorm2d, nn.ReLU)
        for name in ("branch1", "branch2"):
            if name in unit._modules:
                self.add_module(name, unit._modules[name])
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The unit's output, ``channel_shuffle(cat((left, right), 1), 2)``."""
        if self.stride == 1:
            kept, changed = x.chunk(2, dim=1)
            if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
                # A dense half: the 1x1 convolution runs fastest on it (a packed oneDNN call).
                changed = changed.contiguous(memory_format=torch.channels_last)
            return run_on_backend(self.backend, ops.concat_shuffle, kept, self.branch2(changed))
        return run_on_backend(self.backend, ops.concat_shuffle, self.branch1(x), self.branch2(x))

    def extra_repr(self) -> str:
        """The stride."""
        return f"stride={self.stride}" + (
            f", backend={self.backend!r}" if self.backend != "auto" else "")


class ShuffleStage(nn.Sequential):
    """An ``nn.Sequential`` of ShuffleNetV2 units (a stage) that hands the output of one
    stride-1 :class:`ShuffleUnit` to the next as its two channel halves.

    A stride-1 unit splits its input in two and runs its branch on the second half, which the
    1x1 convolution needs dense: alone, each unit copies it out. In CPU inference on a
    channels_last input (no gradient recorded, no ``torch.compile`` trace) a unit followed by
    another stride-1 unit writes its shuffled output as the two dense halves the next one
    reads (``torch.ops.mobilefuse.concat_shuffle_chunks``): the same values, one copy fewer per
    unit. The stage's output and everything else is computed as ``nn.Sequential`` does;
    children of other types, units with hooks of their own and units pinned to another
    backend run as they are. :func:`mobilefuse.accelerate` puts it in place of an exact
    ``nn.Sequential`` holding two or more stride-1 units in a row, with the same children.
    """

    @staticmethod
    def chains(module: nn.Module | None) -> bool:
        """Whether ``module`` is a stride-1 :class:`ShuffleUnit` without hooks: a unit a stage
        may hand halves to and from (on the CPU backend)."""
        return type(module) is ShuffleUnit and module.stride == 1 and not _has_hooks(module)

    def _links(self, module: nn.Module | None, x: torch.Tensor) -> bool:
        """Whether ``module`` :meth:`chains` and runs on the CPU backend for tensors like x."""
        return self.chains(module) and kernel_backend(
            x.device, x.dtype, None if module.backend == "auto" else module.backend) == "cpu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The units applied in order (see the class description for how halves travel)."""
        if not (isinstance(x, torch.Tensor) and ops.eager_no_grad() and x.dim() == 4
                and x.device.type == "cpu" and x.is_floating_point()
                and x.is_contiguous(memory_format=torch.channels_last)):
            return super().forward(x)
        modules = list(self._modules.values())
        halves: tuple[torch.Tensor, torch.Tensor] | None = None
        for i, module in enumerate(modules):
            # With halves in hand, the previous unit already checked that this one links.
            if halves is None and not self._links(module, x):
                x = module(x)
                continue
            if halves is None:
                kept, changed = x.chunk(2, dim=1)
                changed = changed.contiguous(memory_format=torch.channels_last)
            else:
                kept, changed = halves
            out = module.branch2(changed)
            if i + 1 < len(modules) and self._links(modules[i + 1], out):
                halves = torch.ops.mobilefuse.concat_shuffle_chunks(kept, out)
            else:
                halves, x = None, torch.ops.mobilefuse.concat_shuffle(kept, out)
        return x


class InvertedResidual(nn.Module):
    """An MBConv (inverted residual) block run by :func:`mobilefuse.ops.inverted_residual`.

    ``[1x1 expand → BN → act]``, ``depthwise → BN → act``, ``[squeeze-excite]``,
    ``1x1 project → BN``, plus the input (through stochastic depth) on residual blocks.

    - Eval mode: the BatchNorms are folded into the convolutions (cached while the weights do
      not change) and the block runs as the fused op: the depthwise kernel applies bias and
      activation in its epilogue, the activations after the 1x1 convolutions and the residual
      add happen in place on fresh outputs.
    - Training mode: BatchNorms use batch statistics and update their running statistics as
      ``nn.BatchNorm2d`` does; the backward keeps two tensors of the expanded width (the
      expansion's and depthwise convolution's raw outputs) instead of eager's six or seven and
      recomputes the BatchNorm-activation maps from them (:mod:`mobilefuse._block_train`).
    - Anything else (BatchNorms in different modes, ``torch.compile`` tracing in training
      mode, a dtype no kernel takes) runs the layers one after the other, as the replaced
      block's own forward does.

    Built directly it has timm's flat layout (``conv_pw``, ``bn1``, ``act1``, ``conv_dw``,
    ``bn2``, ``act2``, ``se``, ``conv_pwl``, ``bn3``, ``drop_path``).
    :func:`mobilefuse.accelerate` puts it in place of torchvision's MobileNetV2/V3
    ``InvertedResidual`` and EfficientNet ``MBConv``, timm's ``InvertedResidual`` and
    ``DepthwiseSeparableConv`` and the model zoo's blocks, keeping *their* children and
    names (``layout`` says which child plays which role), so ``state_dict`` keys do not change.
    """

    backend: str = "auto"
    layout: BlockLayout

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, expand_ratio: float = 6.0, activation: str = "relu6",
                 se_channels: int | None = None, se_activation: str = "relu",
                 se_gate: str = "hardsigmoid", drop_path: float = 0.0,
                 residual: bool | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        where = "mobilefuse.nn.InvertedResidual"
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("kernel_size", kernel_size), ("stride", stride)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{where}: {name} must be a positive int, got {value!r}")
        if kernel_size % 2 == 0:
            raise ValueError(f"{where}: kernel_size must be odd, got {kernel_size}")
        if activation not in _ACTIVATION_MODULES:
            raise ValueError(f"{where}: activation must be one of "
                             f"{', '.join(map(repr, _ACTIVATION_MODULES))}, got {activation!r}")
        if not expand_ratio >= 1.0:
            raise ValueError(f"{where}: expand_ratio must be >= 1, got {expand_ratio!r}")
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"{where}: drop_path must be in [0, 1), got {drop_path!r}")
        can_add = stride == 1 and in_channels == out_channels
        if residual and not can_add:
            raise ValueError(f"{where}: residual=True needs stride 1 and in_channels == "
                             f"out_channels, got stride {stride}, {in_channels} -> "
                             f"{out_channels}")
        factory = {"device": device, "dtype": dtype}
        mid = int(round(in_channels * expand_ratio))
        sequence = []
        expand = None
        if mid != in_channels:
            self.conv_pw = nn.Conv2d(in_channels, mid, 1, bias=False, **factory)
            self.bn1 = nn.BatchNorm2d(mid, **factory)
            self.act1 = _ACTIVATION_MODULES[activation]()
            expand = Stage("conv_pw", "bn1", activation)
            sequence += ["conv_pw", "bn1", "act1"]
        self.conv_dw = nn.Conv2d(mid, mid, kernel_size, stride, kernel_size // 2, groups=mid,
                                 bias=False, **factory)
        self.bn2 = nn.BatchNorm2d(mid, **factory)
        self.act2 = _ACTIVATION_MODULES[activation]()
        sequence += ["conv_dw", "bn2", "act2"]
        if se_channels is not None:
            self.se = SqueezeExcite(mid, se_channels, se_activation, se_gate, **factory)
            sequence.append("se")
        self.conv_pwl = nn.Conv2d(mid, out_channels, 1, bias=False, **factory)
        self.bn3 = nn.BatchNorm2d(out_channels, **factory)
        sequence += ["conv_pwl", "bn3"]
        residual = can_add if residual is None else residual
        self.drop_path = StochasticDepth(drop_path) if drop_path > 0 and residual else nn.Identity()
        self.layout = BlockLayout(
            tuple(sequence), expand, Stage("conv_dw", "bn2", activation),
            "se" if se_channels is not None else None, Stage("conv_pwl", "bn3", None),
            "drop_path" if drop_path > 0 and residual else None, residual)

    def _child(self, path: str) -> nn.Module:
        """The layer at dotted ``path``, through a cache checked link by link on every call
        (``get_submodule`` costs microseconds per call, which small blocks notice)."""
        cache = self.__dict__.setdefault("_child_cache", {})
        links = cache.get(path)
        if links is not None and all(parent._modules.get(name) is child
                                     for parent, name, child in links):
            return links[-1][2]
        links, parent = [], self
        for name in path.split("."):
            child = parent._modules.get(name)
            if child is None:
                raise AttributeError(f"mobilefuse.nn.InvertedResidual: its layout names layer "
                                     f"{path!r}, which it no longer has")
            links.append((parent, name, child))
            parent = child
        cache[path] = links
        return parent

    def _check_input(self, x: object) -> None:
        """A clear error for what no path can run (the fused one would fail deep inside)."""
        first = self._child((self.layout.expand or self.layout.depthwise).conv)
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != first.in_channels:
            got = (f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor)
                   else type(x).__name__)
            raise ValueError(f"mobilefuse.nn.InvertedResidual: x must have shape (N, "
                             f"{first.in_channels}, H, W), got {got}")

    def _stages(self) -> tuple[Stage | None, Stage, Stage]:
        layout = self.layout
        return layout.expand, layout.depthwise, layout.project

    def _norms(self) -> list[nn.Module]:
        return [self._child(s.norm) for s in self._stages() if s is not None]

    def _route(self, x: torch.Tensor) -> str:
        """"folded", "train" or "layers": which forward serves this call."""
        norms = self._norms()
        drop = None if self.layout.drop is None else self._child(self.layout.drop)
        if not any(n.training for n in norms):
            usable = all(n.track_running_stats and n.running_mean is not None for n in norms)
            return "folded" if usable and (drop is None or not drop.training) else "layers"
        if not all(n.training for n in norms) or torch.compiler.is_compiling():
            return "layers"
        if autocast_dtype(x.device) is not None:
            return "layers"  # each layer casts as autocast does; the training function cannot
        conv = self._child(self.layout.depthwise.conv)
        if conv.weight.dtype != x.dtype:
            return "layers"
        return "train" if self._kernel_backend(x) is not None else "layers"

    def _kernel_backend(self, x: torch.Tensor) -> str | None:
        return kernel_backend(x.device, x.dtype, None if self.backend == "auto" else self.backend)

    def _se_weights(self) -> tuple[tuple[torch.Tensor | None, ...], tuple[str, str]] | None:
        if self.layout.se is None:
            return None
        se = self._child(self.layout.se)
        if isinstance(se, SqueezeExcite):
            reduce, expand = se._modules[se.reduce_name], se._modules[se.expand_name]
            options = (se.act_name, se.gate_name)
        else:
            reduce_name, _, expand_name, _ = se_layout(se)
            reduce, expand = se._modules[reduce_name], se._modules[expand_name]
            options = se_options(se)
        return (reduce.weight, reduce.bias, expand.weight, expand.bias), options

    def _fusion(self, stage: Stage) -> Fusion:
        # One Fusion per stage, kept so that its folded-weight cache lives across calls.
        cache = self.__dict__.setdefault("_fusions", {})
        norm = self._child(stage.norm)
        fusion = cache.get(stage.norm)
        if fusion is None or fusion.norm is not norm:
            fusion = cache[stage.norm] = Fusion(norm, stage.activation)
        return fusion

    def _folded(self, stage: Stage | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if stage is None:
            return None, None
        conv = self._child(stage.conv)
        return self._fusion(stage).fold(conv.weight, conv.bias)

    def _forward_folded(self, x: torch.Tensor) -> torch.Tensor:
        expand, depthwise, project = self._stages()
        dw = self._child(depthwise.conv)
        se = self._se_weights()
        se_weights, (se_act, se_gate) = se if se is not None else (None, ("relu", "sigmoid"))
        args = BlockArgs(dw.stride, dw.padding, dw.dilation,
                         (expand.activation if expand else None, depthwise.activation),
                         project.activation, self.layout.residual)
        return run_on_backend(
            self.backend, lambda: ops.run_inverted_residual(
                x, *self._folded(expand), *self._folded(depthwise), *self._folded(project),
                se_weights, args, se_act, se_gate))

    def _forward_train(self, x: torch.Tensor) -> torch.Tensor:
        expand, depthwise, project = self._stages()
        dw = self._child(depthwise.conv)
        norms = [None if s is None else self._child(s.norm) for s in self._stages()]
        se = self._se_weights()
        plan = TrainPlan(tuple(norms), tuple(s.activation if s else None for s in self._stages()),
                         dw.stride, dw.padding, dw.dilation, None if se is None else se[1],
                         self._kernel_backend(x))
        params: list[torch.Tensor | None] = []
        for stage in (expand, depthwise):
            conv = None if stage is None else self._child(stage.conv)
            norm = None if stage is None else self._child(stage.norm)
            params += [getattr(conv, "weight", None), getattr(conv, "bias", None),
                       getattr(norm, "weight", None), getattr(norm, "bias", None)]
        params += list(se[0]) if se is not None else [None] * 4
        conv, norm = self._child(project.conv), self._child(project.norm)
        params += [conv.weight, conv.bias, norm.weight, norm.bias]
        out = BlockTrainFunction.apply(plan, x, *params)
        return self._add_input(x, out)

    def _add_input(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if not self.layout.residual:
            return out
        if self.layout.drop is not None:
            out = self._child(self.layout.drop)(out)
        return x + out

    def _forward_layers(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for path in self.layout.sequence:
            out = self._child(path)(out)
        return self._add_input(x, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output (see the class description for which path runs)."""
        plan = self.__dict__.get("_plan")
        if plan is not None and plan.serves(x, self.backend):
            return plan(x)
        self._check_input(x)
        route = self._route(x)
        if route == "folded":
            # Replayed by later calls while its guards hold (mobilefuse._block_plan).
            plan = self.__dict__["_plan"] = build_plan(self, x)
            return plan(x) if plan is not None else self._forward_folded(x)
        if route == "train":
            return self._forward_train(x)
        return self._forward_layers(x)

    def __getstate__(self) -> dict:
        # The plan holds oneDNN-reordered weights, which neither pickle nor deep-copy.
        return {k: v for k, v in super().__getstate__().items() if k != "_plan"}

    def extra_repr(self) -> str:
        """The roles and whether the input is added."""
        roles = [f"residual={self.layout.residual}"]
        if self.layout.se is not None:
            roles.append(f"se={self.layout.se!r}")
        if self.backend != "auto":
            roles.append(f"backend={self.backend!r}")
        return ", ".join(roles)
