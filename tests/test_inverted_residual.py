"""inverted_residual and nn.InvertedResidual: the functional block against the float64
reference (value and every gradient, random configurations, layouts, dtypes, backends), the
module in eval and training against its layers run one by one, the memory it keeps for the
backward, accelerate() on torchvision/timm/zoo blocks, compile, bad inputs."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from conftest import (
    BACKWARD_TOL,
    DTYPES,
    FORWARD_TOL,
    HAS_CUDA,
    assert_close_to_reference,
    make_input,
    on_backend,
    randomize_norms,
)
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from vision_models import timm_or_skip, torchvision_or_skip

import mobilefuse
from mobilefuse import reference
from mobilefuse.models import create_model

ACTS = ("relu", "relu6", "hardswish", "silu")


def _random_config(rng: random.Random, small: bool) -> dict:
    c = rng.choice((3, 8, 16) if small else (3, 8, 16, 24))
    stride = rng.choice((1, 2))
    out = c if rng.random() < 0.5 else rng.choice((5, 12))
    cfg = {
        "shape": (rng.choice((1, 2, 3)), c, rng.randint(5, 9 if small else 15),
                  rng.randint(5, 9 if small else 15)),
        "mid": rng.choice((c, 2 * c + 1, 4 * c)), "out": out, "kernel": rng.choice((3, 5, 7)),
        "stride": stride, "activation": rng.choice(ACTS), "se": rng.random() < 0.6,
        "se_activation": rng.choice(("relu", "silu")),
        "se_gate": rng.choice(("hardsigmoid", "sigmoid")), "bias": rng.random() < 0.7,
        "project_activation": rng.choice((None, None, "relu")),
        "dtype": rng.choice(DTYPES), "layout": rng.choice(("contiguous", "channels_last")),
    }
    if cfg["dtype"] in (torch.float16, torch.bfloat16):
        # Chained in low precision, a value next to a kink (ReLU's 0, hard-swish's +-3) lands
        # on the other side of it often enough to flip a whole gradient path: smooth
        # activations there; the kinks are covered in float32/float64 and per op.
        cfg.update(activation="silu", project_activation=None, se_gate="sigmoid")
    return cfg


CPU_CONFIGS = [_random_config(random.Random(700 + i), small=False) for i in range(30)]
INTERPRETER_CONFIGS = [_random_config(random.Random(900 + i), small=True) for i in range(6)]


def _inputs(cfg: dict, device: str, seed: int) -> tuple[torch.Tensor, list, tuple | None]:
    gen = torch.Generator().manual_seed(seed)
    n, c = cfg["shape"][:2]
    mid, out, k = cfg["mid"], cfg["out"], cfg["kernel"]

    def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(shape, generator=gen) * scale).to(device, cfg["dtype"])

    x = make_input(cfg["shape"], cfg["dtype"], device, cfg["layout"], gen, scale=1.0)
    bias = cfg["bias"]
    expand = mid != c
    weights = [rand(mid, c, scale=c ** -0.5) if expand else None,
               rand(mid, scale=0.3) if expand and bias else None,
               rand(mid, 1, k, k, scale=1 / k), rand(mid, scale=0.3) if bias else None,
               rand(out, mid, 1, 1, scale=mid ** -0.5), rand(out, scale=0.3) if bias else None]
    se = None
    if cfg["se"]:
        r = max(1, mid // 4)
        se = (rand(r, mid, scale=mid ** -0.5), rand(r, scale=0.3), rand(mid, r, scale=r ** -0.5),
              rand(mid, scale=0.3))
    return x, weights, se


def _check(cfg: dict, backend: str, device: str, seed: int) -> None:
    x, weights, se = _inputs(cfg, device, seed)
    leaves = [t for t in [x, *weights, *(se or ())] if t is not None]
    for t in leaves:
        t.requires_grad_()
    options = {"stride": cfg["stride"], "activation": cfg["activation"],
               "se_activation": cfg["se_activation"], "se_gate": cfg["se_gate"],
               "project_activation": cfg["project_activation"]}
    with on_backend(backend):
        out = mobilefuse.ops.inverted_residual(x, *weights, se, **options)
    double = {id(t): t.detach().double().requires_grad_() for t in leaves}

    def d(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else double[id(t)]

    k = cfg["kernel"]
    residual = cfg["stride"] == 1 and cfg["out"] == cfg["shape"][1]
    ref = reference.inverted_residual(
        d(x), *(d(w) for w in weights), None if se is None else tuple(d(t) for t in se),
        cfg["stride"], k // 2, 1, cfg["activation"], cfg["se_activation"], cfg["se_gate"],
        cfg["project_activation"], residual)
    dtype = cfg["dtype"]
    assert out.dtype == dtype
    # A block chains five ops, each rounding its output to the dtype: in float16/bfloat16 the
    # roundings add up, so allow four times the one-op tolerance there.
    slack = 1 if dtype in (torch.float32, torch.float64) else 4
    assert_close_to_reference(out, ref, FORWARD_TOL[dtype] * slack, f"forward {cfg}")
    fmt = torch.channels_last if cfg["layout"] == "channels_last" else torch.contiguous_format
    assert out.is_contiguous(memory_format=fmt)
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed + 1),
                       dtype=torch.float64)
    with on_backend(backend):
        out.backward(grad.to(device, dtype))
    ref.backward(grad)
    for i, t in enumerate(leaves):
        assert_close_to_reference(t.grad, double[id(t)].grad, BACKWARD_TOL[dtype] * slack,
                                  f"grad of input {i} {cfg}")
    with torch.no_grad(), on_backend(backend):  # the in-place path
        again = mobilefuse.ops.inverted_residual(x, *weights, se, **options)
    assert_close_to_reference(again, ref, FORWARD_TOL[dtype] * slack, f"no-grad {cfg}")


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


def _bad_call(**changes: object) -> None:
    x = torch.randn(2, 8, 6, 6)
    args = {"x": x, "expand_weight": torch.randn(16, 8), "expand_bias": None,
            "dw_weight": torch.randn(16, 1, 3, 3), "dw_bias": None,
            "project_weight": torch.randn(8, 16), "project_bias": None, "se_weights": None}
    args.update(changes)
    mobilefuse.ops.inverted_residual(**args)


@pytest.mark.parametrize("changes,error,match", [
    ({"x": torch.randn(2, 8, 6)}, ValueError, "x must have rank 4"),
    ({"x": torch.randn(2, 8, 6, 6, dtype=torch.float64)}, TypeError, "must have x's dtype"),
    ({"x": torch.zeros(2, 8, 6, 6, dtype=torch.int32)}, TypeError, "x must have a floating"),
    ({"expand_weight": torch.randn(16, 7)}, ValueError, "expand_weight must have shape"),
    ({"expand_weight": None, "expand_bias": torch.randn(16)}, ValueError, "expand_bias is given"),
    ({"dw_weight": torch.randn(12, 1, 3, 3)}, ValueError, "dw_weight must have shape"),
    ({"project_weight": torch.randn(8, 15)}, ValueError, "project_weight must have shape"),
    ({"dw_bias": torch.randn(15)}, ValueError, "dw_bias must have shape"),
    ({"se_weights": torch.randn(4, 16)}, TypeError, "se_weights must be None or a tuple"),
    ({"se_weights": (torch.randn(4, 15), None, torch.randn(16, 4), None)}, ValueError,
     "w_reduce must have shape"),
    ({"activation": "gelu"}, ValueError, "activation must be one of"),
    ({"project_activation": "tanh"}, ValueError, "project_activation must be one of"),
    ({"se_weights": (torch.randn(4, 16), None, torch.randn(16, 4), None), "se_gate": "relu"},
     ValueError, "gate must be one of"),
    ({"stride": 0}, ValueError, "stride must be >= 1"),
    ({"stride": 2, "residual": True}, ValueError, "residual=True needs"),
    ({"residual": "yes"}, TypeError, "residual must be None, True or False"),
    ({"dw_weight": torch.randn(16, 1, 9, 9), "padding": 0}, ValueError, "larger than"),
])
def test_bad_inputs_name_the_argument(changes, error, match):
    with pytest.raises(error, match=match):
        _bad_call(**changes)


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _compare_train_step(fused: nn.Module, plain: nn.Module, x: torch.Tensor, tol: float) -> None:
    """Same output, input gradient, parameter gradients and running statistics."""
    xs = [x.detach().clone().requires_grad_() for _ in range(2)]
    outs = []
    for model, xi in zip((fused, plain), xs, strict=True):
        torch.manual_seed(5)  # the same stochastic-depth draws
        out = model(xi)
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out))
        outs.append(out)
    assert_close_to_reference(outs[0], outs[1], tol, "training output")
    assert_close_to_reference(xs[0].grad, xs[1].grad, tol, "input gradient")
    g_fused, g_plain = _grads(fused), _grads(plain)
    assert g_fused.keys() == g_plain.keys()
    scale = max(g.abs().max().item() for g in g_plain.values())
    for name, g in g_plain.items():
        err = (g_fused[name] - g).abs().max().item() / scale
        assert err <= tol, f"grad {name}: {err:.2e}"
    for (name, a), b in zip(fused.state_dict().items(), plain.state_dict().values(), strict=True):
        assert torch.allclose(a.double(), b.double(), rtol=0, atol=tol), name


def _module(seed: int, **kwargs: object) -> mobilefuse.nn.InvertedResidual:
    torch.manual_seed(seed)
    block = mobilefuse.nn.InvertedResidual(**kwargs).double()
    randomize_norms(block, seed)
    return block


MODULE_CASES = [
    {"in_channels": 8, "out_channels": 8, "kernel_size": 3, "activation": "relu6"},
    {"in_channels": 8, "out_channels": 12, "kernel_size": 5, "stride": 2,
     "activation": "hardswish", "se_channels": 4},
    {"in_channels": 16, "out_channels": 16, "kernel_size": 5, "expand_ratio": 4.0,
     "activation": "silu", "se_channels": 4, "se_activation": "silu", "se_gate": "sigmoid",
     "drop_path": 0.5},
    {"in_channels": 6, "out_channels": 6, "kernel_size": 7, "expand_ratio": 1.0,
     "activation": "relu"},
]


@pytest.mark.parametrize("kwargs", MODULE_CASES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_module_matches_its_layers(kwargs, layout):
    block = _module(1, **kwargs)
    plain = copy.deepcopy(block)
    plain.forward = plain._forward_layers  # the layers one after the other, as eager runs them
    x = make_input((3, kwargs["in_channels"], 11, 9), torch.float64, "cpu", layout)
    block.eval(), plain.eval()
    with torch.no_grad():
        assert_close_to_reference(block(x), plain(x), 1e-12, "eval")
    block.train(), plain.train()
    _compare_train_step(block, plain, x, 1e-12)
    assert [n for n, _ in block.named_parameters()] == [n for n, _ in plain.named_parameters()]


@pytest.mark.parametrize("frozen", [("se.",), ("bn2.", "conv_pwl."), ("se.fc1.", "bn1."),
                                    ("conv_pw.", "conv_dw.", "bn3.")])
def test_training_with_frozen_parameters(frozen):
    # Fine-tuning: frozen parameters get no gradient, the others the layers' gradients.
    block = _module(6, in_channels=8, out_channels=8, kernel_size=3, activation="hardswish",
                    se_channels=4)
    for name, param in block.named_parameters():
        param.requires_grad_(not name.startswith(frozen))
    plain = copy.deepcopy(block)
    plain.forward = plain._forward_layers
    block.train(), plain.train()
    x = make_input((2, 8, 9, 7), torch.float64, "cpu", "channels_last")
    assert block._route(x) == "train"  # the fused training path, not the layers
    _compare_train_step(block, plain, x, 1e-12)
    assert not any(p.grad is not None for n, p in block.named_parameters()
                   if n.startswith(frozen))


def test_module_gradcheck_in_training():
    block = _module(2, in_channels=4, out_channels=4, kernel_size=3, activation="hardswish",
                    se_channels=2).train()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)

    def run(inp: torch.Tensor) -> torch.Tensor:
        return copy.deepcopy(block)(inp)  # fresh running statistics each call

    assert torch.autograd.gradcheck(run, (x,))


def _expanded_saved(model: nn.Module, x: torch.Tensor, mid: int) -> list[torch.Tensor]:
    saved: dict[int, torch.Tensor] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 4 and t.shape[0] == x.shape[0] and t.shape[1] == mid:
            saved[t.untyped_storage().data_ptr()] = t
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return list(saved.values())


def test_training_keeps_two_expanded_tensors():
    block = _module(3, in_channels=8, out_channels=8, kernel_size=3, activation="hardswish",
                    se_channels=4).float().train()
    plain = copy.deepcopy(block)
    plain.forward = plain._forward_layers
    x = torch.randn(2, 8, 10, 10, requires_grad=True)
    ours = _expanded_saved(block, x, 48)
    eager = _expanded_saved(plain, x, 48)
    assert len(ours) == 2 and len(eager) >= 5, (len(ours), len(eager))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_training_backward_reuses_the_excitation(dtype):
    # The SE's (N, C) excitation is kept from the forward: the backward runs no linear layer
    # (its GEMMs are the excitation's gradients only) and matches the layers' gradients.
    block = _module(5, in_channels=8, out_channels=8, kernel_size=3, activation="hardswish",
                    se_channels=4).to(dtype).train()
    plain = copy.deepcopy(block)
    plain.forward = plain._forward_layers
    x = torch.randn(3, 8, 9, 7, dtype=dtype)
    grad = torch.randn(3, 8, 9, 7, dtype=dtype)
    assert block._route(x) == "train"

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.names: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    out = block(x.requires_grad_())
    with Count() as backward_ops:
        out.backward(grad)
    assert backward_ops.names and not {"addmm", "linear"} & set(backward_ops.names), \
        backward_ops.names
    xr = x.detach().clone().requires_grad_()
    plain(xr).backward(grad)
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {}
    torch.testing.assert_close(x.grad, xr.grad, **tol)
    for (name, a), (_, b) in zip(block.named_parameters(), plain.named_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, **tol, msg=name)


def test_training_on_one_value_per_channel_raises_as_eager():
    block = _module(4, in_channels=8, out_channels=8, kernel_size=3, activation="relu6").train()
    plain = copy.deepcopy(block)
    plain.forward = plain._forward_layers
    x = torch.randn(1, 8, 1, 1, dtype=torch.float64)
    assert block._route(x) != "layers"  # the fused training function, not the layers
    state = {k: v.clone() for k, v in block.state_dict().items()}
    for model in (plain, block):
        with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
            model(x)
    for key, value in block.state_dict().items():  # no NaN running variance left behind
        assert torch.equal(value, state[key]), key


def test_frozen_batchnorm_runs_the_layers():
    block = _module(4, in_channels=8, out_channels=8, kernel_size=3, activation="relu6").train()
    block.bn2.eval()  # a frozen norm: mixed modes run layer by layer, exactly as before
    plain = copy.deepcopy(block)
    plain.forward = plain._forward_layers
    x = torch.randn(2, 8, 7, 7, dtype=torch.float64)
    assert block._route(x) == "layers"
    _compare_train_step(block, plain, x, 1e-12)


def test_compile_fullgraph_eval_and_train():
    block = _module(5, in_channels=8, out_channels=8, kernel_size=3, activation="hardswish",
                    se_channels=4).float()
    x = torch.randn(2, 8, 9, 9)
    for train in (False, True):
        block.train(train)
        torch._dynamo.reset()
        compiled = torch.compile(block, fullgraph=True)
        with torch.no_grad():
            expected = copy.deepcopy(block)(x)
            got = compiled(x)
        assert_close_to_reference(got, expected, 1e-5, f"compiled train={train}")


def test_module_rejects_bad_arguments():
    cls = mobilefuse.nn.InvertedResidual
    with pytest.raises(ValueError, match="in_channels must be a positive int"):
        cls(0, 8)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        cls(8, 8, kernel_size=4)
    with pytest.raises(ValueError, match="activation must be one of"):
        cls(8, 8, activation="gelu")
    with pytest.raises(ValueError, match="residual=True needs"):
        cls(8, 16, residual=True)
    with pytest.raises(ValueError, match=r"drop_path must be in \[0, 1\)"):
        cls(8, 8, drop_path=1.0)


def _vision_models() -> list[tuple[str, nn.Module]]:
    found = [("zoo mobilenet_v2", create_model("mobilenet_v2")),
             ("zoo efficientnet_b0", create_model("efficientnet_b0", stochastic_depth_prob=0.2))]
    tv = torchvision_or_skip()
    found += [("tv mobilenet_v2", tv.models.mobilenet_v2()),
              ("tv mobilenet_v3_small", tv.models.mobilenet_v3_small()),
              ("tv efficientnet_b0", tv.models.efficientnet_b0(stochastic_depth_prob=0.3))]
    timm = timm_or_skip()
    found += [("timm efficientnet_b0", timm.create_model("efficientnet_b0", drop_path_rate=0.2)),
              ("timm mobilenetv3_small_100", timm.create_model("mobilenetv3_small_100"))]
    return found


@pytest.mark.parametrize("index", range(7))
def test_accelerate_swaps_every_block_of_torchvision_timm_and_zoo(index):
    name, model = _vision_models()[index]
    model = model.double()
    randomize_norms(model)
    fast = mobilefuse.accelerate(model)
    blocks = [m for m in fast.modules() if isinstance(m, mobilefuse.nn.InvertedResidual)]
    expected = {"zoo mobilenet_v2": 17, "zoo efficientnet_b0": 16, "tv mobilenet_v2": 17,
                "tv mobilenet_v3_small": 11, "tv efficientnet_b0": 16,
                "timm efficientnet_b0": 16, "timm mobilenetv3_small_100": 11}[name]
    assert len(blocks) == expected
    assert list(fast.state_dict()) == list(model.state_dict())
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last)
    model.eval(), fast.eval()
    with torch.no_grad():
        assert_close_to_reference(fast(x), model(x), 1e-12, f"{name} eval")
    model.train(), fast.train()
    # Whole-network training gradients amplify rounding (BatchNorm on 2x2 maps, kinks):
    # float64 end to end, as for the other whole-model checks.
    _compare_train_step(fast, model, x, 1e-8)
    restored = mobilefuse.restore(fast)
    assert not any(isinstance(m, mobilefuse.nn.InvertedResidual) for m in restored.modules())
    assert [type(m) for m in restored.modules()] == [type(m) for m in model.modules()]


def test_block_with_a_hook_is_left_alone():
    model = create_model("mobilenet_v2")
    model.features[3].conv[1][0].register_forward_hook(lambda *a: None)
    fast = mobilefuse.accelerate(model)
    assert not isinstance(fast.features[3], mobilefuse.nn.InvertedResidual)
    assert isinstance(fast.features[4], mobilefuse.nn.InvertedResidual)
    report = mobilefuse.accelerate_report(model, show=False)
    rows = {row.path: row for row in report.rows}
    assert "hooks" in rows["features.3"].detail
    assert rows["features.4"].status == "would swap"


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_module_training_in_float32(layout):
    block = _module(6, in_channels=16, out_channels=16, kernel_size=5, activation="silu",
                    se_channels=4, se_activation="silu", se_gate="sigmoid").float().train()
    plain = copy.deepcopy(block)
    plain.forward = plain._forward_layers
    x = make_input((4, 16, 13, 11), torch.float32, "cpu", layout, scale=1.0)
    _compare_train_step(block, plain, x, BACKWARD_TOL[torch.float32])
