#!/usr/bin/env bash
# One GPU session: build with CUDA, run the tests (GPU cases included), the benchmark runner,
# then the profiles (per-layer tables, roofline, ncu counters of the depthwise and block
# kernels); logs and result files go to $OUT (default ./gpu-out).
# Usage on the GPU machine, from the repository root:
#   bash benchmarks/gpu_session.sh [build] [tests] [bench] [profile] [batch128] [large] [sanitizer]
#   (default: the first four; batch128: the depthwise layers at batch 128, float32 and
#   bfloat16, the size the GPU targets name; large: the >2^31-element tests on cpu and cuda, which need more
#   host memory than the CPU machines have; sanitizer: compute-sanitizer over the CUDA cases)
# Each stage but build needs the build from an earlier call or stage on the same machine.
set -uo pipefail
OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MAX_JOBS="${MAX_JOBS:-16}"

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} 2>&1 | tee "$OUT/env.txt"

STAGES="${*:-build tests bench profile}"
want() { [[ " $STAGES " == *" $1 "* ]]; }

if want build; then
  pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
fi
python -c "import mobilefuse, json; print(json.dumps(mobilefuse.build_info()))" | tee -a "$OUT/env.txt"

if want tests; then
  python -m pytest tests -q -x -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -30
fi
if want bench; then
  # --quick keeps the depthwise section to 7 of its 28 layers, inside one 10-minute command.
  python -m mobilefuse.bench --quick --out "$OUT" 2>&1 | tee "$OUT/bench.log" | tail -80
fi
if want batch128; then
  # The runner again, its depthwise layers at the GPU targets' batch, in both timed dtypes.
  python -m mobilefuse.bench --quick --dw-batch 128 --dtype float32 --dtype bfloat16 \
    --out "$OUT/batch128" 2>&1 | tee "$OUT/bench-batch128.log" | tail -60
fi
if want profile; then
  for mode in "" "--train"; do
    name="efficientnet_b0${mode:+-train}"
    python -m mobilefuse.profile --model efficientnet_b0 --batch 32 --compare --roofline \
      --channels-last $mode --top 30 --out "$OUT/profile-$name" 2>&1 | tee "$OUT/profile-$name.log" | tail -40
  done
  rm -f "$OUT"/profile-*/trace*.json  # large; the tables and JSON carry the summary
  # Hardware counters of the depthwise and fused-block kernels (docs/profiling.md, section 3).
  metrics=gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__throughput.avg.pct_of_peak_sustained_elapsed,lts__t_sector_hit_rate.pct,sm__warps_active.avg.pct_of_peak_sustained_active,launch__registers_per_thread
  for op in depthwise_conv2d inverted_residual; do
    timeout 240 ncu --clock-control none --nvtx --nvtx-include "regex:mobilefuse::$op.*/" \
      --launch-count 40 --metrics "$metrics" --csv \
      python -m mobilefuse.profile --model efficientnet_b0 --batch 32 --channels-last --nvtx \
      --steps 1 --warmup 1 --compare >"$OUT/ncu-$op.csv" 2>"$OUT/ncu-$op.log" || tail -20 "$OUT/ncu-$op.log"
  done
  if command -v nsys >/dev/null; then
    timeout 240 nsys profile -t cuda,nvtx -o "$OUT/effb0" python -m mobilefuse.profile \
      --model efficientnet_b0 --batch 32 --nvtx --compare --steps 5 >"$OUT/nsys.log" 2>&1 &&
      nsys stats --report nvtx_sum,cuda_gpu_kern_sum "$OUT/effb0.nsys-rep" >"$OUT/nsys-summary.txt" 2>&1
    rm -f "$OUT"/effb0.nsys-rep "$OUT"/effb0.sqlite
  else
    echo "nsys is not on the PATH here" | tee "$OUT/nsys-summary.txt"
  fi
fi
if want large; then
  python -m pytest tests/test_large_tensors.py --slow -v -rs -p no:cacheprovider 2>&1 |
    tee "$OUT/large.log" | tail -20
fi
if want sanitizer; then
  # The op tests' CUDA cases (cuda and triton-cuda), once per tool; a clean run ends with
  # "ERROR SUMMARY: 0 errors".
  for tool in memcheck racecheck; do
    timeout 280 compute-sanitizer --tool "$tool" --print-limit 20 python -m pytest -q -x \
      -p no:cacheprovider -k cuda tests/test_activations.py tests/test_channel_shuffle.py \
      tests/test_depthwise_conv.py tests/test_squeeze_excite.py tests/test_inverted_residual.py \
      >"$OUT/sanitizer-$tool.log" 2>&1
    grep -E "ERROR SUMMARY|passed|failed" "$OUT/sanitizer-$tool.log" | tail -5
  done
fi
