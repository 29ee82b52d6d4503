#!/bin/bash
# Fleet benchmark on the lent GPU: mobile-vla (random weights) fp16 in the Python backend of a real tritonserver.
# Layout it expects (carried beside it): whl/ = nvidia_pytriton-0.7.0 (manylinux_2_35), tritonclient-2.73.0,
# python_rapidjson-1.25 (cp312), protobuf-6.33.6; src/ = vla_export/ and benchmarks/fleet_bench.py of this branch.
# Ran on a lent H100 on 2026-11-26: twice failing at model load, then through (see ../fleet.md). whl/ also held
# grpcio 1.81.1, and the pytriton wheel was repacked without the stubs of other Pythons (64 MiB carry limit).
cd "$(dirname "$0")"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
# The Python-backend stub imports vla_export with the venv's interpreter: make the carried copy visible to it too.
SP=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
printf '/tmp/site\n%s\n' "$PWD/src" > "$SP/zz-carry-triton.pth" && echo "wrote $SP/zz-carry-triton.pth"
python3 -c "import sys, sysconfig, numpy, torch, google.protobuf as pb; print(sys.version, sysconfig.get_config_var('LIBDIR'), numpy.__version__, torch.__version__, pb.__version__, torch.cuda.get_device_name(0))"
ls "$(python3 -c 'import sysconfig;print(sysconfig.get_config_var("LIBDIR"))')" | grep libpython
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nproc; df -h /dev/shm | tail -1
B="python3 src/benchmarks/fleet_bench.py preset:mobile-vla --device cuda --dtype float16 --queue-delay-us 2000"
timeout 200 $B --robots 1,8,32,64,96 --rate 10 --seconds 8 --max-batch 64 --instances 2 --frame 224x224 --raw-seconds 3 --json $OUT/fleet-gpu-10hz-224.json 2>&1 | grep -v PyCapsule | tail -25
timeout 150 $B --robots 16,64 --rate 0 --seconds 8 --max-batch 64 --instances 2 --frame 224x224 --raw-seconds 3 --json $OUT/fleet-gpu-closed-224.json 2>&1 | grep -v PyCapsule | tail -15
timeout 140 $B --robots 16,64 --rate 10 --seconds 8 --max-batch 64 --instances 4 --frame 480x640 --raw-seconds 3 --json $OUT/fleet-gpu-10hz-480x640.json 2>&1 | grep -v PyCapsule | tail -15
