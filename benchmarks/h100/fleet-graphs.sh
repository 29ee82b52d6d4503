#!/bin/bash
# GPU serving with CUDA graphs per batch bucket (vla-export triton --cuda-graphs), on the lent GPU, from the repository root:
#   bash benchmarks/h100/fleet-graphs.sh tests          # the GPU tests of the torch runner (graph buckets, GPU preprocessing)
#   bash benchmarks/h100/fleet-graphs.sh micro ARGS...  # benchmarks/backbone_buckets.py (in-process, no server)
#   bash benchmarks/h100/fleet-graphs.sh fleet ARGS...  # benchmarks/fleet_bench.py: a real tritonserver, N robots, raw side by side
# (T=seconds bounds one stage.) What each call ran is in ../fleet.md.
# Carried beside the tree: .carry-triton/whl/ = nvidia_pytriton-0.7.0 (manylinux_2_35, repacked without the stubs and
# libpython of other Pythons to fit the 64 MiB carry), tritonclient-2.73.0, grpcio-1.81.1 (cp312), python_rapidjson-1.25
# (cp312), protobuf-6.33.6. The device's python3 (3.12) has torch 2.11 with CUDA, numpy, onnx, onnxruntime, pytest.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .carry-triton/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
# The Python-backend stub imports vla_export with this interpreter: a .pth makes the tree visible to it too.
SP=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
printf '/tmp/site\n%s\n' "$PWD" > "$SP/zz-carry-triton.pth"
python3 -c "import sys, numpy, torch, google.protobuf as pb; print(sys.version.split()[0], numpy.__version__, torch.__version__, pb.__version__, torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader; nproc
OUT=${OUT:-/tmp/out}
stage=$1; shift
case "$stage" in
tests)
  timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu -rs tests/backends/test_torch_runner.py 2>&1 | tail -6
  ;;
micro)
  timeout ${T:-450} python3 benchmarks/backbone_buckets.py preset:mobile-vla "$@" 2>&1 | grep -v "UserWarning\|warnings.warn" | tail -40
  ;;
fleet)
  timeout ${T:-560} python3 benchmarks/fleet_bench.py preset:mobile-vla --device cuda --dtype float16 --cuda-graphs --max-batch 64 \
    --frame 224x224 --client-processes 4 "$@" 2>&1 | grep -v "PyCapsule\|UserWarning\|warnings.warn" | tail -40
  ;;
esac
