"""The efficiency report: its measurements on models with known answers, and its files."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch import nn

import mobilefuse
from mobilefuse import models
from mobilefuse.bench.report import environment
from mobilefuse.report import ModelEntry, measure_models, published_top1, write_outputs
from mobilefuse.report.measure import (
    activation_bytes,
    count_flops,
    count_parameters,
    inference_latencies,
    training_step_peak_bytes,
)


def test_published_accuracies_name_their_sources():
    data = published_top1()
    assert {"mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "shufflenet_v2_x1_0",
            "resnet50", "mobilenet_v1"} <= data.keys()
    assert all(0 < p.top1 < 100 and p.source.strip() for p in data.values())
    assert data["mobilenet_v2"].top1 == 71.878


def small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8),
                         nn.Hardswish(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


def test_flops_count_convolutions_and_matmuls():
    macs = 9 * 3 * 8 * 16 * 16 + 9 * 8 * 16 * 16 + 8 * 5
    assert count_flops(small_net(), (1, 3, 16, 16)) == 2 * macs
    with torch.device("meta"):
        meta = small_net()
    assert count_flops(meta, (2, 3, 16, 16)) == 4 * macs


def test_parameters_and_activation_bytes():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    assert count_parameters(model) == 3 * 4 * 9 + 4
    x = torch.randn(2, 3, 10, 10)
    # The convolution keeps its input, ReLU its output; the weights are not activations.
    assert activation_bytes(model, x) == x.nbytes + 2 * 4 * 10 * 10 * 4


def test_training_step_peak_bytes_counts_what_the_step_allocates():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    image_out_bytes = 4 * 10 * 10 * 4
    grad_bytes = (3 * 4 * 9 + 4) * 4
    peaks = {n: training_step_peak_bytes(model, torch.randn(n, 3, 10, 10)) for n in (2, 8)}
    # At least the two outputs held for the backward and the fresh parameter gradients (x was
    # allocated before the step and is not counted; oneDNN's workspaces come on top), and
    # the held outputs grow with the batch.
    assert peaks[2] >= 2 * 2 * image_out_bytes + grad_bytes
    assert peaks[8] - peaks[2] >= 2 * 6 * image_out_bytes
    assert all(p.grad is None for p in model.parameters())  # measured on a copy


def test_accelerated_blocks_lower_the_training_peak():
    """A fused MBConv stage keeps fewer activations, so its training step peaks lower."""
    torch.manual_seed(0)
    eager = models.create_model("mobilenet_v3_small").features[:4]
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    eager_peak = training_step_peak_bytes(eager, x)
    fast_peak = training_step_peak_bytes(mobilefuse.accelerate(eager), x)
    assert activation_bytes(eager, x) - x.nbytes <= eager_peak  # x is held before the step
    assert fast_peak < 0.9 * eager_peak, (fast_peak, eager_peak)


class _Sleeps(nn.Module):
    """A model whose forward takes at least ``seconds``."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time

        time.sleep(self.seconds)
        return x


class _Fails(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("forward failed")


def test_inference_latencies_time_each_model_in_eval_mode():
    fast, slow = _Sleeps(0.001).train(), _Sleeps(0.004).train()
    timings = inference_latencies((fast, slow), torch.zeros(1), reps=4, warmup_s=0.0)
    assert not fast.training and not slow.training
    assert all(t.samples >= 4 for t in timings)  # whole rounds: at least reps each
    assert 1.0 <= timings[0].median_ms < timings[1].median_ms
    assert timings[1].median_ms >= 4.0
    with pytest.raises(RuntimeError, match="forward failed"):
        inference_latencies((fast, _Fails()), torch.zeros(1), reps=2, warmup_s=0.0)


def test_report_files(tmp_path):
    entries = [ModelEntry("mobilenet_v2", small_net, 20), ModelEntry("custom_net", small_net, 12)]
    results = measure_models(entries, torch.device("cpu"), batch=2, dtype=torch.float32, reps=2,
                             progress=False)
    assert [r.model for r in results] == ["mobilenet_v2", "custom_net"]
    assert results[0].top1 == 71.878 and results[1].top1 is None
    assert results[0].swapped_modules == 3  # depthwise conv with its BatchNorm and Hardswish
    assert all(r.eager_ms > 0 and r.accelerated_ms > 0 for r in results)
    files = write_outputs(results, tmp_path, environment(torch.device("cpu")), 2, "float32")
    rows = list(csv.DictReader(files["csv"].open()))
    assert [row["model"] for row in rows] == ["mobilenet_v2", "custom_net"]
    assert int(rows[1]["macs"]) == results[1].macs
    payload = json.loads(files["json"].read_text())
    assert payload["models"][0]["params"] == count_parameters(small_net())
    assert "torch_version" in payload["environment"]
    markdown = files["markdown"].read_text()
    assert "| mobilenet_v2 | 20 |" in markdown and "Top-1 sources:" in markdown
    for key in ("accuracy_vs_flops", "accuracy_vs_params", "speedup"):
        assert files[key].read_bytes()[:4] == b"\x89PNG", key


def test_cli_runs_on_a_tiny_model_list(tmp_path, capsys):
    from mobilefuse.report.cli import main

    assert main(["--models", "mobilenet_v3_small,shufflenet_v1", "--batch", "1", "--channels-last",
                 "--resolution", "64", "--reps", "2", "--no-progress", "--out",
                 str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "mobilenet_v3_small" in printed and "shufflenet_v1" in printed
    rows = list(csv.DictReader((tmp_path / "efficiency.csv").open()))
    assert [row["model"] for row in rows] == ["mobilenet_v3_small", "shufflenet_v1"]
    assert int(rows[0]["params"]) == 2_542_856
    assert float(rows[0]["top1"]) == 67.668
    assert all(float(row["speedup"]) > 0 for row in rows)
    for name in ("efficiency.md", "efficiency.json", "accuracy_vs_flops.png",
                 "accuracy_vs_params.png", "speedup.png"):
        assert (tmp_path / name).stat().st_size > 0, name


def test_cli_rejects_unknown_models_and_bad_numbers():
    from mobilefuse.report.cli import main

    with pytest.raises(SystemExit, match="unknown model 'mobilenet_v9'"):
        main(["--models", "mobilenet_v9", "--no-latency"])
    with pytest.raises(SystemExit):
        main(["--batch", "0"])
