#!/bin/sh
# The options trtexec parses, from github:NVIDIA/TensorRT samples/common/sampleOptions.cpp at a tag.
# Usage: tools/trt_conformance/trtexec_options.sh TENSORRT_GIT_DIR TAG OUT.txt   (e.g. ... v10.3.0 trtexec-v10.3.0.options)
set -eu
repo=$1; tag=$2; out=$3
{
  echo "# github:NVIDIA/TensorRT $tag = commit $(git -C "$repo" rev-parse "$tag^{commit}")"
  echo "# made by: tools/trt_conformance/trtexec_options.sh TensorRT $tag $(basename "$out")"
  echo "# = git show $tag:samples/common/sampleOptions.cpp | grep -oE '\"--[A-Za-z0-9]+\"' | tr -d '\"' | sort -u"
  git -C "$repo" show "$tag:samples/common/sampleOptions.cpp" | grep -oE '"--[A-Za-z0-9]+"' | tr -d '"' | LC_ALL=C sort -u
} > "$out"
