"""The machinery users train and serve with: torch.compile modes, torch.export, deepcopy,
pickle and state_dict round trips of accelerated models, and ops called from two threads."""

from __future__ import annotations

import copy
import io
import pickle
import threading

import pytest
import torch
from conftest import FORWARD_TOL, HAS_CUDA, assert_close_to_reference

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


def test_two_threads_calling_the_ops_get_correct_results():
    gen = torch.Generator().manual_seed(0)
    inputs = [(torch.randn(2, 16, 23, 19, generator=gen), torch.randn(16, 1, 3, 3, generator=gen))
              for _ in range(2)]
    expected = [reference.depthwise_conv2d(x.double(), w.double(), None, 1, 1, 1, "hardswish")
                for x, w in inputs]
    errors: list[str] = []

    def work(i: int) -> None:
        x, w = inputs[i]
        for _ in range(50):
            out = mobilefuse.ops.depthwise_conv2d(x, w, None, 1, 1, activation="hardswish")
            out = mobilefuse.ops.channel_shuffle(mobilefuse.ops.hardswish(out), 4)
            ref = reference.channel_shuffle(reference.hardswish(expected[i]), 4)
            err = float((out.double() - ref).abs().max() / ref.abs().max())
            if err > FORWARD_TOL[torch.float32] * 10:
                errors.append(f"thread {i}: scaled error {err:.2e}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
