"""benchmarks/accelerate_sweep.py: one small model end to end (swaps, errors, timing, JSON)."""

from __future__ import annotations

import copy
import json
import sys

import torch
from conftest import load_benchmark_script
from vision_models import timm_or_skip


def test_sweep_checks_and_times_a_timm_model(tmp_path, monkeypatch, capsys):
    timm_or_skip()
    sweep = load_benchmark_script("accelerate_sweep")
    out = tmp_path / "sweep.json"
    monkeypatch.setattr(sys, "argv", ["accelerate_sweep.py", "--models", "timm:lcnet_050",
                                      "--batch", "1", "--size", "64", "--reps", "2",
                                      "--out", str(out)])
    # The process-wide heap settings stay as the rest of the suite expects.
    monkeypatch.setattr(sweep.timing, "configure_allocator", lambda: "unchanged")
    sweep.main()
    assert capsys.readouterr().out.startswith("PASS timm:lcnet_050")
    (row,) = json.loads(out.read_text())["results"]
    assert row["status"] == "PASS" and row["error"] <= 1e-5
    assert row["swapped"]["InvertedResidual"] == 13
    assert row["eager_ms"] > 0 and row["accelerated_ms"] > 0


def test_sweep_checks_and_times_a_training_step(tmp_path, monkeypatch, capsys):
    timm_or_skip()
    sweep = load_benchmark_script("accelerate_sweep")
    out = tmp_path / "sweep.json"
    monkeypatch.setattr(sys, "argv", ["accelerate_sweep.py", "--train", "--models",
                                      "timm:lcnet_050", "--batch", "2", "--size", "48",
                                      "--reps", "2", "--out", str(out)])
    monkeypatch.setattr(sweep.timing, "configure_allocator", lambda: "unchanged")
    sweep.main()
    assert capsys.readouterr().out.startswith("PASS timm:lcnet_050")
    (row,) = json.loads(out.read_text())["results"]
    assert row["mode"] == "train" and row["status"] == "PASS"
    assert set(row["errors"]) == {"output", "input_gradient", "parameter_gradients",
                                  "running_statistics"}
    for kind, errors in row["errors"].items():
        assert 0 < errors["error"] <= 1e-4 and 0 < errors["eager_error"] <= 1e-4, (kind, errors)
        by_layout = errors["eager_error_by_layout"]
        assert set(by_layout) == {"channels_last", "contiguous"}
        assert errors["eager_error"] == max(by_layout.values())
    assert row["eager_ms"] > 0 and row["accelerated_ms"] > 0


def test_training_step_errors_flag_a_changed_gradient():
    # The check can fail: a model whose step differs from the reference's is caught.
    sweep = load_benchmark_script("accelerate_sweep")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5)).train()
    reference = copy.deepcopy(model).double()
    x = torch.randn(2, 3, 8, 8)
    expected = sweep._step_results(reference, x)
    same = sweep._step_errors(sweep._step_results(copy.deepcopy(model), x), expected)
    assert all(err <= 1e-5 for err in same.values()), same
    with torch.no_grad():
        model[3].weight[0, 0] += 0.5  # changes the input's and the first layers' gradients
    changed = sweep._step_errors(sweep._step_results(model, x), expected)
    assert changed["input_gradient"] > 1e-3 and changed["parameter_gradients"] > 1e-3, changed
    renamed = torch.nn.Sequential(*model)  # same layers, but a missing BatchNorm buffer
    renamed[1] = torch.nn.BatchNorm2d(4, track_running_stats=False)
    assert sweep._step_errors(sweep._step_results(renamed, x), expected)["output"] == float("inf")
