"""accelerate() on torchvision's and timm's classifiers: for each, what was swapped, the eval
output against the model's float64 copy, and eager vs accelerated latency timed side by side
(CPU, no gradient); with ``--train``, one training step instead.

    python benchmarks/accelerate_sweep.py --layout channels_last --batch 8
    python benchmarks/accelerate_sweep.py --models timm:mixnet_s,torchvision:resnet50 --batch 1
    python benchmarks/accelerate_sweep.py --train --batch 8

A training step is checked against the float64 copy taking the same step (same dropout and
stochastic-depth masks, from one seed): the output, the input's gradient, the parameters'
gradients and the running statistics, the largest error over three input draws, each against
the tolerance or twice eager float32's largest over the same draws in both layouts. The same
step through other kernels, or on another input, rounds differently, and a network can
amplify that: one pre-activation element that float32 puts on the other side of a ReLU's kink
than float64 moves a gradient by that element's whole share. (HardCoReNAS-A's input gradient
in NCHW over four draws: eager 4.5e-6 to 2.7e-3, accelerated 5.0e-6 to 1.8e-3; EfficientViT-
B0's on one input: eager 1.4e-4 in channels_last, 8.1e-4 in NCHW.) The parameters' gradients
are scaled by the largest of them all, as the tests scale them: some are zero up to rounding
(the bias of a layer a training BatchNorm follows), where a tensor's own scale would measure
noise. The timed step is forward, ``.sum().backward()``.

Weights are random and each BatchNorm's statistics and affine parameters are drawn at random, so
every folded BatchNorm changes the numbers. The output error is shown beside eager float32's
own (a deep random network can amplify rounding far past the float32 tolerance: there the
accelerated model passes when its error stays within twice eager's). Needs torchvision and
timm (``scripts/install-vision-cpu.sh`` on CPU). Writes JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import warnings
from collections import Counter
from pathlib import Path

import torch
from torch import nn

import mobilefuse
from mobilefuse.bench import report, timing
from mobilefuse.bench.verify import BACKWARD_TOL, FORWARD_TOL, relative_error

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from vision_models import define_missing_torchvision_ops  # noqa: E402

MODELS = ("torchvision:mobilenet_v2", "torchvision:mobilenet_v3_large",
          "torchvision:efficientnet_b0", "torchvision:shufflenet_v2_x1_0",
          "torchvision:mnasnet1_0", "torchvision:regnet_y_400mf", "torchvision:resnet50",
          "torchvision:convnext_tiny", "timm:mobilenetv3_large_100", "timm:efficientnet_b0",
          "timm:tf_efficientnet_b0", "timm:mixnet_s", "timm:ghostnet_100",
          "timm:efficientnet_es", "timm:mobilenetv4_conv_small", "timm:lcnet_050",
          "timm:fbnetc_100", "timm:hardcorenas_a", "timm:rexnet_100", "timm:repvit_m1",
          "timm:mobileone_s0", "timm:efficientvit_b0")
# Models whose eager training step crashes on a CPU in channels_last (PyTorch 2.13): oneDNN's
# strided 1x1 weight gradient on few input channels (see mobilefuse._pointwise_stride, which
# the accelerated models go around). Eager's float32 error is measured with oneDNN off; only
# the accelerated step is timed.
EAGER_TRAIN_CRASHES = {"timm:mobileone_s0": "uxlfoundation/oneDNN#6035"}
LAYOUTS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
CHECK_BATCH = 2
# Inputs a training step is checked on (--train): its errors hang on where rounding lands.
CHECK_DRAWS = 3


def build(spec: str) -> nn.Module:
    """``torchvision:<name>`` or ``timm:<name>`` with random weights, in eval mode."""
    source, _, name = spec.partition(":")
    define_missing_torchvision_ops()
    torch.manual_seed(0)
    if source == "torchvision":
        import torchvision

        model = getattr(torchvision.models, name)()
    elif source == "timm":
        import timm

        model = timm.create_model(name)
    else:
        raise ValueError(f"--models: expected torchvision:<name> or timm:<name>, got {spec!r}")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model.eval()


def logits(out: object) -> torch.Tensor:
    """The classifier output (some models return a tuple in eval mode)."""
    return out[0] if isinstance(out, (tuple, list)) else out


def sweep_one(spec: str, batch: int, size: int, layout: str, reps: int) -> dict:
    """Swaps, output errors and side-by-side latencies of one model."""
    fmt = LAYOUTS[layout]
    eager = build(spec).to(memory_format=fmt)
    fast = mobilefuse.accelerate(eager)
    swapped = Counter(type(m).__name__ for m in fast.modules()
                      if type(m).__module__.startswith("mobilefuse"))
    check = torch.randn(CHECK_BATCH, 3, size, size).contiguous(memory_format=fmt)
    with torch.no_grad():
        expected = logits(copy.deepcopy(eager).double()(check.double()))
        eager_error = relative_error(logits(eager(check)), expected)
        fast_error = relative_error(logits(fast(check)), expected)
        x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
        t_eager, t_fast = timing.time_cpu_side_by_side([lambda: eager(x), lambda: fast(x)],
                                                       reps=reps)
    bound = max(FORWARD_TOL[torch.float32], 2 * eager_error)
    return {"model": spec, "batch": batch, "size": size, "layout": layout,
            "swapped": dict(swapped), "eager_error": eager_error, "error": fast_error,
            "status": "PASS" if fast_error <= bound else "FAIL",
            "eager_ms": t_eager.median_ms, "accelerated_ms": t_fast.median_ms,
            "speedup": t_eager.median_ms / t_fast.median_ms}


def _step_results(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor | list[str]]:
    """One training step of ``model`` (its parameters' dtype) on ``x`` with a seeded random
    output gradient: its output, the input's gradient, every parameter's gradient and every
    floating-point buffer (running statistics) after it, each of the last two as one flat
    tensor in name order, and those names."""
    model.zero_grad(set_to_none=True)
    dtype = next(model.parameters()).dtype
    x = x.detach().to(dtype).requires_grad_()
    torch.manual_seed(0)  # the same dropout and stochastic-depth masks in every model
    out = logits(model(x))
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype))
    grads = [(name, p.grad) for name, p in model.named_parameters() if p.grad is not None]
    buffers = [(name, b) for name, b in model.named_buffers() if b.is_floating_point()]
    return {"output": out.detach(), "input_gradient": x.grad,
            "parameter_gradients": torch.cat([g.flatten() for _, g in grads] + [x.new_empty(0)]),
            "running_statistics": torch.cat([b.flatten() for _, b in buffers] + [x.new_empty(0)]),
            "names": [name for name, _ in grads + buffers]}


def _step_errors(actual: dict, expected: dict) -> dict[str, float]:
    """Per kind, the error of ``actual`` against ``expected`` (inf where the gradients or
    buffers are not the same ones)."""
    same = actual["names"] == expected["names"]
    return {kind: relative_error(actual[kind], ref) if same else float("inf")
            for kind, ref in expected.items() if kind != "names"}


def sweep_one_train(spec: str, batch: int, size: int, layout: str, reps: int) -> dict:
    """Swaps, training-step errors and side-by-side training-step latencies of one model."""
    fmt = LAYOUTS[layout]
    eager = build(spec).train().to(memory_format=fmt)
    reference = copy.deepcopy(eager).double()
    fast = mobilefuse.accelerate(copy.deepcopy(eager))
    swapped = Counter(type(m).__name__ for m in fast.modules()
                      if type(m).__module__.startswith("mobilefuse"))
    crashes = EAGER_TRAIN_CRASHES.get(spec) if layout == "channels_last" else None
    # Per draw of the checked input, eager's errors in each layout and the accelerated ones.
    eager_draws: dict[str, list[dict[str, float]]] = {name: [] for name in LAYOUTS}
    fast_draws = []
    for draw in range(CHECK_DRAWS):
        check = torch.randn(CHECK_BATCH, 3, size, size,
                            generator=torch.Generator().manual_seed(draw))
        expected = _step_results(copy.deepcopy(reference), check)
        for name, other in LAYOUTS.items():
            with torch.backends.mkldnn.flags(
                    enabled=spec not in EAGER_TRAIN_CRASHES or name != "channels_last"):
                eager_draws[name].append(_step_errors(
                    _step_results(copy.deepcopy(eager).to(memory_format=other),
                                  check.contiguous(memory_format=other)), expected))
        fast_draws.append(_step_errors(
            _step_results(copy.deepcopy(fast), check.contiguous(memory_format=fmt)), expected))
    kinds = list(fast_draws[0])
    eager_by_layout = {name: {kind: max(d[kind] for d in draws) for kind in kinds}
                       for name, draws in eager_draws.items()}
    eager_errors = {kind: max(e[kind] for e in eager_by_layout.values()) for kind in kinds}
    fast_errors = {kind: max(d[kind] for d in fast_draws) for kind in kinds}
    tolerance = {kind: FORWARD_TOL[torch.float32] if kind == "output"
                 else BACKWARD_TOL[torch.float32] for kind in fast_errors}
    passed = all(err <= max(tolerance[kind], 2 * eager_errors[kind])
                 for kind, err in fast_errors.items())
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)

    def step(model: nn.Module) -> None:
        logits(model(x)).sum().backward()

    if crashes is None:
        t_eager, t_fast = timing.time_cpu_side_by_side(
            [lambda: step(eager), lambda: step(fast)], reps=reps)
    else:
        t_eager, (t_fast,) = None, timing.time_cpu_side_by_side([lambda: step(fast)], reps=reps)
    return {"model": spec, "mode": "train", "batch": batch, "size": size, "layout": layout,
            "swapped": dict(swapped), "eager_crashes": crashes,
            "errors": {kind: {"error": err, "eager_error": eager_errors[kind],
                              "eager_error_by_layout": {name: errors[kind] for name, errors
                                                        in eager_by_layout.items()}}
                       for kind, err in fast_errors.items()},
            "error": max(fast_errors.values()), "eager_error": max(eager_errors.values()),
            "status": "PASS" if passed else "FAIL",
            "eager_ms": None if t_eager is None else t_eager.median_ms,
            "accelerated_ms": t_fast.median_ms,
            "speedup": None if t_eager is None else t_eager.median_ms / t_fast.median_ms}


def _timings(row: dict) -> str:
    if row["eager_ms"] is None:
        return (f"eager crashes ({row['eager_crashes']})  "
                f"accelerated {row['accelerated_ms']:7.2f} ms")
    return (f"eager {row['eager_ms']:7.2f} ms  accelerated {row['accelerated_ms']:7.2f} ms"
            f"  {row['speedup']:.2f}x")


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS),
                        help="comma-separated torchvision:<name> / timm:<name>")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--layout", choices=tuple(LAYOUTS), default="channels_last")
    parser.add_argument("--reps", type=int, default=15, help="timed samples per variant")
    parser.add_argument("--train", action="store_true",
                        help="a training step (batch statistics, gradients) instead of eval")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    run = sweep_one_train if args.train else sweep_one
    warnings.simplefilter("ignore")  # models' own deprecation notices
    allocator = timing.configure_allocator()
    rows = []
    for spec in args.models.split(","):
        row = run(spec, args.batch, args.size, args.layout, args.reps)
        rows.append(row)
        print(f"{row['status']} {spec:34s} error {row['error']:.1e} "
              f"(eager {row['eager_error']:.1e})  {_timings(row)}"
              f"  swapped {sum(row['swapped'].values())}", flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"environment": report.environment(torch.device("cpu")),
                                        "allocator": allocator, "results": rows}, indent=2))
    if any(row["status"] != "PASS" for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
