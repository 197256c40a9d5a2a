"""squeeze_excite on every backend: the value and all five gradients against the float64
reference over random configurations and layouts; gradcheck, opcheck, compile, saved tensors,
determinism, the module, bad inputs."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import (
    BACKEND_CASES,
    BACKWARD_TOL,
    DTYPES,
    FORWARD_TOL,
    HAS_CUDA,
    assert_close_to_reference,
    make_input,
    on_backend,
    poison_for,
    profiled_calls,
)
from torch import nn

import mobilefuse
from mobilefuse import reference

LAYOUTS = ("contiguous", "channels_last", "strided")
NAMES = ("x", "w_reduce", "b_reduce", "w_expand", "b_expand")


def _random_config(rng: random.Random, small: bool) -> dict:
    channels = rng.choice((1, 3, 8, 17, 24) if small else (1, 3, 8, 17, 40, 72, 240, 960))
    side = 7 if small else 29
    return {
        "shape": (rng.choice((1, 2, 3)), channels, rng.randint(1, side), rng.randint(1, side)),
        "reduced": rng.choice((1, max(1, channels // 4), max(1, channels // 16), 5)),
        "activation": rng.choice(("relu", "silu")),
        "gate": rng.choice(("hardsigmoid", "sigmoid")),
        "bias": rng.random() < 0.8, "conv_weights": rng.random() < 0.5,
        "dtype": rng.choice(DTYPES), "layout": rng.choice(LAYOUTS),
    }


CPU_CONFIGS = [_random_config(random.Random(100 + i), small=False) for i in range(60)]
INTERPRETER_CONFIGS = [_random_config(random.Random(500 + i), small=True) for i in range(16)]


def _inputs(cfg: dict, device: str, seed: int) -> list[torch.Tensor | None]:
    gen = torch.Generator().manual_seed(seed)
    dtype = cfg["dtype"]
    n, c = cfg["shape"][:2]
    r = cfg["reduced"]
    x = make_input(cfg["shape"], dtype, device, cfg["layout"], gen, scale=2.0)
    shape1, shape2 = ((r, c, 1, 1), (c, r, 1, 1)) if cfg["conv_weights"] else ((r, c), (c, r))
    w1 = torch.randn(shape1, generator=gen) / c ** 0.5
    w2 = torch.randn(shape2, generator=gen) / r ** 0.5 * 3
    b1 = torch.randn(r, generator=gen) if cfg["bias"] else None
    b2 = torch.randn(c, generator=gen) if cfg["bias"] else None
    leaves = [x] + [None if t is None else t.to(device, dtype) for t in (w1, b1, w2, b2)]
    return [None if t is None else t.requires_grad_() for t in leaves]


def _check(cfg: dict, backend: str, device: str, seed: int) -> None:
    inputs = _inputs(cfg, device, seed)
    x = inputs[0]
    poison_for(x)
    with on_backend(backend):
        out = mobilefuse.ops.squeeze_excite(*inputs, activation=cfg["activation"],
                                            gate=cfg["gate"])
    leaves64 = [None if t is None else t.detach().double().requires_grad_() for t in inputs]
    ref = reference.squeeze_excite(*leaves64, cfg["activation"], cfg["gate"])
    dtype = cfg["dtype"]
    assert out.dtype == dtype
    assert_close_to_reference(out, ref, FORWARD_TOL[dtype], f"forward {cfg}")
    if cfg["layout"] != "strided":
        fmt = torch.channels_last if cfg["layout"] == "channels_last" else torch.contiguous_format
        assert out.is_contiguous(memory_format=fmt)
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed + 1),
                       dtype=torch.float64)
    with on_backend(backend):
        out.backward(grad.to(device, dtype))
    ref.backward(grad)
    for name, ours, theirs in zip(NAMES, inputs, leaves64, strict=True):
        if ours is not None:
            assert_close_to_reference(ours.grad, theirs.grad, BACKWARD_TOL[dtype],
                                      f"grad {name} {cfg}")


@pytest.mark.parametrize("index", range(len(CPU_CONFIGS)))
def test_cpu_matches_reference(index):
    _check(CPU_CONFIGS[index], "cpu", "cpu", index)


@pytest.mark.parametrize("index", range(len(INTERPRETER_CONFIGS)))
def test_triton_interpreter_matches_reference(index):
    _check(INTERPRETER_CONFIGS[index], "triton", "cpu", index)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("index", range(len(CPU_CONFIGS)))
def test_gpu_matches_reference(backend, index):
    _check(CPU_CONFIGS[index], backend, "cuda", index)


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
@pytest.mark.parametrize("activation,gate", [("relu", "hardsigmoid"), ("silu", "sigmoid")])
def test_gradcheck_float64(backend, device, activation, gate):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 3, 5, generator=gen, dtype=torch.float64).to(device)
    tensors = [torch.randn(s, generator=gen, dtype=torch.float64).to(device)
               for s in ((3, 6), (3,), (6, 3), (6,))]
    inputs = [t.requires_grad_() for t in [x, *tensors]]
    with on_backend(backend):
        assert torch.autograd.gradcheck(
            lambda *a: mobilefuse.ops.squeeze_excite(*a, activation=activation, gate=gate),
            inputs)


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
def test_backward_saves_x_and_the_means_only(backend, device):
    x = torch.randn(2, 8, 5, 5, device=device, requires_grad=True)
    weights = [torch.randn(s, device=device, requires_grad=True) for s in ((2, 8), (2,), (8, 2),
                                                                            (8,))]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        with on_backend(backend):
            mobilefuse.ops.squeeze_excite(x, *weights)
    big = [t for t in saved if t.numel() >= x.numel()]
    assert len(big) == 1 and big[0].data_ptr() == x.data_ptr()
    assert sum(t.numel() for t in saved) == x.numel() + 2 * 8 + sum(w.numel() for w in weights)


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
def test_only_requested_gradients_and_determinism(backend, device):
    x = torch.randn(3, 16, 9, 7, device=device).contiguous(memory_format=torch.channels_last)
    w1, b1 = torch.randn(4, 16, device=device), torch.randn(4, device=device)
    w2, b2 = torch.randn(16, 4, device=device), torch.randn(16, device=device)
    grads = []
    for _ in range(2):
        leaves = [t.clone().requires_grad_() for t in (x, w1, b1, w2, b2)]
        with on_backend(backend):
            out = mobilefuse.ops.squeeze_excite(*leaves)
            out.backward(torch.ones_like(out))
        grads.append([t.grad for t in leaves])
    for first, second in zip(*grads, strict=True):
        assert torch.equal(first, second)
    only_x = x.clone().requires_grad_()
    with on_backend(backend):
        mobilefuse.ops.squeeze_excite(only_x, w1, b1, w2, b2).sum().backward()
    assert only_x.grad is not None and w1.grad is None


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
def test_empty_and_single_pixel(backend, device):
    w1, w2 = torch.randn(2, 4, device=device), torch.randn(4, 2, device=device)
    with on_backend(backend):
        assert mobilefuse.ops.squeeze_excite(torch.randn(0, 4, 3, 3, device=device), w1, None,
                                             w2, None).shape == (0, 4, 3, 3)
        x = torch.randn(3, 4, 1, 1, device=device)
        out = mobilefuse.ops.squeeze_excite(x, w1, None, w2, None)
    assert_close_to_reference(out, reference.squeeze_excite(x.double(), w1.double(), None,
                                                             w2.double(), None),
                              FORWARD_TOL[torch.float32], "1x1 spatial")


@pytest.mark.parametrize("index", range(len(CPU_CONFIGS)))
def test_no_grad_cpu_calls_run_one_inference_op(index, monkeypatch):
    # Nothing to record: no custom op, one C++ call (pool, excitation, gating), whose value
    # matches the float64 reference in every dtype and layout of the random configurations.
    cfg = CPU_CONFIGS[index]
    inputs = [None if t is None else t.detach() for t in _inputs(cfg, "cpu", index)]
    expected = reference.squeeze_excite(*(None if t is None else t.double() for t in inputs),
                                        cfg["activation"], cfg["gate"])

    def no_op(*_: object) -> None:
        raise AssertionError("the custom op ran")

    monkeypatch.setattr(mobilefuse.ops, "squeeze_excite_op", no_op)
    outs = []

    def run() -> None:
        with torch.no_grad(), on_backend("cpu"):
            outs.append(mobilefuse.ops.squeeze_excite(*inputs, activation=cfg["activation"],
                                                      gate=cfg["gate"]))

    calls = profiled_calls(run)
    assert calls["mobilefuse::se_inference"] == 1
    assert calls["mobilefuse::se_channel_sum"] == 0  # what the op's Python body calls
    out = outs[0]
    assert out.dtype == cfg["dtype"]
    assert_close_to_reference(out, expected, FORWARD_TOL[cfg["dtype"]], f"no grad {cfg}")
    if cfg["layout"] != "strided":
        fmt = torch.channels_last if cfg["layout"] == "channels_last" else torch.contiguous_format
        assert out.is_contiguous(memory_format=fmt)
    with pytest.raises(AssertionError, match="custom op ran"):
        mobilefuse.ops.squeeze_excite(inputs[0].clone().requires_grad_(), *inputs[1:],
                                      activation=cfg["activation"], gate=cfg["gate"])


@pytest.mark.parametrize(("n", "c", "r", "by_image"), [
    (2, 24, 6, True), (3, 1152, 48, True), (1, 960, 240, False), (40, 128, 120, False)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inference_op_excites_small_layers_by_image_and_large_ones_by_gemm(n, c, r, by_image,
                                                                           dtype):
    gen = torch.Generator().manual_seed(n + c)
    x = make_input((n, c, 3, 5), dtype, "cpu", "channels_last", gen)
    w1, b1 = torch.randn(r, c, generator=gen) / c ** 0.5, torch.randn(r, generator=gen)
    w2, b2 = torch.randn(c, r, generator=gen) / r ** 0.5, torch.randn(c, generator=gen)
    weights = [t.to(dtype) for t in (w1, b1, w2, b2)]
    outs = []
    calls = profiled_calls(lambda: outs.append(
        torch.ops.mobilefuse.se_inference(x, *weights, "relu", "hardsigmoid")))
    assert (calls["aten::linear"] == 0) == by_image
    expected = reference.squeeze_excite(*(t.double() for t in (x, *weights)), "relu",
                                        "hardsigmoid")
    assert_close_to_reference(outs[0], expected, FORWARD_TOL[dtype], f"{(n, c, r)}")


@pytest.mark.parametrize("shape", [(0, 8, 3, 3), (2, 1, 1, 1), (1, 3, 1, 13), (3, 5, 2, 0)])
def test_inference_op_edge_shapes(shape):
    # Empty batches and maps, one channel, one pixel: as the reference, without a gradient.
    gen = torch.Generator().manual_seed(3)
    c = shape[1]
    x = torch.randn(shape, generator=gen)
    w1, b1 = torch.randn(2, c, generator=gen), torch.randn(2, generator=gen)
    w2, b2 = torch.randn(c, 2, generator=gen), torch.randn(c, generator=gen)
    with torch.no_grad(), on_backend("cpu"):
        out = mobilefuse.ops.squeeze_excite(x, w1, b1, w2, b2, "silu", "hardsigmoid")
    expected = reference.squeeze_excite(*(t.double() for t in (x, w1, b1, w2, b2)), "silu",
                                        "hardsigmoid")
    assert out.shape == shape
    assert_close_to_reference(out, expected, FORWARD_TOL[torch.float32], f"shape {shape}")


@pytest.mark.parametrize(("change", "message"), [
    ({"w_reduce": torch.randn(4, 7)}, "w_reduce must have shape \\(R, C\\) with C=8"),
    ({"w_expand": torch.randn(8, 3)}, "w_expand must have shape \\(C, R\\) = \\(8, 4\\)"),
    ({"b_reduce": torch.randn(5)}, "b_reduce must have shape \\(R,\\) with R=4"),
    ({"b_expand": torch.randn(8, dtype=torch.float64)}, "must match x's dtype"),
    ({"x": torch.randn(2, 8, 5)}, "x must have rank 4"),
    ({"activation": "gelu"}, "activation must be relu or silu"),
    ({"gate": "tanh"}, "gate must be sigmoid or hardsigmoid"),
])
def test_inference_op_rejects_bad_arguments(change, message):
    # The op checks its own arguments when called directly (squeeze_excite checks first).
    args = {"x": torch.randn(2, 8, 5, 3), "w_reduce": torch.randn(4, 8),
            "b_reduce": torch.randn(4), "w_expand": torch.randn(8, 4), "b_expand": torch.randn(8),
            "activation": "relu", "gate": "sigmoid"} | change
    with pytest.raises(RuntimeError, match=message):
        torch.ops.mobilefuse.se_inference(*args.values())


@pytest.mark.parametrize("gate", ["sigmoid", "hardsigmoid"])
def test_gate_gradient_from_the_gated_output(gate):
    # The fused block's backward sums grad times the gated output x * s, not times x; the
    # pre-gate gradient recovered from it matches autograd's, also at and past hardsigmoid's
    # kinks (-3, 3) and where its gate is 0.
    from mobilefuse._squeeze_excite import gate_gradient_from_output

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 8, 5, 4, dtype=torch.float64, generator=gen)
    grad = torch.randn(x.shape, dtype=torch.float64, generator=gen)
    z = torch.tensor([-5.0, -3.0, -2.999, -1.0, 0.0, 2.5, 3.0, 4.0], dtype=torch.float64)
    z = z.repeat(3, 1) + torch.tensor([[0.0], [1e-3], [-0.4]], dtype=torch.float64)
    if gate == "sigmoid":
        s = torch.sigmoid(z)
        slope = s * (1 - s)
    else:
        # Written out: autograd's float64 hardsigmoid slope is 1/6 rounded to float32.
        s = torch.nn.functional.hardsigmoid(z)
        slope = ((z > -3) & (z < 3)).double() / 6
    expected = (grad * x).sum((2, 3)) * slope
    dot = (grad * x * s[:, :, None, None]).sum((2, 3))
    got = gate_gradient_from_output(dot, z, s, gate)
    assert_close_to_reference(got, expected, 1e-12, gate)


def _torchvision_like(c: int, r: int) -> nn.Module:
    """torchvision's SqueezeExcitation written out, to compare the module against."""

    class Reference(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc1, self.fc2 = nn.Conv2d(c, r, 1), nn.Conv2d(r, c, 1)
            self.activation, self.scale_activation = nn.ReLU(), nn.Hardsigmoid()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = self.fc2(self.activation(self.fc1(self.avgpool(x))))
            return x * self.scale_activation(s)

    return Reference()


def test_module_matches_the_torchvision_layout():
    torch.manual_seed(0)
    ours = mobilefuse.nn.SqueezeExcite(12, 4)
    theirs = _torchvision_like(12, 4)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 12, 6, 5)
    assert_close_to_reference(ours(x), theirs.double()(x.double()), FORWARD_TOL[torch.float32],
                              "module")
    assert "activation='relu', gate='hardsigmoid'" in repr(ours)


@pytest.mark.parametrize("kwargs,match", [
    (dict(input_channels=0, squeeze_channels=2), "input_channels must be a positive int"),
    (dict(input_channels=4, squeeze_channels=2.0), "squeeze_channels must be a positive int"),
    (dict(input_channels=4, squeeze_channels=2, activation="gelu"), "activation must be"),
    (dict(input_channels=4, squeeze_channels=2, gate="tanh"), "gate must be"),
])
def test_module_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mobilefuse.nn.SqueezeExcite(**kwargs)


def _good() -> list:
    return [torch.randn(2, 8, 4, 4), torch.randn(2, 8), torch.randn(2), torch.randn(8, 2),
            torch.randn(8)]


@pytest.mark.parametrize("change,error,match", [
    ({0: torch.randn(2, 8, 4)}, ValueError, "x must have rank 4"),
    ({0: torch.randint(0, 3, (2, 8, 4, 4))}, TypeError, "x must have a floating dtype"),
    ({0: [1.0]}, TypeError, "x must be a torch.Tensor"),
    ({1: torch.randn(2, 9)}, ValueError, r"w_reduce must have shape \(R, 8\)"),
    ({1: torch.randn(2, 8, 3, 3)}, ValueError, "w_reduce must have shape"),
    ({3: torch.randn(8, 3)}, ValueError, r"w_expand must have shape \(8, 2\)"),
    ({2: torch.randn(3)}, ValueError, r"b_reduce must have shape \(2,\)"),
    ({4: torch.randn(7)}, ValueError, r"b_expand must have shape \(8,\)"),
    ({1: torch.randn(2, 8, dtype=torch.float64)}, TypeError, "w_reduce must have x's dtype"),
    ({4: torch.randn(8, device="meta")}, ValueError, "one device"),
], ids=["rank", "int-dtype", "not-tensor", "reduce-channels", "reduce-kernel", "expand-shape",
        "b-reduce", "b-expand", "mixed-dtype", "mixed-device"])
def test_bad_inputs(change, error, match):
    args = _good()
    for index, value in change.items():
        args[index] = value
    with pytest.raises(error, match=match):
        mobilefuse.ops.squeeze_excite(*args)


@pytest.mark.parametrize("kwargs,match", [(dict(activation="gelu"), "activation must be one of"),
                                          (dict(gate="tanh"), "gate must be one of")])
def test_unknown_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mobilefuse.ops.squeeze_excite(*_good(), **kwargs)


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
def test_compiles_fullgraph_with_the_op_in_the_graph(backend, device):
    graphs: list[torch.fx.GraphModule] = []

    def capture(gm: torch.fx.GraphModule, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    x = torch.randn(2, 8, 5, 7, device=device, requires_grad=True)
    w1, w2 = torch.randn(2, 8, device=device), torch.randn(8, 2, device=device)
    fn = torch.compile(lambda t: mobilefuse.ops.squeeze_excite(t, w1, None, w2, None) * 2,
                       backend=capture, fullgraph=True)
    with on_backend(backend):
        out = fn(x)
        out.sum().backward()
    assert len(graphs) == 1
    targets = {str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"}
    assert "mobilefuse.squeeze_excite.default" in targets
    expected = reference.squeeze_excite(x.detach().double(), w1.double(), None, w2.double(),
                                        None) * 2
    assert_close_to_reference(out, expected, FORWARD_TOL[torch.float32], "compiled")
    assert x.grad is not None


@pytest.mark.parametrize("act_layer,gate_layer,reason", [
    (nn.GELU, nn.Sigmoid, "activation GELU is not ReLU or SiLU"),
    (nn.ReLU, nn.Tanh, "gate Tanh is not Hardsigmoid or Sigmoid"),
])
def test_accelerate_keeps_squeeze_excite_it_cannot_fuse_and_says_why(act_layer, gate_layer,
                                                                       reason):
    from mobilefuse.models.layers import SqueezeExcitation

    model = nn.Sequential(nn.Conv2d(3, 8, 1), SqueezeExcitation(8, 2, act_layer, gate_layer))
    fast = mobilefuse.accelerate(model.eval())
    assert type(fast[1]) is SqueezeExcitation
    rows = {row.path: row for row in mobilefuse.accelerate_report(fast, show=False).rows}
    assert rows["1"].status == "kept" and reason in rows["1"].detail, rows["1"]
    x = torch.randn(2, 3, 5, 4)
    with torch.no_grad():
        assert torch.equal(fast(x), model(x))
