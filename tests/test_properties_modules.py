"""Property tests (hypothesis) for the routes accelerated models take that the functional ops'
properties do not reach: a convolution's BatchNorm and activation in training (batch and
running statistics, the fused backward), and the MBConv block module in training
(:mod:`mobilefuse._block_train`) and in inference (folded weights, oneDNN post-ops, the
depthwise + squeeze-excite op, the replayed plan). Each runs in float32 against a float64
twin that runs the layers one after the other, as eager PyTorch does."""

from __future__ import annotations

import copy

import torch
from conftest import (
    BACKWARD_TOL,
    FORWARD_TOL,
    assert_close_to_reference,
    counting_fused_batch_norm,
    randomize_norms,
)
from hypothesis import assume, given
from hypothesis import strategies as st
from property_check import EXAMPLES_CHECKED, SIZES, run_property
from torch import nn

import mobilefuse

# From 2: a one-element filter before a training BatchNorm has a zero gradient (see below).
CHANNELS = st.sampled_from([2, 3, 5, 8, 13, 16, 17, 24])
BATCH = st.sampled_from([1, 2, 3])
MODULE_LAYOUTS = st.sampled_from([torch.contiguous_format, torch.channels_last])
ACTIVATIONS = {None: None, "relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish,
               "silu": nn.SiLU}
# A training BatchNorm's input gradient is the output gradient less its projections on the
# normalized values and on a constant, per channel, and the gradient of a convolution's
# filter before it is orthogonal to the filter: over two values per channel, or for a
# one-element filter, nothing is left in exact arithmetic. The properties keep to eight values
# or more per channel and filters of two elements or more (tests/test_batch_norm_*.py cover
# the small cases with fixed inputs).
MIN_VALUES_PER_CHANNEL = 8
# Some results still cancel, or hang on a value next to a kink (an SE weight's gradient is
# the sum of gate gradients times ReLU outputs that may be 1e-5 made from terms of 1), and
# then float32 rounding of the terms is all they hold, whoever computes them. The float64 twin
# is run again with every input, weight, buffer and the output gradient moved by float32's
# unit roundoff at random: how far a result moves is its sensitivity to that rounding, and a
# result may be off by ROUNDING_STEPS times that where it exceeds DESIGN.md's bar (a float32
# computation rounds once per step along a chain of a few dozen steps).
UNIT_ROUNDOFF = 2.0 ** -24
PERTURBED_RUNS = 2
ROUNDING_STEPS = 32.0
# Where an activation's slope jumps. A pre-activation closer to one than float32 rounding
# reaches may land on its other side in any float32 computation, eager's included, and that
# element's gradient then differs by the whole jump (of order 1, far past any tolerance), so
# a draw is skipped where a float64 pre-activation lies within KINK_MARGIN times eager
# float32's error on that map of a kink: 3.4% of 1,372 blocks and 0.1% of 1,075 BatchNorm +
# activation draws (ad-hoc).
KINKS = {nn.ReLU: (0.0,), nn.ReLU6: (0.0, 6.0), nn.Hardswish: (-3.0, 3.0), nn.SiLU: (),
         nn.Hardsigmoid: (-3.0, 3.0), nn.Sigmoid: ()}
KINK_MARGIN = 16.0


def _randomize_convs(model: nn.Module, seed: int) -> None:
    """Convolution weights N(0, 1 / fan_in) and biases N(0, 0.3^2) from ``seed``: larger than
    the layers' default initialization, whose small SE biases leave ReLU outputs next to
    their kink, where float32 results hold little but rounding (see ROUNDING_STEPS)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen)
                                    * fan_in ** -0.5)
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.3)


def _pre_activations(model: nn.Module, x: torch.Tensor
                     ) -> list[tuple[tuple[float, ...], torch.Tensor]]:
    """Each activation's input in a training forward of a copy of ``model`` in ``x``'s dtype
    (layer by layer) on ``x``, with the points where that activation's slope jumps.
    Squeeze-excite modules apply theirs inside one op, so their reduce and expand outputs are
    computed here."""
    model = copy.deepcopy(model).to(x.dtype).train()
    seen: list[tuple[tuple[float, ...], torch.Tensor]] = []

    def activation_input(module: nn.Module, args: tuple) -> None:
        seen.append((KINKS[type(module)], args[0].detach()))

    def squeeze_excite_inputs(module: mobilefuse.nn.SqueezeExcite, args: tuple) -> None:
        reduce = module._modules[module.reduce_name]
        expand = module._modules[module.expand_name]
        act, gate = module._modules["activation"], module._modules["scale_activation"]
        squeezed = reduce(args[0].mean((2, 3), keepdim=True))
        seen.append((KINKS[type(act)], squeezed.detach()))
        seen.append((KINKS[type(gate)], expand(act(squeezed)).detach()))

    squeeze_excites = [m for m in model.modules() if isinstance(m, mobilefuse.nn.SqueezeExcite)]
    inside = {id(child) for m in squeeze_excites for child in m.children()}
    for module in squeeze_excites:
        module.register_forward_pre_hook(squeeze_excite_inputs)
    for module in model.modules():
        if type(module) in KINKS and id(module) not in inside:
            module.register_forward_pre_hook(activation_input)
    if isinstance(model, mobilefuse.nn.InvertedResidual):
        model.forward = model._forward_layers
    with torch.no_grad():
        model(x)
    return seen


def _clear_of_kinks(twin: nn.Module, x: torch.Tensor) -> bool:
    """Whether every float64 pre-activation of ``twin`` on ``x`` lies further than
    KINK_MARGIN times eager float32's error on its map from its activation's kinks."""
    exact = _pre_activations(twin, x.double())
    rounded = _pre_activations(twin, x.float())
    for (kinks, want), (_, got) in zip(exact, rounded, strict=True):
        if not kinks:
            continue
        margin = KINK_MARGIN * float((got.double() - want).abs().max())
        if min(float((want - kink).abs().min()) for kink in kinks) <= margin:
            return False
    return True


def _input(shape: tuple[int, ...], layout: torch.memory_format, seed: int) -> torch.Tensor:
    """A float32 input in ``layout``."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return x.contiguous(memory_format=layout)


def _perturb(t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``t`` with each value moved by up to float32's unit roundoff, relative."""
    noise = torch.rand(t.shape, generator=gen, dtype=torch.float64) * 2.0 - 1.0
    return t * (1.0 + UNIT_ROUNDOFF * noise)


def _perturbed(model: nn.Module, seed: int) -> nn.Module:
    """A copy of the float64 ``model`` with its parameters and buffers perturbed."""
    model = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.is_floating_point():
                t.copy_(_perturb(t, gen))
    return model


def _step(model: nn.Module, x: torch.Tensor, perturb: torch.Generator | None = None
          ) -> dict[str, torch.Tensor]:
    """One training step of ``model`` on ``x`` with a fixed output gradient (both perturbed
    from ``perturb`` where given): its output, the gradients of the input and of every
    parameter, and its buffers after the step."""
    inp = (x if perturb is None else _perturb(x, perturb)).detach().clone().requires_grad_()
    out = model(inp)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(7),
                       dtype=torch.float64)
    out.backward((grad if perturb is None else _perturb(grad, perturb)).to(out.dtype))
    results = {"output": out.detach(), "grad x": inp.grad}
    results.update({f"grad {name}": p.grad for name, p in model.named_parameters()})
    results.update(dict(model.named_buffers()))
    return results


def _assert_results(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor],
                    moved: list[dict[str, torch.Tensor]], what: str) -> None:
    """Each float32 result in ``got`` against the float64 ``want`` within DESIGN.md's bar
    (forward tolerance for outputs and buffers, backward for gradients, scaled by max |want|),
    or within ROUNDING_STEPS times how far the perturbed runs ``moved`` it, where larger."""
    assert got.keys() == want.keys(), what
    for name, value in got.items():
        expected = want[name]
        assert (value is None) == (expected is None), f"{name} {what}"
        if value is None:
            continue
        kind = torch.float32 if expected.is_floating_point() else expected.dtype
        assert value.dtype == kind, f"{name} {what}"
        if not value.is_floating_point():
            assert torch.equal(value, expected), f"{name} {what}"
            continue
        tol = BACKWARD_TOL if name.startswith("grad ") else FORWARD_TOL
        spread = max(float((run[name] - expected).abs().max()) if expected.numel() else 0.0
                     for run in moved)
        scale = ROUNDING_STEPS * spread / tol[torch.float32]
        if name.endswith("running_mean"):
            # A mean near zero cancels: its float32 error follows the values averaged, whose
            # size is the standard deviation (eager float32 misses max |mean| alike).
            scale = max(scale, float(want[name[:-len("mean")] + "var"].max()) ** 0.5)
        assert_close_to_reference(value, expected, tol[torch.float32], f"{name} {what}", scale)


def _assert_train_step(fast: nn.Module, twin: nn.Module, x: torch.Tensor,
                       layout: torch.memory_format, seed: int, what: str) -> list[nn.Module]:
    """One training step of float32 ``fast`` against its float64 ``twin``: the output (in
    ``layout``), the input's and every parameter's gradient, and the buffers after it. Returns
    the perturbed twins, stepped too."""
    perturbed = [_perturbed(twin, seed + i) for i in range(PERTURBED_RUNS)]
    got = _step(fast, x)
    assert got["output"].is_contiguous(memory_format=layout), what
    want = _step(twin, x.double())
    gen = torch.Generator().manual_seed(seed)
    moved = [_step(model, x.double(), gen) for model in perturbed]
    _assert_results(got, want, moved, what)
    return perturbed


def test_batch_norm_activation_training_matches_float64():
    @given(data=st.data())
    def prop(data: st.DataObject) -> None:
        n, c = data.draw(BATCH, "batch"), data.draw(CHANNELS, "channels")
        h, w = data.draw(SIZES, "height"), data.draw(SIZES, "width")
        assume(n * h * w >= MIN_VALUES_PER_CHANNEL)
        kernel = data.draw(st.sampled_from([1, 3]), "kernel")
        groups = data.draw(st.sampled_from([1, c]), "groups")
        assume(kernel * kernel * c // groups > 1)
        activation = data.draw(st.sampled_from(list(ACTIVATIONS)), "activation")
        momentum = data.draw(st.sampled_from([0.1, 0.9, None]), "momentum")
        affine = data.draw(st.booleans(), "affine")
        layout = data.draw(MODULE_LAYOUTS, "layout")
        seed = data.draw(st.integers(0, 2**31 - 1), "seed")
        layers = [nn.Conv2d(c, c, kernel, padding=kernel // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(c, momentum=momentum, affine=affine)]
        if activation is not None:
            layers.append(ACTIVATIONS[activation]())
        twin = nn.Sequential(*layers).double().train()
        _randomize_convs(twin, seed)
        randomize_norms(twin, seed)
        x = _input((n, c, h, w), layout, seed)
        assume(_clear_of_kinks(twin, x))
        fast = mobilefuse.accelerate(copy.deepcopy(twin).float())
        what = (f"{(n, c, h, w)} k={kernel} groups={groups} {activation} momentum={momentum} "
                f"affine={affine} {layout}")
        with counting_fused_batch_norm() as calls:
            _assert_train_step(fast, twin, x, layout, seed, what)
        assert calls[0] == 1, f"the fused training BatchNorm ran {calls[0]} times: {what}"
        EXAMPLES_CHECKED["BatchNorm + activation (training)", "cpu", "cpu"] += 1

    run_property(prop, "cpu", "cpu")


@st.composite
def _blocks(draw: st.DrawFn) -> tuple[dict, tuple[int, int, int, int]]:
    """An ``nn.InvertedResidual``'s arguments and an input shape with
    :data:`MIN_VALUES_PER_CHANNEL` or more values per channel at every BatchNorm."""
    c = draw(CHANNELS, "in channels")
    stride = draw(st.sampled_from([1, 2]), "stride")
    kwargs = {
        "in_channels": c, "out_channels": draw(st.sampled_from([c, 1, 8, 11]), "out channels"),
        "kernel_size": draw(st.sampled_from([3, 5, 7]), "kernel"), "stride": stride,
        "expand_ratio": draw(st.sampled_from([1.0, 2.0, 4.0, 2.5]), "expand ratio"),
        "activation": draw(st.sampled_from(["relu", "relu6", "hardswish", "silu"]), "act"),
        "se_channels": draw(st.none() | st.sampled_from([1, 2, 4]), "se channels"),
        "se_activation": draw(st.sampled_from(["relu", "silu"]), "se activation"),
        "se_gate": draw(st.sampled_from(["sigmoid", "hardsigmoid"]), "se gate"),
    }
    n, h, w = draw(BATCH, "batch"), draw(SIZES, "height"), draw(SIZES, "width")
    assume(n * ((h - 1) // stride + 1) * ((w - 1) // stride + 1) >= MIN_VALUES_PER_CHANNEL)
    return kwargs, (n, c, h, w)


def test_inverted_residual_module_matches_its_float64_layers():
    @given(data=st.data())
    def prop(data: st.DataObject) -> None:
        kwargs, shape = data.draw(_blocks(), "block")
        layout = data.draw(MODULE_LAYOUTS, "layout")
        seed = data.draw(st.integers(0, 2**31 - 1), "seed")
        twin = mobilefuse.nn.InvertedResidual(**kwargs).double()
        _randomize_convs(twin, seed)
        randomize_norms(twin, seed)
        x = _input(shape, layout, seed)
        assume(_clear_of_kinks(twin, x))
        fast = copy.deepcopy(twin).float()
        twin.forward = twin._forward_layers  # the layers one after the other, as eager runs
        what = f"{shape} {kwargs} {layout}"

        fast.train(), twin.train()
        assert fast._route(x) == "train", what
        perturbed = _assert_train_step(fast, twin, x, layout, seed, what)
        EXAMPLES_CHECKED["InvertedResidual (training)", "cpu", "cpu"] += 1

        # Inference on the running statistics the step left, twice: the second call replays
        # the plan the first one built.
        for model in (fast, twin, *perturbed):
            model.eval()
        with torch.no_grad():
            want = {"output": twin(x.double())}
            gen = torch.Generator().manual_seed(seed)
            moved = [{"output": model(_perturb(x.double(), gen))} for model in perturbed]
            for call in ("first", "replayed"):
                out = fast(x)
                assert out.is_contiguous(memory_format=layout), what
                _assert_results({"output": out}, want, moved, f"eval {call} {what}")
        EXAMPLES_CHECKED["InvertedResidual (inference)", "cpu", "cpu"] += 1

    run_property(prop, "cpu", "cpu")


def test_kink_guard_skips_a_pre_activation_float32_puts_across_relu():
    # A block whose depthwise pre-activation is 1.5e-7 in float64: float32 (eager too) takes
    # the other side of ReLU's kink and the input gradient is off by 7e-2 of max |ref|.
    kwargs = {"in_channels": 24, "out_channels": 24, "kernel_size": 3, "expand_ratio": 2.5,
              "activation": "relu"}
    shape = (3, 24, 17, 8)
    skipped = []
    for seed in (31120, 0):
        twin = mobilefuse.nn.InvertedResidual(**kwargs).double()
        _randomize_convs(twin, seed)
        randomize_norms(twin, seed)
        x = _input(shape, torch.contiguous_format, seed)
        skipped.append(not _clear_of_kinks(twin, x))
        # The check leaves the twin as it was: its running statistics are not updated.
        assert int(twin.bn2.num_batches_tracked) == 0
    assert skipped == [True, False]
