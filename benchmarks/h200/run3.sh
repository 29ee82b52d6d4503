#!/usr/bin/env bash
# H200 call 3: the fastest PyTorch paths found in calls 1-2 (patch embeddings as matmuls, CUDA graph,
# torch.compile default), window 1 and 8, profiled; JSON rewritten after every row. Results in $OUT.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
B="-b torch:cuda:fp16:cudagraph:patchmm -b torch:cuda:fp16:compile:cudagraph:patchmm"
timeout 200 python3 -m vla_export.cli.bench preset:mobile-vla $B --window 1 --warmup 10 --iters 200 --profile --json "$OUT/h200-mobile-vla-w1-best.json" 2>&1 | grep -v "^  warnings.warn\|UserWarning\|_warn_once" | tee "$OUT/w1-best.log"
timeout 200 python3 -m vla_export.cli.bench preset:mobile-vla $B --window 8 --warmup 5 --iters 50 --profile --json "$OUT/h200-mobile-vla-w8-best.json" 2>&1 | grep -v "^  warnings.warn\|UserWarning\|_warn_once" | tee "$OUT/w8-best.log"
