#!/usr/bin/env bash
# One GPU session in one call: build with CUDA, run the tests (GPU cases included), then the
# benchmark runner; logs and the results file go to $OUT (default ./gpu-out).
# Usage on the GPU machine, from the repository root: bash benchmarks/gpu_session.sh
set -uo pipefail
OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MAX_JOBS="${MAX_JOBS:-16}"

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} 2>&1 | tee "$OUT/env.txt"

pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
python -c "import mobilefuse, json; print(json.dumps(mobilefuse.build_info()))" | tee -a "$OUT/env.txt"

python -m pytest tests -q -x -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -30
# --quick keeps the depthwise section to 7 of its 28 layers, inside one 10-minute command.
python -m mobilefuse.bench --quick --out "$OUT" 2>&1 | tee "$OUT/bench.log" | tail -80
