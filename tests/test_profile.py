"""mobilefuse.profile: per-layer tables, comparisons, traces, the roofline and the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import HAS_CUDA
from torch import nn

import mobilefuse
from mobilefuse.models import create_model
from mobilefuse.profile import roofline
from mobilefuse.profile.cli import main
from mobilefuse.profile.compare import group_roots
from mobilefuse.profile.recorder import record_calls
from mobilefuse.profile.run import run_under_nvtx

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tiny(name: str = "mobilenet_v3_small") -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=10)


def _trace_names(path) -> set[str]:
    trace = json.loads(path.read_text())  # a Chrome trace is one JSON object
    return {e.get("name", "") for e in trace["traceEvents"]}


def _check_shares(result: mobilefuse.ProfileResult) -> None:
    assert result.rows, "no rows"
    assert math.isclose(sum(r.share for r in result.rows), 1.0, rel_tol=1e-9)
    assert all(r.total_ms >= 0 for r in result.rows)
    # The rows account for most of the step, and never for more than the step took (on a
    # GPU they count kernel time only, which may leave the device idle for much of a step).
    least = 0.0 if "cuda" in result.device.lower() or HAS_CUDA else 0.5
    assert least * result.step_ms <= result.attributed_ms <= 1.02 * result.step_ms, (
        result.title())
    assert [r.total_ms for r in result.rows] == sorted((r.total_ms for r in result.rows),
                                                        reverse=True)


def test_inference_profile_rows(tmp_path) -> None:
    model = mobilefuse.accelerate(_tiny()).eval()
    x = torch.randn(2, 3, 64, 64)
    result = mobilefuse.profile(model, x, steps=2, warmup=1, trace_path=tmp_path / "t.json",
                                print_table=False)
    _check_shares(result)
    blocks = [r for r in result.rows if r.ops[0] == "mobilefuse::inverted_residual"]
    assert len(blocks) == 11  # every MBConv block of MobileNetV3-Small is one fused row
    first = result.row("features.1")
    assert first.input_shape == (2, 16, 32, 32) and first.module == "InvertedResidual"
    # A row that did all its work itself has its traffic: input, output, weights, once each.
    conv = result.row("classifier.3")
    assert conv.bytes == 4 * (2 * 1024 + 2 * 10 + 1024 * 10 + 10)
    assert conv.flops == 2 * 2 * 1024 * 10 and conv.gbps > 0
    assert result.row("").ops == ["aten::flatten"]  # the model's own forward
    assert "layer:features.1" in _trace_names(tmp_path / "t.json")
    assert "mobilefuse::inverted_residual" in _trace_names(tmp_path / "t.json")
    assert result.trace_path == tmp_path / "t.json"
    assert "features.1" in result.table() and "InvertedResidual" in str(result)
    json.dumps(result.as_dict())


def test_profile_leaves_the_model_as_it_was() -> None:
    model = _tiny().train()
    model.features[0][1].eval()  # a frozen BatchNorm stays frozen
    state = {k: v.clone() for k, v in model.state_dict().items()}
    mobilefuse.profile(model, torch.randn(2, 3, 32, 32), steps=1, warmup=1, print_table=False)
    mobilefuse.profile(model, torch.randn(2, 3, 32, 32), train=True, steps=1, warmup=1,
                       print_table=False)
    assert model.training and not model.features[0][1].training
    assert all(p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_training_profile_attributes_the_backward() -> None:
    x = torch.randn(2, 3, 32, 32)
    result = mobilefuse.profile(mobilefuse.accelerate(_tiny()), x, train=True, steps=2,
                                warmup=1, print_table=False)
    _check_shares(result)
    block = result.row("features.2")
    assert block.backward_ms > 0 and block.forward_ms > 0
    assert "mobilefuse::inverted_residual_backward" in block.ops
    assert result.row("(accumulate grads)").backward_ms > 0
    # Backward work lands on the layer that ran the forward op, not on a leftover row.
    leftover = [r for r in result.rows if r.path == "(backward, no layer)"]
    assert sum(r.share for r in leftover) < 0.05


def test_compare_pairs_blocks_with_their_layers(tmp_path) -> None:
    x = torch.randn(2, 3, 64, 64)
    result = mobilefuse.profile(_tiny(), x, compare=True, steps=2, warmup=1,
                                trace_path=tmp_path / "run.json", print_table=False)
    assert isinstance(result, mobilefuse.ProfileComparison)
    groups = {r.path: r for r in result.rows}
    block = groups["features.4"]  # eager: expansion, BNs, activations, SE; fused: one op
    assert block.accelerated_ops == ["mobilefuse::inverted_residual"]
    assert "aten::conv2d" in block.eager_ops and block.speedup is not None
    # The stem convolution's BatchNorm and activation fold into it: one group, both sides.
    assert "features.0" in groups and "features.0.1" not in groups
    assert math.isclose(sum(r.eager_share for r in result.rows), 1.0, rel_tol=1e-9)
    assert math.isclose(sum(r.eager_ms for r in result.rows), result.eager.attributed_ms)
    assert math.isclose(sum(r.accelerated_ms for r in result.rows),
                        result.accelerated.attributed_ms)
    for path in result.trace_paths:
        assert "layer:features.4" in _trace_names(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run-accelerated.json",
                                                          "run-eager.json"]
    assert "features.4" in result.table()
    assert f"... {len(result.rows) - 5} more groups" in result.table(top=5)


def test_group_roots() -> None:
    eager = {"", "a.0", "a.1", "a.2", "b", "b.conv", "c.0", "c.1", "(accumulate grads)"}
    fused = {"", "a", "b", "c.0", "(accumulate grads)"}
    # a: a fused block against its layers; c.1 has no fused counterpart, so c is one group.
    assert group_roots(eager, fused) == ["", "(accumulate grads)", "a", "b", "c"]
    assert group_roots({"x.y"}, {"z"}) == ["x", "z"]


def test_record_calls_counts_traffic_and_flops() -> None:
    model = nn.Sequential(nn.Conv2d(4, 6, 3), nn.ReLU())
    x = torch.randn(2, 4, 9, 9)
    records = record_calls(model, lambda: model(x))
    conv = records["0"]
    assert conv.calls == 1 and conv.input_shape == (2, 4, 9, 9)
    assert conv.bytes == 4 * (x.numel() + 2 * 6 * 7 * 7 + 6 * 4 * 9 + 6)
    assert conv.flops == 2 * (2 * 6 * 7 * 7) * 4 * 9
    assert records["1"].flops == 0 and records[""].flops == conv.flops


@pytest.mark.parametrize("bad,match", [
    (dict(model=lambda: 3), "model must be an nn.Module"),
    (dict(example_input=[1, 2]), "example_input must be a tensor"),
    (dict(example_input=[]), "example_input must be a tensor"),
    (dict(steps=0), "steps must be an int >= 1"),
    (dict(steps=1.5), "steps must be an int >= 1"),
    (dict(warmup=-1), "warmup must be an int >= 0"),
])
def test_bad_arguments(bad: dict, match: str) -> None:
    args = dict(model=lambda: nn.ReLU(), example_input=torch.randn(3), steps=1, warmup=0)
    args.update(bad)
    model = args.pop("model")()
    with pytest.raises((TypeError, ValueError), match=match):
        mobilefuse.profile(model, args.pop("example_input"), print_table=False, **args)


def test_roofline(tmp_path) -> None:
    ceilings = roofline.measure_ceilings("cpu", copy_bytes=8 * 2**20, gemm_n=256, reps=3)
    assert ceilings.copy_gbps > 0 and ceilings.gemm_gflops > 0
    assert ceilings.roof_gflops(1e-3) == pytest.approx(ceilings.copy_gbps * 1e-3)
    assert ceilings.roof_gflops(1e6) == ceilings.gemm_gflops
    result = mobilefuse.profile(_tiny(), torch.randn(2, 3, 32, 32), steps=1, warmup=1,
                                print_table=False)
    points = roofline.roofline_points(result, ceilings)
    assert points and all(p.bytes > 0 for p in points)
    conv = next(p for p in points if p.path == "classifier.3")
    row = result.row("classifier.3")
    assert conv.gbps == pytest.approx(row.bytes / row.forward_ms / 1e6)
    assert conv.intensity == pytest.approx(row.flops / row.bytes)
    assert conv.roof_fraction == pytest.approx(
        conv.gflops / ceilings.roof_gflops(conv.intensity))
    assert "classifier.3" in roofline.roofline_table(points, ceilings, "tiny")
    png = roofline.plot_roofline({"eager": points}, ceilings, tmp_path / "r.png")
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_cli_runs_on_a_tiny_model(tmp_path, capsys) -> None:
    code = main(["--model", "mobilenet_v3_small", "--batch", "1", "--resolution", "32",
                 "--steps", "1", "--warmup", "1", "--compare", "--roofline", "--top", "5",
                 "--out", str(tmp_path)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "mobilefuse::inverted_residual" in printed and "Roofline" in printed
    record = json.loads((tmp_path / "profile.json").read_text())
    assert record["profile"]["groups"] and record["roofline"]["accelerated"]["points"]
    assert (tmp_path / "roofline.png").read_bytes()[:8] == PNG_MAGIC
    assert "speedup" in (tmp_path / "profile.md").read_text()
    for name in ("trace-eager.json", "trace-accelerated.json"):
        assert "layer:(model)" in _trace_names(tmp_path / name)


def test_cli_rejects_unknown_models(tmp_path) -> None:
    with pytest.raises(SystemExit, match="unknown model"):
        main(["--model", "no_such_net", "--out", str(tmp_path)])


def test_nvtx_needs_cuda(tmp_path) -> None:
    with pytest.raises(SystemExit, match="--nvtx needs a CUDA device"):
        main(["--model", "mobilenet_v3_small", "--nvtx", "--device", "cpu",
              "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="NVTX ranges need CUDA inputs"):
        run_under_nvtx(nn.ReLU(), torch.randn(3))


@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
def test_nvtx_run_on_cuda(tmp_path, capsys) -> None:
    assert main(["--model", "mobilenet_v3_small", "--batch", "2", "--resolution", "64",
                 "--steps", "1", "--warmup", "1", "--nvtx", "--compare"]) == 0
    assert "(accelerated) under NVTX ranges" in capsys.readouterr().out


@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
def test_cuda_profile_counts_kernel_time() -> None:
    model = _tiny().cuda()
    result = mobilefuse.profile(model, torch.randn(4, 3, 64, 64, device="cuda"), compare=True,
                                steps=2, print_table=False)
    _check_shares(result.accelerated)
    assert result.accelerated.row("features.4").forward_ms > 0
