#!/usr/bin/env bash
# H200 call 4 (after the preprocessing speed-up, commit 059ea2d): the shared preprocessing of one
# 720x1280 frame, then the two fastest PyTorch paths at window 1, compute and e2e. Results in $OUT.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -c "
import numpy as np, time
from vla_export.data.preprocess import preprocess_frame
f=np.random.default_rng(0).integers(0,256,(720,1280,3),dtype=np.uint8)
for _ in range(5): preprocess_frame(f)
ts=[]
for _ in range(100):
    t=time.perf_counter(); preprocess_frame(f); ts.append((time.perf_counter()-t)*1e3)
print('preprocess 720x1280 p50 ms', np.percentile(ts,50), 'p99', np.percentile(ts,99))
" 2>&1 | tee "$OUT/preprocess.log"
timeout 400 python3 -m vla_export.cli.bench preset:mobile-vla -b torch:cuda:fp16:cudagraph -b torch:cuda:fp16:compile:cudagraph:patchmm \
  --window 1 --warmup 10 --iters 200 --json "$OUT/h200-mobile-vla-w1-e2e-fastprep.json" 2>&1 | grep -v "warnings.warn\|UserWarning\|_warn_once" | tee "$OUT/e2e.log"
