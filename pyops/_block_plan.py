"""The fused block's CPU inference calls, worked out once and replayed while nothing changes.

In eval mode with no gradient recorded, every call of :class:`mobilefuse.nn.InvertedResidual`
on a float32 channels_last CPU input of one shape makes the same three dispatcher calls
(oneDNN expansion, the depthwise(+SE) kernel, oneDNN projection with the residual add) on the
same folded, reordered weights. Finding the layers, checking the arguments and looking the
folded weights up in their caches costs more Python time than the small blocks' kernels take
to run. :class:`InferencePlan` keeps the calls ready, with guards that say when they no
longer hold:

- the block's layers are still the same module objects at the same places;
- every parameter and buffer read is the same tensor, with the same data and version (an
  optimizer step, ``load_state_dict``, ``.to()`` or an in-place edit changes one of these);
- the BatchNorms are still in eval mode with the same ``eps``, stochastic depth is off;
- the input has the same shape, dtype, device and layout, no gradient is recorded, no
  ``torch.compile`` trace or autocast is on, oneDNN is enabled and the backend choice is the
  same.

A failed guard sends the call down the general path, which builds a new plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from mobilefuse._block_args import OP as INVERTED_RESIDUAL
from mobilefuse._block_layout import BlockLayout, Stage
from mobilefuse._conv_args import check_depthwise_args
from mobilefuse._expand_fusion import NO_SE_ARGS, expansion_fuses
from mobilefuse._onednn import PointwiseConv, ops_present
from mobilefuse._ranges import op_range
from mobilefuse._se_args import check_squeeze_excite_args
from mobilefuse._se_layout import se_layout, se_options
from mobilefuse.backends import get_backend, kernel_backend


@dataclass
class Guards:
    """What must still be as it was for a plan to hold."""

    # container.get(key) is obj: a layer at its place, a parameter or buffer in its module.
    slots: list[tuple[dict, str, object]] = field(default_factory=list)
    # (tensor, version, data pointer).
    tensors: list[tuple[torch.Tensor, int, int]] = field(default_factory=list)
    # container.get(key) == value: a mode flag or a setting.
    values: list[tuple[dict, str, object]] = field(default_factory=list)
    # A tensor without a version counter was met: no plan can guard it.
    versionless: bool = False

    def module(self, parent: nn.Module, name: str) -> nn.Module:
        """``parent``'s child ``name``, guarded to stay there."""
        child = parent._modules[name]
        self.slots.append((parent._modules, name, child))
        return child

    def tensor(self, owner: nn.Module, name: str) -> torch.Tensor | None:
        """``owner``'s parameter or buffer ``name`` (or None), guarded to stay the same tensor
        with the same data and version."""
        for container in (owner._parameters, owner._buffers):
            if name in container:
                t = container[name]
                self.slots.append((container, name, t))
                if t is not None and t.is_inference():
                    self.versionless = True  # created under inference_mode: unguardable
                elif t is not None:
                    self.tensors.append((t, t._version, t.data_ptr()))
                return t
        # Not registered (e.g. a convolution built without bias): guard that it stays so.
        self.slots.append((owner._parameters, name, None))
        return None

    def path(self, root: nn.Module, path: str) -> nn.Module:
        """The layer at dotted ``path`` below ``root``, each link guarded."""
        for name in path.split("."):
            root = self.module(root, name)
        return root

    def value(self, owner: object, name: str) -> object:
        """``owner.name`` read from its ``__dict__``, guarded to stay equal."""
        value = vars(owner)[name]
        self.values.append((vars(owner), name, value))
        return value

    def hold(self) -> bool:
        """Whether everything guarded is as it was."""
        for container, key, obj in self.slots:
            if container.get(key) is not obj:
                return False
        for t, version, pointer in self.tensors:
            if t._version != version or t.data_ptr() != pointer:
                return False
        return all(container.get(key) == value for container, key, value in self.values)


@dataclass
class InferencePlan:
    """The block's calls for one input shape, and the guards under which they hold."""

    guards: Guards
    shape: torch.Size
    backends: tuple[str, str]
    expand: PointwiseConv | None
    # The depthwise (+ squeeze-and-excitation) op and its arguments after the input.
    depthwise: object
    depthwise_args: tuple
    project: PointwiseConv
    residual: bool

    def serves(self, x: torch.Tensor, backend: str) -> bool:
        """Whether this plan computes the block for ``x`` now (``backend``: the module's)."""
        return (not torch.is_grad_enabled() and isinstance(x, torch.Tensor)
                and x.shape == self.shape and x.dtype == torch.float32
                and x.device.type == "cpu"
                and x.is_contiguous(memory_format=torch.channels_last)
                and not torch.is_autocast_enabled("cpu") and torch.backends.mkldnn.enabled
                and not torch.compiler.is_compiling()
                and (backend, get_backend()) == self.backends and self.guards.hold())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with op_range(INVERTED_RESIDUAL):
            h = x if self.expand is None else self.expand(x)
            h = self.depthwise(h, *self.depthwise_args)
            return self.project.add(h, x) if self.residual else self.project(h)


def _plannable_input(x: torch.Tensor) -> bool:
    """Whether the block's inference calls on ``x`` are the oneDNN + depthwise-kernel ones."""
    return (not torch.is_grad_enabled() and not torch.compiler.is_compiling()
            and x.dtype == torch.float32 and x.device.type == "cpu" and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last)
            and not torch.is_autocast_enabled("cpu") and ops_present()
            and torch.backends.mkldnn.enabled)


def _guard_stage(guards: Guards, block: nn.Module, stage: Stage
                 ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """A stage's convolution weight and bias, guarded with its BatchNorm's tensors and mode;
    None when the BatchNorm does not fold (training mode, no running statistics)."""
    conv, norm = guards.path(block, stage.conv), guards.path(block, stage.norm)
    weight, bias = guards.tensor(conv, "weight"), guards.tensor(conv, "bias")
    for name in ("weight", "bias", "running_mean", "running_var"):
        guards.tensor(norm, name)
    guards.value(norm, "eps")
    if guards.value(norm, "training") or not guards.value(norm, "track_running_stats"):
        return None
    return weight, bias


def _guard_se(guards: Guards, se: nn.Module) -> tuple[tuple, tuple[str, str]]:
    """The SE layer's (w_reduce, b_reduce, w_expand, b_expand) and (activation, gate), guarded."""
    if "reduce_name" in vars(se):  # mobilefuse.nn.SqueezeExcite
        reduce = guards.module(se, guards.value(se, "reduce_name"))
        expand = guards.module(se, guards.value(se, "expand_name"))
        options = (guards.value(se, "act_name"), guards.value(se, "gate_name"))
    else:
        reduce_name, act_name, expand_name, gate_name = se_layout(se)
        reduce, expand = guards.module(se, reduce_name), guards.module(se, expand_name)
        guards.module(se, act_name)
        guards.module(se, gate_name)
        options = se_options(se)
    weights = tuple(guards.tensor(layer, name) for layer in (reduce, expand)
                    for name in ("weight", "bias"))
    return weights, options


def _pointwise_call(weight: torch.Tensor, bias: torch.Tensor | None, x_shape: tuple[int, ...],
                    activation: str | None) -> PointwiseConv | None:
    if weight.dtype != torch.float32 or weight.device.type != "cpu" or weight.dim() != 4:
        return None
    return PointwiseConv.build(weight, bias, x_shape, activation)


def _by_tap(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (C, 1, kh, kw) with the same values, stored tap by tap ((kh*kw, C) in
    memory): the layout the channels_last kernels read, which they would otherwise copy it
    into on every call."""
    c, taps = weight.shape[0], weight.shape[2] * weight.shape[3]
    return weight.reshape(c, taps).t().contiguous().t().reshape(weight.shape)


def _output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def build_plan(block: nn.Module, x: torch.Tensor) -> InferencePlan | None:
    """The plan of ``block`` (a :class:`mobilefuse.nn.InvertedResidual` in eval mode) for
    ``x``, or None where its general path makes other calls (another dtype, layout or
    backend, a gradient recorded, a convolution the kernels do not take, tensors created
    under ``torch.inference_mode``, whose changes no version counter shows)."""
    backend = block.backend
    if not _plannable_input(x) or kernel_backend(
            x.device, x.dtype, None if backend == "auto" else backend) != "cpu":
        return None
    layout: BlockLayout = block.layout
    guards = Guards()
    stages = (layout.expand, layout.depthwise, layout.project)
    convs = [None if s is None else _guard_stage(guards, block, s) for s in stages]
    if any(c is None for s, c in zip(stages, convs, strict=True) if s is not None):
        return None
    if layout.drop is not None and guards.value(guards.path(block, layout.drop), "training"):
        return None
    se = None if layout.se is None else _guard_se(guards, guards.path(block, layout.se))
    dw_conv = guards.path(block, layout.depthwise.conv)
    stride, padding, dilation = (guards.value(dw_conv, name)
                                 for name in ("stride", "padding", "dilation"))
    if not all(type(v) is tuple and all(type(i) is int for i in v)
               for v in (stride, padding, dilation)):
        return None  # e.g. padding="same": the general path decides
    residual = layout.residual
    if residual and layout.project.activation is not None:
        return None  # no oneDNN post-op adds after an activation
    folded = [(None, None) if s is None else block._fusion(s).fold(*conv)
              for s, conv in zip(stages, convs, strict=True)]
    (expand_w, expand_b), (dw_w, dw_b), (project_w, project_b) = folded
    if guards.versionless or any(t is not None and t.is_inference() for pair in folded
                                 for t in pair):
        return None
    n, _, height, width = x.shape
    mid = dw_w.shape[0]
    # Tensors with the intermediate shapes and no data, for the argument checks.
    hidden = x.new_empty(()).expand(n, mid, height, width)
    dw = check_depthwise_args(hidden, dw_w, dw_b, stride, padding, dilation,
                              layout.depthwise.activation)
    if dw.kernel_gap is not None:
        return None
    out_hw = tuple(_output_size(size, k, s, p, d) for size, k, s, p, d in zip(
        (height, width), dw_w.shape[2:], dw.stride, dw.padding, dw.dilation, strict=True))
    geometry = [list(dw.stride), list(dw.padding), list(dw.dilation), dw.activation]
    dw_w = _by_tap(dw_w)
    se_call: tuple = ()
    if se is not None:
        se_weights, (se_act, se_gate) = se
        se_call = check_squeeze_excite_args(x.new_empty(()).expand(n, mid, *out_hw), *se_weights,
                                            se_act, se_gate).op_args
    if expand_w is not None and expansion_fuses(tuple(x.shape)):
        # The expansion runs inside the depthwise op, its output kept in cache row by row.
        depthwise, depthwise_args = torch.ops.mobilefuse.expand_depthwise, (
            expand_w, expand_b, layout.expand.activation or "none", dw_w, dw_b, *geometry,
            *(se_call or NO_SE_ARGS))
        expand_w = None
    elif se_call:
        depthwise, depthwise_args = torch.ops.mobilefuse.depthwise_squeeze_excite, (
            dw_w, dw_b, *geometry, *se_call)
    else:
        depthwise, depthwise_args = torch.ops.mobilefuse.depthwise_conv2d, (
            dw_w, dw_b, *geometry)
    expand = None if expand_w is None else _pointwise_call(
        expand_w, expand_b, tuple(x.shape), layout.expand.activation)
    project = _pointwise_call(project_w, project_b, (n, mid, *out_hw),
                              layout.project.activation)
    if project is None or (expand_w is not None and expand is None):
        return None
    return InferencePlan(guards, x.shape, (backend, get_backend()), expand, depthwise,
                         depthwise_args, project, residual)
