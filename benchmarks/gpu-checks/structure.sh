#!/usr/bin/env bash
# Issue 22 (structure): after the refactor, the GPU paths on the lent GPU: every `-m gpu` test, then a short
# vla-bench on the mobile-vla preset (window 1) with its parity against float32, to show the tools still run
# there through the one runner selection. A check of behaviour, not a performance figure (200 iterations).
# Run from the repository root on the device; results in $OUT.
set -u -o pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import sys, torch, transformers, numpy; print(sys.version.split()[0], torch.__version__, torch.version.cuda, transformers.__version__, numpy.__version__, torch.cuda.get_device_name(0))"
  git log --oneline -1 2>/dev/null || true; } 2>&1 | tee "$OUT/env.txt"
timeout ${T_TESTS:-200} python3 -m pytest -q -p no:cacheprovider -m gpu -rs tests/backends/test_torch_frames.py tests/backends/test_torch_fast.py \
  tests/backends/test_torch_runner.py tests/backends/test_tensorrt.py tests/bench/test_cli_bench.py 2>&1 \
  | grep -v "warnings.warn\|UserWarning" | tail -25 | tee "$OUT/gpu-tests.log"
timeout ${T_BENCH:-200} python3 -m vla_export.cli.bench preset:mobile-vla -b torch:cuda:fp16:cudagraph --window 1 --warmup 10 --iters 200 \
  --mode compute --mode e2e-gpu --parity 2 --json "$OUT/bench.json" 2>&1 | grep -v "warnings.warn\|UserWarning\|_warn_once" | tail -30 | tee "$OUT/bench.log"
