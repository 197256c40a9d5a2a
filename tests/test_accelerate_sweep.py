"""benchmarks/accelerate_sweep.py: one small model end to end (swaps, errors, timing, JSON)."""

from __future__ import annotations

import json
import sys

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
