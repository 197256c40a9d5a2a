"""The benchmark runner (``python -m mobilefuse.bench``), run in-process on tiny shapes."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch

import mobilefuse
from mobilefuse.bench import block_cases as blocks
from mobilefuse.bench import cases, main, report, timing
from mobilefuse.bench import depthwise_cases as dw
from mobilefuse.models.specs import unique_depthwise_layers

# --system-allocator: leave the test process's malloc settings (and its poisoning) alone.
# A short warm-up keeps the run fast; its 10-call minimum still holds.
TINY = ["--shape", "2", "8", "5", "7", "--reps", "3", "--no-compile", "--system-allocator",
        "--warmup", "0.01"]
DW_LIMIT = 2
DW_BATCHES = (1, 2)
DW_TINY = [*TINY, "--dw-models", "mobilenet_v2", "--dw-batch", *map(str, DW_BATCHES),
           "--dw-limit", str(DW_LIMIT)]
TOP_KEYS = {
    "device", "torch_version", "triton_version", "cuda_version", "build_info", "git_commit",
    "git_dirty", "threads", "allocator", "copy_bandwidth", "verification", "timings", "shape",
}
TIMING_KEYS = {
    "op", "impl", "shape", "dtype", "memory_format", "median_ms", "q20_ms", "q80_ms", "bytes",
    "gbps", "frac_of_copy_bw", "ratio_vs_eager", "warmup_calls", "warmup_s",
}
DEPTHWISE_KEYS = {
    "op", "impl", "pass", "model", "layer", "shared_by", "channels", "input_size", "kernel",
    "stride", "padding", "activation", "batch", "shape", "dtype", "memory_format", "bytes",
    "median_ms", "q20_ms", "q80_ms", "gbps", "ratio_vs_eager", "ratio_vs_compile",
}


def _fused_backends() -> set[str]:
    return {name for name in mobilefuse.available_backends() if name != "reference"}


def _run(out: Path, argv: list[str]) -> dict:
    rc = main([*argv, "--out", str(out)])
    files = list(out.glob("*.json"))
    assert len(files) == 1, files
    assert files[0].name == report.result_path(out, cases.bench_device()).name
    return {**json.loads(files[0].read_text()), "_rc": rc}


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The JSON written by one tiny run without depthwise layers (exit status under ``"_rc"``)."""
    return _run(tmp_path_factory.mktemp("bench"), [*TINY, "--skip-depthwise"])


@pytest.fixture(scope="module")
def dw_result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The JSON of a tiny run with MobileNetV2's first distinct depthwise layers at batches
    1 and 2."""
    return _run(tmp_path_factory.mktemp("bench_dw"), DW_TINY)


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
                assert entry["warmup_calls"] >= timing.WARMUP_CALLS
    assert not any(t["impl"] == cases.COMPILE for t in result["timings"])  # --no-compile
    assert all(t.get("backend") != "reference" for t in result["timings"])


def test_every_fused_backend_is_verified(result: dict) -> None:
    """Each available backend but the reference is checked on every op, and passes."""
    checks = result["verification"]
    assert {c["backend"] for c in checks} == _fused_backends()
    assert {c["op"] for c in checks} == {*cases.OPS, "depthwise_conv2d", "squeeze_excite"}
    depthwise = [c for c in checks if c["op"] == "depthwise_conv2d"]
    assert {c["dtype"] for c in depthwise} == {"float32", "bfloat16"}
    assert {c["memory_format"] for c in depthwise} == set(cases.LAYOUTS)
    assert len({c["case"] for c in depthwise}) >= 2
    assert all(set(c["grad_errors"]) == {"x", "weight", "bias"} for c in depthwise)
    se = [c for c in checks if c["op"] == "squeeze_excite"]
    assert len({c["case"] for c in se}) == 2
    assert all(len(c["grad_errors"]) == 5 for c in se)
    failed = [c for c in checks if c["status"] != "PASS"]
    assert not failed, failed


@pytest.mark.parametrize("layout", list(cases.LAYOUTS))
def test_concat_shuffle_case_times_the_unit_end(layout: str) -> None:
    """Every concat_shuffle implementation takes the input's two channel halves and gives
    eager's cat + shuffle bit for bit; an odd channel count is a clear error."""
    x = cases.make_input((2, 10, 3, 5), torch.float32, layout, torch.device("cpu"))
    expected = torch.nn.functional.channel_shuffle(x, 2)
    for name, impl in cases.build_impls("concat_shuffle", x.device, compile=False).items():
        assert torch.equal(impl(x), expected), name
    odd = cases.make_input((2, 9, 3, 5), torch.float32, layout, torch.device("cpu"))
    with pytest.raises(ValueError, match="even channel count"):
        cases.build_impl("concat_shuffle", cases.MOBILEFUSE)(odd)


def test_skip_depthwise(result: dict) -> None:
    """``--skip-depthwise`` times no depthwise layer."""
    assert result["depthwise"] == [] and result["depthwise_geomeans"] == []
    assert result["depthwise_settings"] is None


def test_depthwise_entries(dw_result: dict) -> None:
    """Each selected layer x batch x layout x pass x implementation is timed, with its bytes
    and ratios, beside a copy of as many bytes that gives its share of copy bandwidth."""
    assert dw_result["_rc"] == 0
    device = cases.bench_device()
    layers = unique_depthwise_layers(["mobilenet_v2"])[:DW_LIMIT]
    impls = [*dw.impl_names(device, compile=False), cases.COPY]
    entries = dw_result["depthwise"]
    assert len(entries) == (len(layers) * len(DW_BATCHES) * len(cases.LAYOUTS) * len(dw.PASSES)
                            * len(impls))
    timed = {(e["layer"], e["batch"], e["memory_format"], e["pass"], e["impl"]): e
             for e in entries}
    for layer in layers:
        for batch in DW_BATCHES:
            for layout in cases.LAYOUTS:
                for pass_ in dw.PASSES:
                    copy = timed[(layer.name, batch, layout, pass_, cases.COPY)]
                    assert copy["bytes"] == dw.moved_bytes(layer, batch, torch.float32, pass_)
                    assert copy["gbps"] > 0 and "ratio_vs_eager" not in copy
                    for impl in impls[:-1]:
                        entry = timed[(layer.name, batch, layout, pass_, impl)]
                        assert DEPTHWISE_KEYS <= entry.keys(), entry
                        assert "error" not in entry, entry
                        assert entry["model"] == "mobilenet_v2"
                        assert entry["shape"] == [batch, layer.channels, layer.input_size,
                                                  layer.input_size]
                        assert entry["bytes"] == copy["bytes"]
                        assert entry["median_ms"] > 0 and entry["ratio_vs_eager"] > 0
                        assert entry["ratio_vs_compile"] is None  # --no-compile
                        assert entry["frac_of_copy_bw"] == pytest.approx(
                            entry["gbps"] / copy["gbps"])
    settings = dw_result["depthwise_settings"]
    assert settings["limit"] == DW_LIMIT and settings["batches"] == list(DW_BATCHES)
    assert settings["layers"] == [dw.label(layer) for layer in layers]


def test_depthwise_geomeans(dw_result: dict) -> None:
    """One geometric mean per implementation but eager and the copy, batch, layout and pass,
    over every layer."""
    device = cases.bench_device()
    fused = [i for i in dw.impl_names(device, compile=False) if i != cases.EAGER]
    means = {(g["impl"], g["batch"], g["memory_format"], g["pass"]): g
             for g in dw_result["depthwise_geomeans"]}
    assert set(means) == {(i, b, layout, p) for i in fused for b in DW_BATCHES
                          for layout in cases.LAYOUTS for p in dw.PASSES}
    for (impl, batch, layout, pass_), mean in means.items():
        assert mean["layers"] == DW_LIMIT and mean["geomean_vs_eager"] > 0
        assert mean["geomean_vs_compile"] is None
        shares = [e["frac_of_copy_bw"] for e in dw_result["depthwise"]
                  if (e["impl"], e["batch"], e["memory_format"], e["pass"])
                  == (impl, batch, layout, pass_)]
        assert mean["geomean_frac_of_copy_bw"] == pytest.approx(
            math.prod(shares) ** (1 / len(shares)))


def test_depthwise_bytes() -> None:
    """Forward moves x, out and the parameters; the backward adds grad_out, x, grad_x and
    the parameter gradients."""
    layer = unique_depthwise_layers(["mobilenet_v2"])[1]  # 96 channels, 112 -> 56, k3
    x, out, params = 2 * 96 * 112 * 112, 2 * 96 * 56 * 56, 96 * 10
    assert dw.moved_bytes(layer, 2, torch.float32, dw.FORWARD) == 4 * (x + out + params)
    assert dw.moved_bytes(layer, 2, torch.bfloat16, dw.FORWARD_BACKWARD) == 2 * (
        3 * x + 2 * out + 2 * params)


def test_quick_subset() -> None:
    """``--quick`` takes a subset still spanning every map size, kernel, stride and activation;
    ``--dw-limit`` then the first K."""
    everything = dw.select_layers()
    quick = dw.select_layers(quick=True)
    assert len(quick) < len(everything) / 3
    for attribute in ("input_size", "kernel", "stride", "activation"):
        assert {getattr(layer, attribute) for layer in quick} == {
            getattr(layer, attribute) for layer in everything}, attribute
    assert dw.select_layers(quick=True, limit=2) == quick[:2]


def test_bad_depthwise_options(capsys: pytest.CaptureFixture[str]) -> None:
    """Unknown networks and non-positive sizes are usage errors."""
    for argv in (["--dw-models", "resnet50"], ["--dw-batch", "8", "0"], ["--dw-limit", "0"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    assert "resnet50" in capsys.readouterr().err


def test_warm_up_takes_the_longer_of_time_and_calls() -> None:
    """The warm-up runs at least ``min_calls`` calls and at least ``min_s`` seconds, after a
    first call (compilation) that counts toward neither."""
    calls: list[int] = []
    made, spent, _ = timing.warm_up(lambda: calls.append(1), min_s=0.0, min_calls=10)
    assert made == 10 and len(calls) == 11
    made, spent, estimate = timing.warm_up(lambda: None, min_s=0.05, min_calls=10)
    assert made > 10 and spent >= 0.05 and estimate >= 0


def test_side_by_side_rotates_rounds_and_reports_errors() -> None:
    """Each round runs every function back to back (one untimed call, then its share of the
    samples), in an order rotated round by round; a function that raises comes back as its
    exception and the others are still timed."""
    log: list[str] = []

    def broken() -> None:
        raise RuntimeError("no kernel for this case")

    def slow() -> None:
        log.append("slow")
        time.sleep(2e-3)

    def fast() -> None:
        log.append("fast")

    results = timing.time_cpu_side_by_side([slow, broken, fast], reps=4, warmup_s=0.0,
                                           rounds=2)
    assert isinstance(results[1], RuntimeError)
    slow_t, fast_t = results[0], results[2]
    assert isinstance(slow_t, timing.Timing) and isinstance(fast_t, timing.Timing)
    assert slow_t.samples == fast_t.samples == 4
    assert slow_t.median_ms >= 2.0 > fast_t.median_ms
    assert "2 rounds" in slow_t.method
    # Warm-ups (slow, fast), then round 1 (slow, fast) and round 2 (fast, slow): runs of
    # slow, fast, slow, fast, slow; in each round a function makes 1 + 2 samples' calls.
    runs: list[list[str]] = []
    for name in log:
        if runs and runs[-1][0] == name:
            runs[-1].append(name)
        else:
            runs.append([name])
    assert [run[0] for run in runs] == ["slow", "fast", "slow", "fast", "slow"]
    n = int(fast_t.method.split(",")[1].split()[0])  # fast's calls per sample
    assert n > 1 and len(runs[-1]) == 1 + 2 and len(runs[-2]) == 2 * (1 + 2 * n)


def test_verify_only(tmp_path: Path) -> None:
    """``--verify-only`` passes here and times nothing."""
    assert main(["--verify-only", "--out", str(tmp_path)]) == 0
    assert not list(tmp_path.iterdir())  # verification alone writes no result file


@pytest.fixture(scope="module")
def block_result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The JSON of a tiny run timing the first two MobileNetV2 blocks at batch 1."""
    return _run(tmp_path_factory.mktemp("bench_blocks"),
                [*TINY, "--skip-depthwise", "--blocks", "--block-models", "mobilenet_v2",
                 "--block-batch", "1", "--block-limit", "2"])


def test_block_entries(block_result: dict) -> None:
    """Each block x layout x pass x implementation is timed, with its bytes and ratios."""
    assert block_result["_rc"] == 0
    first_two = blocks.model_blocks("mobilenet_v2")[:2]
    assert [b.in_shape for b in first_two] == [(32, 112, 112), (16, 112, 112)]
    timed = {(e["block"], e["impl"], e["memory_format"], e["pass"]): e
             for e in block_result["blocks"]}
    assert len(timed) == 2 * 2 * len(cases.LAYOUTS) * len(blocks.PASSES)
    for case in first_two:
        for impl in (cases.MOBILEFUSE, cases.EAGER):
            for layout in cases.LAYOUTS:
                for pass_ in blocks.PASSES:
                    entry = timed[(case.path, impl, layout, pass_)]
                    assert "error" not in entry, entry
                    assert entry["median_ms"] > 0 and entry["ratio_vs_eager"] > 0
                    assert entry["bytes"] == blocks.moved_bytes(case, 1, torch.float32)
    means = {(g["memory_format"], g["pass"]) for g in block_result["block_geomeans"]
             if g["impl"] == cases.MOBILEFUSE}
    assert means == {(layout, pass_) for layout in cases.LAYOUTS for pass_ in blocks.PASSES}
    assert block_result["block_settings"]["models"] == ["mobilenet_v2"]
