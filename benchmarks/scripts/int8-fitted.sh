#!/usr/bin/env bash
# INT8 on trained weights (issue 20 item 4): W8A8 (8 and 32 calibration windows), weight-only and the
# budgeted search on the fitted tiny policy; parity on held-out episodes (seed 1), the budget's search on
# another held-out set (seed 2) so the verdict is independent. Uses `make demo`'s fitted tiny (demo-out/)
# when present, else fits it. Results: benchmarks/results/int8-fitted/*.json, summarised in benchmarks/quantization.md.
set -euo pipefail
V=${V:-.venv/bin/vla-export}; D=${D:-demo-out}; R=${R:-benchmarks/results/int8-fitted}; W=${W:-/tmp/int8-fitted}
mkdir -p "$R" "$W"
if [ ! -f "$D/tiny.pt" ]; then
  $V episodes -o $D/episodes --count 32 --frames 18 --size 180x320 --seed 0
  $V episodes -o $D/held-out --count 4 --frames 18 --size 180x320 --seed 1
  $V init --preset tiny --fit $D/episodes --val $D/held-out -o $D/tiny.pt --seed 0
  $V onnx $D/tiny.pt -o $D/tiny.onnx --debug-outputs
fi
$V episodes -o $W/search --count 4 --frames 18 --size 180x320 --seed 2
for N in 8 32; do
  $V calib $D/episodes --onnx $D/tiny.onnx -o $W/calib$N.npz --samples $N
  $V quantize $D/tiny.onnx --int8 --calib $W/calib$N.npz -o $W/tiny.w8a8-c$N.onnx
  $V parity $D/tiny.pt $W/tiny.w8a8-c$N.onnx --samples 24 --data $D/held-out --strict --json $R/w8a8-calib$N.parity.json || true
done
$V quantize $D/tiny.onnx --int8-weights -o $W/tiny.int8w.onnx
$V parity $D/tiny.pt $W/tiny.int8w.onnx --samples 24 --data $D/held-out --strict --json $R/int8w.parity.json || true
$V quantize $D/tiny.onnx --int8 --calib $W/calib8.npz --data $W/search --eval-samples 16 \
   --max-action-error 0.05 --min-cosine 0.99 --json $R/budget.json -o $W/tiny.budget.onnx || true
$V parity $D/tiny.pt $W/tiny.budget.onnx --samples 24 --data $D/held-out --strict --json $R/budget.parity.json || true
# the random-weight tiny through the same commands, for the comparison
$V init --preset tiny -o $W/random.pt --seed 0
$V onnx $W/random.pt -o $W/random.onnx --debug-outputs
$V calib $D/episodes --onnx $W/random.onnx -o $W/rcalib8.npz --samples 8
$V quantize $W/random.onnx --int8 --calib $W/rcalib8.npz -o $W/random.w8a8.onnx
$V parity $W/random.pt $W/random.w8a8.onnx --samples 24 --data $D/held-out --json $R/random-w8a8.parity.json || true
$V quantize $W/random.onnx --int8-weights -o $W/random.int8w.onnx
$V parity $W/random.pt $W/random.int8w.onnx --samples 24 --data $D/held-out --json $R/random-int8w.parity.json || true
# the budget with the feature bound too (parity judges features by 0.05 relative error per frame)
$V quantize $D/tiny.onnx --int8 --calib $W/calib8.npz --data $W/search --eval-samples 16 \
   --max-action-error 0.05 --min-cosine 0.99 --max-feature-rel-error 0.05 --json $R/budget-features.json -o $W/tiny.budget-features.onnx || true
$V parity $D/tiny.pt $W/tiny.budget-features.onnx --samples 24 --data $D/held-out --strict --json $R/budget-features.parity.json || true
