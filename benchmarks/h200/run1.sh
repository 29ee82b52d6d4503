#!/usr/bin/env bash
# H200 call 1: mobile-vla (random weights built on the GPU) with PyTorch eager fp32/fp16 and
# fp16/bf16 CUDA-graph replay, window 1 and 8, compute-only and end-to-end, with a profile of each.
# Run on the device machine from the repository root; results land in $OUT.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
{ nvidia-smi; python3 -c "import torch, transformers, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"; } 2>&1 | tee "$OUT/env.txt"
B="-b torch:cuda:fp32 -b torch:cuda:fp16 -b torch:cuda:fp16:cudagraph -b torch:cuda:bf16:cudagraph"
timeout 200 python3 -m vla_export.cli.bench preset:mobile-vla $B --window 1 --warmup 10 --iters 200 --profile --json "$OUT/h200-mobile-vla-w1.json" 2>&1 | tee "$OUT/w1.log"
timeout 200 python3 -m vla_export.cli.bench preset:mobile-vla $B --window 8 --warmup 5 --iters 50 --profile --json "$OUT/h200-mobile-vla-w8.json" 2>&1 | tee "$OUT/w8.log"
timeout 150 python3 -m vla_export.cli.bench preset:mobile-vla -b torch:cuda:fp16:compile:cudagraph --window 1 --warmup 10 --iters 200 --profile --json "$OUT/h200-mobile-vla-w1-compile.json" 2>&1 | tee "$OUT/w1-compile.log"
