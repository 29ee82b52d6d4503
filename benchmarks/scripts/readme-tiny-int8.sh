# The tiny W8A8 figures quoted in README.md (features error on calibration/held-out episodes, sensitivity cost).
# Run from the checkout root; results in $D. See benchmarks/readme-figures.md.
set -x
V=.venv/bin/vla-export; D=${D:-/tmp/readme-int8}
uptime
$V init --preset tiny -o $D/tiny.pt --seed 0
$V onnx $D/tiny.pt -o $D/tiny.onnx --debug-outputs
$V episodes -o $D/episodes --count 2 --frames 8 --size 180x320
$V episodes -o $D/heldout --count 2 --frames 8 --size 180x320 --seed 1
$V calib $D/episodes --onnx $D/tiny.onnx -o $D/calibration/tiny.npz --samples 8
$V quantize $D/tiny.onnx --int8 --calib $D/calibration/tiny.npz
$V parity $D/tiny.pt $D/tiny.int8.onnx --samples 8 --data $D/episodes --json $D/tiny.int8.calib-episodes.json
$V parity $D/tiny.pt $D/tiny.int8.onnx --samples 8 --data $D/heldout --json $D/tiny.int8.heldout.json
$V sensitivity $D/tiny.onnx $D/tiny.int8.onnx --data $D/heldout --json $D/tiny.sensitivity.json
uptime
