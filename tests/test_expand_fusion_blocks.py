"""benchmarks/expand_fusion_blocks.py: a small model end to end (both routes timed, JSON)."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import load_benchmark_script

from mobilefuse import _onednn

pytestmark = pytest.mark.skipif(not _onednn.ops_present(), reason="torch built without oneDNN")


def test_script_times_both_routes_of_each_block(tmp_path, monkeypatch, capsys):
    script = load_benchmark_script("expand_fusion_blocks")
    out = tmp_path / "blocks.json"
    monkeypatch.setattr(sys, "argv", ["expand_fusion_blocks.py", "--models",
                                      "mobilenet_v3_small", "--batch", "1", "--size", "64",
                                      "--reps", "2", "--out", str(out)])
    # The process-wide heap settings stay as the rest of the suite expects.
    monkeypatch.setattr(script.timing, "configure_allocator", lambda: "unchanged")
    script.main()
    rows = json.loads(out.read_text())["results"]
    # MobileNetV3-Small has 10 blocks with an expansion (the first has none).
    assert [row["block"] for row in rows] == [f"features.{i}" for i in range(2, 12)]
    assert all(row["unfused_ms"] > 0 and row["fused_ms"] > 0 for row in rows)
    # The rule takes the blocks with up to 80 input channels, the last two have 96.
    assert [row["rule_fuses"] for row in rows] == [True] * 8 + [False] * 2
    assert capsys.readouterr().out.count("mobilenet_v3_small features.") == 10
