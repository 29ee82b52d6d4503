#!/bin/sh
# The names the real TensorRT Python bindings export, from the wheels on the package index (no libnvinfer needed).
# Usage: tools/trt_conformance/binding_names.sh PACKAGE==VERSION OUT.names   (e.g. tensorrt-cu12-bindings==10.3.0)
# Every class, enum value, method and property that pybind11 registers is a C string in tensorrt.so; the
# linker merges a string into the tail of a longer one (INT8 lives inside UINT8), so a name is present when
# some listed string ENDS with it. tests/test_trt_conformance.py reads these files.
set -eu
spec=$1; out=$2
dir=$(mktemp -d)
pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$dir" "$spec"
wheel=$(ls "$dir"/*.whl)
python3 -m zipfile -e "$wheel" "$dir/x"
{
  echo "# $(basename "$wheel") sha256 $(sha256sum "$wheel" | cut -d' ' -f1)"
  echo "# made by: tools/trt_conformance/binding_names.sh $spec $(basename "$out")"
  echo "# = strings -n 3 tensorrt_bindings/tensorrt.so | grep -E '^[A-Za-z_][A-Za-z0-9_]*\$' | grep -v '^_Z' | sort -u"
  strings -n 3 "$dir/x/tensorrt_bindings/tensorrt.so" | grep -E '^[A-Za-z_][A-Za-z0-9_]*$' | grep -v '^_Z' | LC_ALL=C sort -u
} > "$out"
rm -rf "$dir"
