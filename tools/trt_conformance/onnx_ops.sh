#!/bin/sh
# The ONNX operator support matrix of TensorRT's ONNX parser, from github:onnx/onnx-tensorrt docs/operators.md at a tag,
# as tab-separated rows: operator, supported (Y/N), types (comma-separated), restrictions.
# Usage: tools/trt_conformance/onnx_ops.sh ONNX_TENSORRT_GIT_DIR TAG OUT.tsv   (the stored mirror's newest tag: 10.1-GA)
set -eu
repo=$1; tag=$2; out=$3
{
  echo "# github:onnx/onnx-tensorrt $tag = commit $(git -C "$repo" rev-parse "$tag^{commit}"), docs/operators.md"
  echo "# made by: tools/trt_conformance/onnx_ops.sh onnx-tensorrt $tag $(basename "$out")"
  git -C "$repo" show "$tag:docs/operators.md" | grep -E '^\| [A-Z]' | grep -v '^| Operator ' \
    | awk -F'|' '{for (i = 2; i <= 5; i++) { gsub(/^[ \t]+|[ \t]+$/, "", $i) } print $2 "\t" $3 "\t" $4 "\t" $5}'
} > "$out"
