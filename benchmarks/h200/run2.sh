#!/usr/bin/env bash
# H200 call 2: speed-ups for the PyTorch path (patch embeddings as matmuls, torch.compile default and
# max-autotune, with CUDA-graph capture), window 1 and 8, each profiled. Results land in $OUT.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
B1="-b torch:cuda:fp16:cudagraph:patchmm -b torch:cuda:fp16:compile:cudagraph:patchmm -b torch:cuda:fp16:compile=max-autotune-no-cudagraphs:cudagraph:patchmm -b torch:cuda:fp16:compile=max-autotune:patchmm"
timeout 380 python3 -m vla_export.cli.bench preset:mobile-vla $B1 --window 1 --warmup 10 --iters 200 --profile --json "$OUT/h200-mobile-vla-w1-fast.json" 2>&1 | tee "$OUT/w1-fast.log"
B8="-b torch:cuda:fp16:cudagraph:patchmm -b torch:cuda:fp16:compile:cudagraph:patchmm -b torch:cuda:fp16:compile=max-autotune-no-cudagraphs:cudagraph:patchmm"
timeout 190 python3 -m vla_export.cli.bench preset:mobile-vla $B8 --window 8 --warmup 5 --iters 50 --profile --json "$OUT/h200-mobile-vla-w8-fast.json" 2>&1 | tee "$OUT/w8-fast.log"
