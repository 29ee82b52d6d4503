#!/usr/bin/env bash
# H200 call 6 (issue 24): one fleet configuration, three consecutive 10 s runs of 96 robots at 10 Hz against
# one server load, then the compiled anchor (the raw reference) in the same call. Run from the repository
# root on the device with the Triton wheels carried in .carry-triton/whl/ (nvidia_pytriton-0.7.0 repacked
# without the other Pythons' stubs and libpython, tritonclient-2.73.0, grpcio-1.81.1 and python_rapidjson-1.25
# for cp312, protobuf-6.33.6). Results in $OUT; what it printed is in ../fleet.md.
set -u -o pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .carry-triton/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
SP=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
printf '/tmp/site\n%s\n' "$PWD" > "$SP/zz-carry-triton.pth"  # the Python-backend stub imports vla_export too
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nproc
  python3 -c "import sys, numpy, torch, google.protobuf as pb, grpc; print(sys.version.split()[0], numpy.__version__, torch.__version__, pb.__version__, grpc.__version__, torch.cuda.get_device_name(0))"; } 2>&1 | tee "$OUT/fleet-env.txt"
(while sleep 20; do nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader; done) > "$OUT/fleet-smi.log" 2>&1 &
SMI=$!
timeout ${T:-440} python3 benchmarks/fleet_bench.py preset:mobile-vla --device cuda --dtype float16 --cuda-graphs --bucket-step 1 \
  --compile default --max-batch 32 --instances 2 --text-len 16 --frame 224x224 --client-processes 4 --queue-delay-us 2000 \
  --robots ${ROBOTS:-96,96,96} --rate 10 --seconds 10 --raw-seconds 0 --anchor-compile default --anchor-batches 64 --ready-timeout 360 \
  --json "$OUT/fleet-h200-2inst-b32-exact-10hz-x3.json" 2>&1 | grep -v "PyCapsule\|UserWarning\|warnings.warn" | tee "$OUT/fleet.log" | tail -30
kill $SMI
