#!/usr/bin/env bash
# H200 call 5 (issue 24): the GPU tests of the new paths, then one vla-bench run at window 1 with both
# preprocessing paths side by side (e2e = NumPy, e2e-gpu = raw frame to the GPU) and the compute levers
# (fused Q/K/V, int8 and fp8 linears) beside today's best, each with its parity against float32.
# Run from the repository root on the device; results in $OUT. What it printed is in ../latency-h200.md.
set -u -o pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader; nproc; uname -r
  python3 -c "import sys, torch, transformers, numpy; print(sys.version.split()[0], torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), transformers.__version__, numpy.__version__, torch.cuda.get_device_name(0))"
  command -v nvidia-cuda-mps-control || echo "no nvidia-cuda-mps-control"; } 2>&1 | tee "$OUT/env.txt"
timeout ${T_TESTS:-110} python3 -m pytest -q -p no:cacheprovider -m gpu -rs tests/backends/test_torch_frames.py tests/backends/test_torch_fast.py \
  tests/backends/test_torch_runner.py tests/bench/test_cli_bench.py 2>&1 | grep -v "warnings.warn\|UserWarning" | tail -25 | tee "$OUT/gpu-tests.log"
B="-b torch:cuda:fp16:compile:cudagraph:patchmm -b torch:cuda:fp16:compile:cudagraph:patchmm:fuseqkv"
B="$B -b torch:cuda:fp16:compile:cudagraph:patchmm:fuseqkv:int8 -b torch:cuda:fp16:compile:cudagraph:patchmm:fuseqkv:fp8 -b torch:cuda:fp16:cudagraph"
J="$OUT/h200-mobile-vla-w1-run5.json"
timeout ${T_BENCH:-330} python3 -m vla_export.cli.bench preset:mobile-vla $B --window 1 --warmup 10 --iters 200 \
  --mode compute --mode e2e --mode e2e-gpu --parity 4 --json "$J" 2>&1 | grep -v "warnings.warn\|UserWarning\|_warn_once" | tee "$OUT/bench.log"
python3 - "$J" <<'PY' 2>&1 | tee "$OUT/summary.txt"
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception as exc:
    sys.exit(f"no JSON: {exc}")
print("complete", d["complete"])
for r in d["results"]:
    m = {k: v["latency"]["p50_ms"] for k, v in r["modes"].items()}
    par = {k: (round(o["max_row_rel"], 5), round(o["cosine"], 6)) for k, o in (r.get("parity") or {}).get("outputs", {}).items()}
    ratio = {k: round(m[k] / m["compute"], 3) for k in ("e2e", "e2e-gpu") if k in m}
    print(f"{r['backend']:55s} " + " ".join(f"{k} {v:.3f}" for k, v in m.items()) + f" ratio {ratio} parity {par} rewrites {r['runner'].get('rewrites')}")
PY
