"""The machinery users train and serve with: torch.compile modes, torch.export, deepcopy,
pickle and state_dict round trips of accelerated models, and ops called from two threads."""

from __future__ import annotations

import copy
import io
import pickle
import threading
from collections.abc import Callable

import pytest
import torch
from conftest import BACKWARD_TOL, FORWARD_TOL, HAS_CUDA, assert_close_to_reference

import mobilefuse
from mobilefuse import models, reference


def _accelerated(train: bool = False) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    model = models.create_model("mobilenet_v3_small", num_classes=10)
    with torch.no_grad():  # BatchNorm statistics away from their initial values
        model.train()(torch.randn(4, 3, 48, 48))
    model.train(train)
    return model, mobilefuse.accelerate(model)


@pytest.mark.parametrize("mode", [None, "max-autotune-no-cudagraphs"])
def test_torch_compile_modes(mode):
    model, fast = _accelerated()
    x = torch.randn(2, 3, 48, 48)
    compiled = torch.compile(fast, mode=mode)
    with torch.no_grad():
        out = compiled(x)
        expected = copy.deepcopy(model).double()(x.double())
    assert_close_to_reference(out, expected, FORWARD_TOL[torch.float32] * 10, f"compile {mode}")


@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
@pytest.mark.parametrize("mode", ["max-autotune", "reduce-overhead"])
def test_torch_compile_cuda_graph_modes(mode):
    model, fast = _accelerated()
    fast, x = fast.cuda(), torch.randn(2, 3, 48, 48, device="cuda")
    compiled = torch.compile(fast, mode=mode)
    with torch.no_grad():
        for _ in range(3):  # CUDA graphs record on a later call
            out = compiled(x)
        expected = copy.deepcopy(model).double()(x.double().cpu())
    assert_close_to_reference(out.cpu(), expected, FORWARD_TOL[torch.float32] * 10, mode)


def test_torch_export_of_an_accelerated_model(tmp_path):
    model, fast = _accelerated()
    x = torch.randn(2, 3, 48, 48)
    program = torch.export.export(fast, (x,))
    path = tmp_path / "model.pt2"
    torch.export.save(program, str(path))
    loaded = torch.export.load(str(path))
    targets = {str(n.target) for n in loaded.graph.nodes if n.op == "call_function"}
    assert any("mobilefuse" in t for t in targets), sorted(targets)
    with torch.no_grad():
        expected = copy.deepcopy(model).double()(x.double())
        for out in (program.module()(x), loaded.module()(x)):
            assert_close_to_reference(out, expected, FORWARD_TOL[torch.float32] * 10, "export")


@pytest.mark.parametrize("train", [False, True])
def test_deepcopy_pickle_and_state_dict_round_trips(train):
    model, fast = _accelerated(train)
    x = torch.randn(2, 3, 48, 48)
    torch.manual_seed(1)
    expected = fast(x)
    buffer = io.BytesIO()
    torch.save(fast.state_dict(), buffer)
    fresh = mobilefuse.accelerate(models.create_model("mobilenet_v3_small", num_classes=10))
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    fresh.train(train)
    assert fresh.state_dict().keys() == model.state_dict().keys()
    for copy_ in (copy.deepcopy(fast), pickle.loads(pickle.dumps(fast)), fresh):
        assert [type(m) for m in copy_.modules()] == [type(m) for m in fast.modules()]
        torch.manual_seed(1)
        assert torch.allclose(copy_(x), expected, rtol=1e-5, atol=1e-6)


def _thread_cases(seed: int) -> dict[str, tuple[Callable[..., tuple[torch.Tensor, ...]],
                                               tuple[torch.Tensor, ...]]]:
    """Per op: a function of the ops module (mobilefuse's or the reference) and float tensors
    returning the output and the gradients, and its float32 inputs; odd shapes, channels_last
    where the kernels have a separate path for it."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int, cl: bool = False) -> torch.Tensor:
        t = torch.randn(*shape, generator=gen)
        return t.contiguous(memory_format=torch.channels_last) if cl else t

    def with_grads(fn: Callable[..., torch.Tensor]) -> Callable[..., tuple[torch.Tensor, ...]]:
        def run(ops: object, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
            leaves = [a.detach().requires_grad_() for a in args]
            out = fn(ops, *leaves)
            grad = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
            return (out, *torch.autograd.grad(out, leaves, grad))
        return run

    c, r, e = 16, 4, 24
    return {
        "depthwise_conv2d": (with_grads(lambda ops, x, w, b: ops.depthwise_conv2d(
            x, w, b, 2, 1, 1, "silu")), (rand(2, c, 23, 19, cl=True), rand(c, 1, 3, 3),
                                                 rand(c))),
        "squeeze_excite": (with_grads(lambda ops, x, w1, b1, w2, b2: ops.squeeze_excite(
            x, w1, b1, w2, b2, "relu", "hardsigmoid")),
            (rand(2, c, 11, 13), rand(r, c) / 4, rand(r), rand(c, r) / 2, rand(c))),
        "inverted_residual": (with_grads(lambda ops, x, we, wd, wp, w1, w2: ops.inverted_residual(
            x, we / 4, None, wd / 3, None, wp / 5, None, (w1 / 5, None, w2 / 2, None),
            stride=1, padding=1, activation="hardswish", residual=True)),
            (rand(2, c, 13, 11, cl=True), rand(e, c, 1, 1), rand(e, 1, 3, 3),
             rand(c, e, 1, 1), rand(r, e), rand(e, r))),
        "hardswish + channel_shuffle": (lambda ops, x: (ops.channel_shuffle(
            ops.hardswish(x), 4),), (rand(2, c, 7, 9),)),
    }


def test_two_threads_calling_the_ops_get_correct_results():
    """Two threads run every op's forward and backward, and an accelerated model's inference,
    at once (a barrier starts each round together); each result matches float64."""
    cases = [_thread_cases(seed) for seed in range(2)]
    expected = [{name: fn(reference, *(a.double() for a in args))
                 for name, (fn, args) in per_thread.items()} for per_thread in cases]
    model, fast = _accelerated()
    images = [torch.randn(2, 3, 40, 40, generator=torch.Generator().manual_seed(i))
              .contiguous(memory_format=torch.channels_last) for i in range(2)]
    with torch.no_grad():
        model_expected = [copy.deepcopy(model).double()(x.double()) for x in images]
    rounds, barrier = 12, threading.Barrier(2, timeout=60)
    errors: list[str] = []
    checked = [0, 0]

    def work(i: int) -> None:
        try:
            for _ in range(rounds):
                barrier.wait()
                for name, (fn, args) in cases[i].items():
                    for k, (got, ref) in enumerate(zip(fn(mobilefuse.ops, *args),
                                                       expected[i][name], strict=True)):
                        err = float((got.detach().double() - ref.detach()).abs().max()
                                    / ref.detach().abs().max())
                        tol = (FORWARD_TOL if k == 0 else BACKWARD_TOL)[torch.float32] * 10
                        if err > tol:
                            errors.append(f"thread {i} {name} result {k}: {err:.2e}")
                        checked[i] += 1
                with torch.no_grad():
                    out = fast(images[i])
                err = float((out.double() - model_expected[i]).abs().max()
                            / model_expected[i].abs().max())
                if err > FORWARD_TOL[torch.float32] * 10:
                    errors.append(f"thread {i} accelerated model: {err:.2e}")
                checked[i] += 1
        except Exception as exc:  # noqa: BLE001  (reported by the main thread)
            errors.append(f"thread {i}: {exc!r}")
            barrier.abort()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    per_round = sum(len(r) for r in expected[0].values()) + 1
    assert checked == [rounds * per_round] * 2
