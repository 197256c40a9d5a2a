"""The benchmark runner (``python -m mobilefuse.bench``), run in-process on a tiny shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import mobilefuse
from mobilefuse.bench import cases, main, report, timing

# --system-allocator: leave the test process's malloc settings (and its poisoning) alone.
TINY = ["--shape", "2", "8", "5", "7", "--reps", "3", "--no-compile", "--system-allocator"]
TOP_KEYS = {
    "device", "torch_version", "triton_version", "cuda_version", "build_info", "git_commit",
    "git_dirty", "threads", "allocator", "copy_bandwidth", "verification", "timings", "shape",
}
TIMING_KEYS = {
    "op", "impl", "shape", "dtype", "memory_format", "median_ms", "q20_ms", "q80_ms", "bytes",
    "gbps", "frac_of_copy_bw", "ratio_vs_eager",
}


def _fused_backends() -> set[str]:
    return {name for name in mobilefuse.available_backends() if name != "reference"}


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The JSON written by one tiny run (and the run's exit status under ``"_rc"``)."""
    out = tmp_path_factory.mktemp("bench")
    rc = main([*TINY, "--out", str(out)])
    files = list(out.glob("*.json"))
    assert len(files) == 1, files
    assert files[0].name == report.result_path(out, cases.bench_device()).name
    return {**json.loads(files[0].read_text()), "_rc": rc}


def test_runner_exits_zero(result: dict) -> None:
    """Every check passes and no implementation errors."""
    assert result["_rc"] == 0


def test_result_has_required_keys(result: dict) -> None:
    """The file records the machine, build, allocator, copy bandwidth and results."""
    assert TOP_KEYS <= result.keys()
    assert result["shape"] == [2, 8, 5, 7]
    assert result["threads"] == torch.get_num_threads()
    assert result["build_info"] == json.loads(json.dumps(mobilefuse.build_info()))
    if cases.bench_device().type == "cpu":
        assert result["allocator"].startswith((timing.ALLOCATOR_REUSE, timing.ALLOCATOR_SYSTEM))
    assert all(c["gbps"] > 0 for c in result["copy_bandwidth"])


def test_every_op_and_impl_is_timed(result: dict) -> None:
    """One complete timing entry per op x implementation x memory format."""
    device = cases.bench_device()
    timed = {(t["op"], t["impl"], t["memory_format"]): t for t in result["timings"]}
    for op in cases.OPS:
        for impl in cases.impl_names(op, device, compile=False):
            for layout in cases.LAYOUTS:
                entry = timed[(op, impl, layout)]
                assert TIMING_KEYS <= entry.keys(), entry
                assert "error" not in entry, entry
                assert entry["median_ms"] > 0 and entry["q20_ms"] <= entry["q80_ms"]
                assert entry["bytes"] == 2 * 2 * 8 * 5 * 7 * 4
                assert entry["ratio_vs_eager"] > 0
    assert not any(t["impl"] == cases.COMPILE for t in result["timings"])  # --no-compile
    assert all(t.get("backend") != "reference" for t in result["timings"])


def test_every_fused_backend_is_verified(result: dict) -> None:
    """Each available backend but the reference is checked on every op, and passes."""
    checks = result["verification"]
    assert {c["backend"] for c in checks} == _fused_backends()
    assert {c["op"] for c in checks} == set(cases.OPS)
    failed = [c for c in checks if c["status"] != "PASS"]
    assert not failed, failed


def test_verify_only(tmp_path: Path) -> None:
    """``--verify-only`` passes here and times nothing."""
    assert main(["--verify-only", "--out", str(tmp_path)]) == 0
    assert not list(tmp_path.iterdir())  # verification alone writes no result file
