#!/usr/bin/env bash
# Streaming benchmark on the CPU (tiny and small presets), PyTorch parts and ONNX Runtime split parts.
# Run from the repository root: bash benchmarks/streaming-cpu.sh [WORKDIR]
set -euo pipefail
W=${1:-/tmp/streaming-bench}
BIN=.venv/bin
mkdir -p "$W" benchmarks/results
$BIN/vla-export init --preset tiny -o "$W/tiny.pt" --seed 0
$BIN/vla-export onnx "$W/tiny.pt" --split -o "$W/tiny.onnx" > "$W/tiny.split.log" 2>&1
$BIN/vla-bench --streaming "$W/tiny.pt" "$W/tiny" --windows 1,4,8,16 --warmup 5 --iters 50 \
  --json benchmarks/results/streaming-cpu-tiny.json
$BIN/vla-export init --preset small -o "$W/small.pt" --seed 0
$BIN/vla-export onnx "$W/small.pt" --split -o "$W/small.onnx" > "$W/small.split.log" 2>&1
$BIN/vla-bench --streaming "$W/small.pt" "$W/small" --windows 1,8,16 --warmup 3 --iters 20 \
  --json benchmarks/results/streaming-cpu-small.json
