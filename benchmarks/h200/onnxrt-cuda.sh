#!/usr/bin/env bash
# H200: does OnnxrtRunner run on CUDA there (or say that it fell back)? tiny preset: init -> onnx -> parity on CUDA EP.
# Run on the device machine from the repository root; results land in $OUT.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
{
  nvidia-smi --query-gpu=name,driver_version --format=csv
  python3 -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__)"
  for m in onnx onnxscript onnxruntime onnxslim; do python3 -c "import $m; print('$m', $m.__version__)" 2>&1 | tail -1; done
  python3 -c "import onnxruntime as o; print('providers', o.get_available_providers())" 2>&1 | tail -1
} 2>&1 | tee "$OUT/env.txt"
W=/tmp/w; mkdir -p $W
V="python3 -m vla_export.cli.main"
timeout 120 $V init --preset tiny -o $W/tiny.pt --seed 0 2>&1 | tail -2 | tee "$OUT/run.log"
timeout 200 $V onnx $W/tiny.pt -o $W/tiny.onnx --debug-outputs --json "$OUT/onnx-report.json" 2>&1 | grep -v "^ \|Warn\|torch.onnx" | tail -30 | tee -a "$OUT/run.log"
timeout 120 $V parity $W/tiny.pt $W/tiny.onnx --provider CUDAExecutionProvider --provider CPUExecutionProvider --samples 8 --json "$OUT/parity-cuda.json" 2>&1 | tail -30 | tee -a "$OUT/run.log"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/backends/test_onnxrt.py 2>&1 | tail -5 | tee -a "$OUT/run.log"
