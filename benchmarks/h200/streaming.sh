#!/usr/bin/env bash
# H200 streaming call: one control step (backbone on one frame + head on the window) vs the single-frame
# backbone and vs the unsplit policy on all T frames, mobile-vla preset with random weights built on the
# GPU, PyTorch fp16 eager and fp16 with CUDA-graph replay (+ patch embeddings as matmuls). Results in $OUT.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c "import sys, torch, transformers; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
} > "$OUT/streaming-env.txt" 2>&1
cat "$OUT/streaming-env.txt"
timeout 420 python3 -m vla_export.cli.bench --streaming preset:mobile-vla \
  -b torch:cuda:fp16 -b torch:cuda:fp16:cudagraph:patchmm --windows 1,8,16 --warmup 10 --iters 50 \
  --json "$OUT/streaming-h200-mobile-vla.json" 2>&1 | tee "$OUT/streaming-h200.log"
