#!/usr/bin/env bash
# H200 call 7 (issue 24), after run 5: the GPU preprocessing now replays a captured CUDA graph (one launch
# instead of ~15 kernels). The GPU tests of the staging, then the fastest path of run 5 (fused Q/K/V) and the
# plain CUDA-graph path with both preprocessing paths, and the fp8 re-packing that run 5's time limit cut off.
set -u -o pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$OUT/env.txt"
timeout 35 python3 -m pytest -q -p no:cacheprovider -m gpu -rs tests/backends/test_torch_frames.py 2>&1 | tail -4 | tee "$OUT/gpu-tests.log"
J="$OUT/h200-mobile-vla-w1-run6.json"
timeout ${T_BENCH:-140} python3 -m vla_export.cli.bench preset:mobile-vla -b torch:cuda:fp16:compile:cudagraph:patchmm:fuseqkv \
  -b torch:cuda:fp16:cudagraph -b torch:cuda:fp16:compile:cudagraph:patchmm:fuseqkv:fp8 --window 1 --warmup 10 --iters 200 \
  --mode compute --mode e2e --mode e2e-gpu --parity 2 --json "$J" 2>&1 | grep -v "warnings.warn\|UserWarning\|_warn_once" > "$OUT/bench.log"
python3 - "$J" <<'PY' 2>&1 | tee "$OUT/summary.txt"
import json, sys
d = json.load(open(sys.argv[1]))
print("complete", d["complete"])
for r in d["results"]:
    m = {k: v["latency"]["p50_ms"] for k, v in r["modes"].items()}
    ph = {k: {a: round(b, 3) for a, b in v["phases_p50_ms"].items()} for k, v in r["modes"].items() if v["phases_p50_ms"]}
    print(r["backend"], {k: round(v, 3) for k, v in m.items()}, {k: round(m[k] / m["compute"], 3) for k in ("e2e", "e2e-gpu") if k in m}, ph)
PY
