"""accelerate(): swaps what it serves, folds eval-mode BatchNorm/activation into depthwise convs,
keeps state, hooks and modes, leaves the rest alone, and restore() undoes it."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from conftest import BACKWARD_TOL, FORWARD_TOL, assert_close_to_reference
from torch import nn

import mobilefuse
from mobilefuse._fusion import FoldedBatchNorm2d, FoldedConv2d, FusedActivation


class ConvNormAct(nn.Sequential):
    """Shaped like torchvision's Conv2dNormActivation: a Sequential subclass."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, groups: int,
                 act: type[nn.Module]) -> None:
        super().__init__(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), act())


class Block(nn.Module):
    """An inverted residual block with its own forward (the residual add)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int,
                 act: type[nn.Module]) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.conv = nn.Sequential(ConvNormAct(cin, hidden, 1, 1, 1, act),
                                  ConvNormAct(hidden, hidden, k, stride, hidden, act),
                                  nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.use_res else y


def randomized(model: nn.Module) -> nn.Module:
    """``model`` with BatchNorm statistics and affine parameters away from (0, 1)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()
    return model


def tiny_net(seed: int = 0) -> nn.Module:
    """A small MobileNet-shaped model with random BatchNorm statistics."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        ConvNormAct(3, 8, 3, 2, 1, nn.Hardswish),
        Block(8, 8, 3, 1, 3, nn.ReLU6),
        Block(8, 12, 5, 2, 4, nn.Hardswish),
        Block(12, 12, 7, 1, 2, nn.SiLU),
        nn.Sequential(nn.Conv2d(12, 12, 3, padding=1, groups=12), nn.ReLU()),
        nn.ChannelShuffle(3),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5), nn.Hardsigmoid())
    return randomized(model)


def assert_grads_close(model: nn.Module, reference: nn.Module) -> None:
    """Every parameter gradient against the float64 model's, scaled by the largest of them all
    (a BatchNorm in training mode can make a gradient exactly zero in exact arithmetic, which
    leaves rounding noise only, so a per-tensor scale would be meaningless there)."""
    ours, theirs = dict(model.named_parameters()), dict(reference.named_parameters())
    assert ours.keys() == theirs.keys()
    assert all(p.grad is not None for p in ours.values())
    flat = torch.cat([p.grad.flatten() for p in ours.values()])
    flat_ref = torch.cat([theirs[name].grad.flatten() for name in ours])
    assert_close_to_reference(flat, flat_ref, BACKWARD_TOL[torch.float32], "parameter gradients")


def assert_step_matches(fast: nn.Module, reference: nn.Module, x: torch.Tensor) -> None:
    """Output and parameter gradients of one step against the float64 model; dropout and
    stochastic depth draw the same masks in both from the same seed."""
    torch.manual_seed(1)
    out = fast(x)
    torch.manual_seed(1)
    expected = reference(x.double())
    assert_close_to_reference(out, expected, FORWARD_TOL[torch.float32], "train output")
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad.double())
    assert_grads_close(fast, reference)


def depthwise_convs(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]


def test_eval_swaps_and_folds_every_conv_batchnorm_run():
    fast = mobilefuse.accelerate(tiny_net().eval())
    convs = depthwise_convs(fast)
    assert len(convs) == 4 and all(type(c) is mobilefuse.nn.DepthwiseConv2d for c in convs)
    assert [c.fusion.describe() for c in convs] == [
        "batchnorm+relu6 (eval)", "batchnorm+hardswish (eval)", "batchnorm+silu (eval)", "relu"]
    # Dense convolutions fold their BatchNorm (and activation) too, on the vendor kernel.
    dense = [m for m in fast.modules() if isinstance(m, FoldedConv2d)]
    assert len(dense) == 7 and all(m.groups == 1 for m in dense)
    assert sum(isinstance(m, FoldedBatchNorm2d) for m in fast.modules()) == 10
    assert sum(isinstance(m, FusedActivation) for m in fast.modules()) == 8
    assert type(fast[1].conv[0][1]) is FoldedBatchNorm2d and type(fast[0][2]) is FusedActivation
    assert type(fast[5]) is mobilefuse.nn.ChannelShuffle
    assert type(fast[9]) is mobilefuse.nn.HardSigmoid
    assert type(fast[8]) is nn.Linear
    assert "fused='batchnorm+relu6 (eval)'" in repr(fast)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_eval_output_matches_float64_model(dtype, channels_last):
    model = tiny_net().eval()
    reference = copy.deepcopy(model).double()
    fast = mobilefuse.accelerate(model.to(dtype))
    x = torch.randn(3, 3, 29, 23)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = fast(x.to(dtype))
        assert_close_to_reference(out, reference(x.double()), FORWARD_TOL[dtype], "eval output")
        # The cached folded weights are reused: a second call gives the same bits.
        assert torch.equal(fast(x.to(dtype)), out)


def test_train_mode_matches_outputs_gradients_and_running_stats():
    model = tiny_net().train()
    reference = copy.deepcopy(model).double()
    fast = mobilefuse.accelerate(model)
    x = torch.randn(4, 3, 21, 19)
    assert_step_matches(fast, reference, x)
    buffers = dict(reference.named_buffers())
    for name, b in fast.named_buffers():
        if b.is_floating_point():
            assert_close_to_reference(b, buffers[name], FORWARD_TOL[torch.float32], name)
        else:
            assert torch.equal(b, buffers[name]), name


def test_frozen_batchnorm_in_a_training_model_is_folded_and_differentiable():
    model = tiny_net().train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    reference = copy.deepcopy(model).double()
    fast = mobilefuse.accelerate(model)
    x = torch.randn(2, 3, 17, 17)
    out, expected = fast(x), reference(x.double())
    assert_close_to_reference(out, expected, FORWARD_TOL[torch.float32], "output")
    out.sum().backward()
    expected.sum().backward()
    assert_grads_close(fast, reference)


def test_state_dict_is_unchanged_and_loads_strictly():
    model = tiny_net().eval()
    fast = mobilefuse.accelerate(model)
    ours, theirs = fast.state_dict(), model.state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    # New weights loaded in place reach the folded kernel (no stale cached fold).
    other = tiny_net(seed=1).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        fast(x)
        fast.load_state_dict(other.state_dict(), strict=True)
        assert_close_to_reference(fast(x), other.double()(x.double()),
                                  FORWARD_TOL[torch.float32], "after load_state_dict")


def test_running_statistics_changed_in_place_reach_the_fold():
    fast = mobilefuse.accelerate(tiny_net().eval())
    x = torch.randn(2, 3, 16, 16)
    with torch.inference_mode():
        before = fast(x)
        fast[1].conv[1][1].running_var.mul_(4.0)
        after = fast(x)
    assert not torch.allclose(before, after)
    fast.train()
    restored = mobilefuse.restore(fast).eval()
    with torch.no_grad():
        assert_close_to_reference(after, restored.double()(x.double()),
                                  FORWARD_TOL[torch.float32], "after in-place update")


def test_inplace_flag():
    model = tiny_net()
    copy_result = mobilefuse.accelerate(model)
    assert copy_result is not model and not any(
        isinstance(m, mobilefuse.nn.DepthwiseConv2d) for m in model.modules())
    same = mobilefuse.accelerate(model, inplace=True)
    assert same is model and sum(
        isinstance(m, mobilefuse.nn.DepthwiseConv2d) for m in model.modules()) == 4


def test_swapped_modules_share_parameters_so_optimizers_keep_working():
    model = tiny_net()
    params = list(model.parameters())
    fast = mobilefuse.accelerate(model, inplace=True)
    assert [id(p) for p in fast.parameters()] == [id(p) for p in params]


def test_restore_gives_back_the_original_classes_with_trained_state():
    model = tiny_net().train()
    fast = mobilefuse.accelerate(model)
    opt = torch.optim.SGD(fast.parameters(), lr=0.1)
    x = torch.randn(2, 3, 16, 16)
    fast(x).sum().backward()
    opt.step()
    trained = {k: v.clone() for k, v in fast.state_dict().items()}
    restored = mobilefuse.restore(fast)
    assert [type(m) for m in restored.modules()] == [type(m) for m in model.modules()]
    assert restored.training
    assert all(torch.equal(v, trained[k]) for k, v in restored.state_dict().items())
    assert repr(restored) == repr(model)
    assert mobilefuse.restore(mobilefuse.accelerate(nn.Hardswish())).__class__ is nn.Hardswish


def test_hooks_are_kept_and_a_hooked_conv_is_not_fused():
    model = tiny_net().eval()
    dw = model[1].conv[1][0]
    seen = []
    handle = dw.register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    fast = mobilefuse.accelerate(model, inplace=True)
    swapped = fast[1].conv[1][0]
    assert type(swapped) is mobilefuse.nn.DepthwiseConv2d and swapped.fusion is None
    assert type(fast[1].conv[1][1]) is nn.BatchNorm2d
    fast(torch.randn(1, 3, 16, 16))
    assert seen == [torch.Size([1, 24, 8, 8])]
    handle.remove()
    fast(torch.randn(1, 3, 16, 16))
    assert len(seen) == 1


class CustomBlock(nn.Module):
    """A block wiring its children in its own forward (as timm's blocks do)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False)
        self.bn_dw, self.act = nn.BatchNorm2d(6), nn.ReLU6()
        self.conv_pw, self.bn_pw = nn.Conv2d(6, 6, 1), nn.BatchNorm2d(6)
        self.conv_side, self.bn_side = nn.Conv2d(6, 6, 1, bias=False), nn.BatchNorm2d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn_pw(self.conv_pw(self.act(self.bn_dw(self.conv_dw(x)))))
        side = self.conv_side(x)
        return y + self.bn_side(side) + side  # conv_side's output is read twice


class DataDependentBlock(CustomBlock):
    """A forward torch.fx cannot trace (control flow on values)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return y if bool(y.sum() > 0) else -y




@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_runs_wired_in_a_custom_forward_are_traced_and_fused(train):
    torch.manual_seed(0)
    model = randomized(CustomBlock()).train(train)
    reference = copy.deepcopy(model).double()
    fast = mobilefuse.accelerate(model)
    assert type(fast.conv_dw) is mobilefuse.nn.DepthwiseConv2d
    assert fast.conv_dw.fusion.describe() == "batchnorm+relu6 (eval)"
    assert type(fast.conv_pw) is FoldedConv2d and type(fast.bn_pw) is FoldedBatchNorm2d
    # Its output also feeds the sum: folding the BatchNorm into it would be wrong.
    assert type(fast.conv_side) is nn.Conv2d and type(fast.bn_side) is nn.BatchNorm2d
    x = torch.randn(2, 6, 9, 7, requires_grad=True)
    out, expected = fast(x), reference(x.detach().double().requires_grad_())
    assert_close_to_reference(out, expected, FORWARD_TOL[torch.float32], "custom block")
    out.sum().backward()
    expected.sum().backward()
    assert_grads_close(fast, reference)


def test_untraceable_forward_is_swapped_but_not_fused():
    torch.manual_seed(0)
    model = randomized(DataDependentBlock()).eval()
    fast = mobilefuse.accelerate(model)
    assert type(fast.conv_dw) is mobilefuse.nn.DepthwiseConv2d and fast.conv_dw.fusion is None
    assert type(fast.bn_dw) is nn.BatchNorm2d and type(fast.conv_pw) is nn.Conv2d
    x = torch.randn(2, 6, 9, 7)
    with torch.no_grad():
        assert_close_to_reference(fast(x), copy.deepcopy(model).double()(x.double()),
                                  FORWARD_TOL[torch.float32], "untraceable block")


class PaddedConv(nn.Conv2d):
    """A Conv2d subclass with its own forward (like timm's Conv2dSame)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(nn.functional.pad(x, (0, 1, 0, 1)))


def test_modules_it_cannot_serve_are_left_alone_with_reasons():
    shared = nn.BatchNorm2d(4)
    model = nn.Sequential(
        nn.Conv2d(4, 4, 3, padding=1, groups=4), shared,       # shared BN: not folded
        nn.Conv2d(4, 8, 3, padding=1, groups=4),               # channel multiplier
        nn.Conv2d(8, 8, 3, padding=1, groups=2),               # grouped, not depthwise
        nn.Conv2d(8, 8, 3, padding=1, groups=8, padding_mode="reflect"),
        PaddedConv(8, 8, 2, groups=8),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),
        nn.BatchNorm2d(8, track_running_stats=False), nn.ReLU(),
        nn.Conv2d(8, 4, 1), shared)
    fast = mobilefuse.accelerate(model.eval())
    kinds = [type(m) for m in fast]
    assert kinds == [mobilefuse.nn.DepthwiseConv2d, nn.BatchNorm2d, nn.Conv2d, nn.Conv2d,
                     nn.Conv2d, PaddedConv, mobilefuse.nn.DepthwiseConv2d, nn.BatchNorm2d,
                     nn.ReLU, nn.Conv2d, nn.BatchNorm2d]
    assert fast[0].fusion is None and fast[6].fusion is None
    x = torch.randn(2, 4, 9, 11)
    with torch.no_grad():
        assert_close_to_reference(fast(x), copy.deepcopy(model).double()(x.double()),
                                  FORWARD_TOL[torch.float32], "mixed model")
    report = mobilefuse.accelerate_report(fast, show=False)
    detail = {row.path: row.detail for row in report.rows}
    assert "channel multiplier 2" in detail["2"]
    assert "grouped convolution" in detail["3"]
    assert "padding_mode='reflect'" in detail["4"]
    assert "PaddedConv subclasses nn.Conv2d" in detail["5"]
    assert "track_running_stats=False" in detail["7"]
    assert "dense convolution" in detail["9"]


def test_report_counts_and_table(capsys):
    model = tiny_net().eval()
    before = mobilefuse.accelerate_report(model)
    printed = capsys.readouterr().out
    assert printed.startswith("module") and "would swap" in printed
    assert before.count("swapped") == 0 and before.count("would swap") == 31
    after = mobilefuse.accelerate_report(mobilefuse.accelerate(model), show=False)
    assert after.count("swapped") == 31 and after.count("would swap") == 0
    assert after.count("kept") == before.count("kept") == len(after.rows) - 31
    rows = {row.path: row for row in after.rows}
    assert rows["1.conv.1.0"].original == "Conv2d"
    assert rows["1.conv.1.0"].current == "DepthwiseConv2d"
    assert "batchnorm+relu6" in rows["1.conv.1.0"].detail
    assert rows["8"].status == "kept" and "Linear" in rows["8"].detail
    assert f"{len(after.rows)} modules: 31 swapped" in str(after)


def test_accelerating_twice_changes_nothing_more():
    once = mobilefuse.accelerate(tiny_net().eval())
    twice = mobilefuse.accelerate(once)
    assert repr(twice) == repr(once)


def test_pinned_backend_runs_there():
    model = tiny_net().eval()
    x = torch.randn(2, 3, 15, 13)
    expected = copy.deepcopy(model).double()(x.double())
    for backend in ("reference", "triton", "cpu"):
        fast = mobilefuse.accelerate(model, backend=backend)
        assert {m.backend for m in fast.modules() if hasattr(m, "backend")} == {backend}
        assert f"backend={backend!r}" in repr(fast)
        with torch.no_grad():
            assert_close_to_reference(fast(x), expected, FORWARD_TOL[torch.float32], backend)


def test_copies_keep_the_fusion_links():
    fast = mobilefuse.accelerate(tiny_net().eval())
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        expected = fast(x)
    for clone in (copy.deepcopy(fast), pickle.loads(pickle.dumps(fast))):
        conv, norm = clone[1].conv[1][0], clone[1].conv[1][1]
        assert conv.fusion.norm is norm
        with torch.no_grad():
            assert torch.equal(clone(x), expected)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_compiles_fullgraph(train):
    fast = mobilefuse.accelerate(tiny_net()).train(train)
    x = torch.randn(2, 3, 16, 16)
    compiled = torch.compile(fast, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    assert_close_to_reference(out, fast(x), FORWARD_TOL[torch.float32], "compiled")
    if train:
        out.sum().backward()
        assert all(p.grad is not None for p in fast.parameters())


@pytest.mark.parametrize("call", [
    lambda: mobilefuse.accelerate(3),
    lambda: mobilefuse.restore("model"),
    lambda: mobilefuse.accelerate_report(None),
], ids=["accelerate", "restore", "report"])
def test_non_module_is_a_type_error(call):
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        call()


def test_unknown_backend_is_a_value_error():
    with pytest.raises(ValueError, match="backend must be one of"):
        mobilefuse.accelerate(nn.ReLU(), backend="gpu")
