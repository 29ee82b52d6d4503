# All set-up happens here: `make demo` and `make test` create .venv themselves and are idempotent.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.vla-export-installed
TORCH  ?= torch==2.13.0
PYTRITON ?= nvidia-pytriton==0.7.0
# TensorRT for RTX (the `trt-rtx` extra): the real ONNX parser and builder for the conformance gate in `make test`.
TRT_RTX ?= tensorrt-rtx-cu12==1.7.1.116
# The oldest supported transformers major: its Kosmos-2/CLIP key layout differs from 5.x.
COMPAT ?= $(VENV)/compat-transformers4
# Installed with --no-deps: the exact packages that transformers 4.x needs and the venv lacks or holds
# at 5.x's versions (requests and its own: huggingface_hub 0.x uses it). With dependencies resolved,
# pip re-installs numpy & co. into the target and prints its red resolver ERROR about the venv's
# --no-deps nvidia-pytriton, which this install does not touch.
COMPAT_PKGS ?= "transformers==4.57.*" "huggingface_hub>=0.34,<1.0" "tokenizers>=0.22,<0.23" "requests>=2.32,<3" "charset-normalizer>=3,<4" "idna>=3,<4" "urllib3>=2,<3" certifi
DEMO   ?= demo-out
# The device profile (JetPack 6.x): a venv that sees the system TensorRT (python3-libnvinfer from apt)
# and holds what the engine path needs, and no torch (the package itself goes in with --no-deps).
JETSON_VENV ?= .venv-jetson
JETSON_PKGS ?= "numpy>=1.24" "onnx>=1.16" "onnxruntime>=1.18" "cuda-python>=12,<13" "polygraphy>=0.49" "typer>=0.12" "rich>=13" "h5py>=3.8" "psutil>=5.9"

.PHONY: install demo test test-compat test-gpu jetson perf-analyzer clean

install: $(STAMP)

# torch goes in first, on its own: any other route makes pip resolve the newest CUDA build.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e '.[dev]'
	@# The Triton server for `vla-export serve` and its tests: the wheel's files only, numpy 2 kept (see pyproject's serve extra).
	@$(BIN)/python -m pip install -q --no-deps "$(PYTRITON)" || echo "note: no $(PYTRITON) wheel for this platform; the serve tests will skip"
	@# The real TensorRT-RTX builder for the conformance gate (tests/export/test_trt_rtx_gate.py); x86_64/Windows wheels only.
	@$(BIN)/python -m pip install -q "$(TRT_RTX)" || echo "note: $(TRT_RTX) cannot be installed here; the TensorRT-RTX gate will skip"
	@touch $(STAMP)

demo: install
	@rm -rf $(DEMO) && mkdir -p $(DEMO)
	@# A fitted policy (random weights hardly look at their inputs, so no check against them can fail):
	@# trained on 32 synthetic episodes, checked on 4 held-out ones (other seeds). Every parity and replay is --strict.
	$(BIN)/vla-export episodes -o $(DEMO)/episodes --count 32 --frames 18 --size 180x320 --seed 0
	$(BIN)/vla-export episodes -o $(DEMO)/held-out --count 4 --frames 18 --size 180x320 --seed 1
	$(BIN)/vla-export init --preset tiny --fit $(DEMO)/episodes --val $(DEMO)/held-out -o $(DEMO)/tiny.pt --seed 0
	$(BIN)/vla-export inspect $(DEMO)/tiny.pt --json $(DEMO)/tiny.inspect.json
	$(BIN)/vla-export onnx $(DEMO)/tiny.pt -o $(DEMO)/tiny.onnx --debug-outputs --json $(DEMO)/tiny.onnx.report.json
	$(BIN)/vla-export parity $(DEMO)/tiny.pt $(DEMO)/tiny.onnx --samples 24 --data $(DEMO)/held-out --strict --json $(DEMO)/tiny.parity.json
	$(BIN)/vla-export calib $(DEMO)/episodes --onnx $(DEMO)/tiny.onnx -o $(DEMO)/calibration/tiny.npz --samples 32
	$(BIN)/vla-export quantize $(DEMO)/tiny.onnx --int8 --calib $(DEMO)/calibration/tiny.npz
	$(BIN)/vla-export parity $(DEMO)/tiny.pt $(DEMO)/tiny.int8.onnx --samples 24 --data $(DEMO)/held-out --strict --json $(DEMO)/tiny.int8.parity.json
	$(BIN)/vla-export inspect $(DEMO)/tiny.int8.onnx --json $(DEMO)/tiny.int8.inspect.json
	@# One real engine: the Q/DQ model through TensorRT for RTX's builder (ahead of time, no GPU needed), then its record.
	@if $(BIN)/python -c "import tensorrt_rtx" 2>/dev/null; then \
	  echo "$(BIN)/vla-export trt $(DEMO)/tiny.int8.onnx -o $(DEMO)/tiny.int8.engine" && \
	  $(BIN)/vla-export trt $(DEMO)/tiny.int8.onnx -o $(DEMO)/tiny.int8.engine && \
	  echo "$(BIN)/vla-export inspect $(DEMO)/tiny.int8.engine" && \
	  $(BIN)/vla-export inspect $(DEMO)/tiny.int8.engine; \
	else echo "note: TensorRT-RTX (tensorrt_rtx) is not installed here ($(TRT_RTX)): no engine built"; fi
	$(BIN)/vla-export quantize $(DEMO)/tiny.onnx --int8-weights
	$(BIN)/vla-export parity $(DEMO)/tiny.pt $(DEMO)/tiny.int8w.onnx --samples 24 --data $(DEMO)/held-out --strict --json $(DEMO)/tiny.int8w.parity.json
	$(BIN)/vla-bench $(DEMO)/tiny.pt $(DEMO)/tiny.onnx $(DEMO)/tiny.int8.onnx -b torch -b onnxrt:cpu --window 4 --warmup 3 --iters 20 --json $(DEMO)/tiny.bench.json --plot $(DEMO)/tiny.bench.png
	@# The Jetson's build (TensorRT 10.3) as a trtexec line: needs no TensorRT here.
	$(BIN)/vla-export trt $(DEMO)/tiny.onnx -o $(DEMO)/tiny.engine --fp16 --print-trtexec
	$(BIN)/vla-export onnx $(DEMO)/tiny.pt --split -o $(DEMO)/tiny.onnx --json $(DEMO)/tiny.split.report.json
	$(BIN)/vla-export episodes -o $(DEMO)/replay-episode --count 1 --frames 12 --size 360x640 --seed 1
	$(BIN)/vla-export replay $(DEMO)/tiny.pt $(DEMO)/tiny.split.json $(DEMO)/replay-episode/*.h5 --strict --json $(DEMO)/tiny.replay.json --plot $(DEMO)/tiny.replay.png
	$(BIN)/vla-export evaluate $(DEMO)/tiny.pt $(DEMO)/tiny.onnx $(DEMO)/tiny.int8.onnx $(DEMO)/tiny.int8w.onnx $(DEMO)/tiny.split.json --data $(DEMO)/held-out --strict --json $(DEMO)/tiny.evaluate.json
	@echo "demo: OK (artifacts in $(DEMO)/)"

test: install
	$(BIN)/python -m pytest -q
	$(MAKE) --no-print-directory test-compat

# The checkpoint and model tests again under transformers 4.x (installed beside, not over, 5.x).
test-compat: install
	@test -f $(COMPAT)/.ok || ($(BIN)/python -m pip install -q --no-deps --target $(COMPAT) $(COMPAT_PKGS) && touch $(COMPAT)/.ok)
	PYTHONPATH=$(COMPAT) $(BIN)/python -m pytest -q -p no:cacheprovider tests/models tests/cli/test_checkpoint_cmds.py

# Tests that need TensorRT and/or a CUDA GPU; they skip with the reason elsewhere.
test-gpu: install
	$(BIN)/python -m pytest -q -m "trt or gpu" -rs

jetson:
	@test -x $(JETSON_VENV)/bin/python || $(PYTHON) -m venv --system-site-packages $(JETSON_VENV)
	$(JETSON_VENV)/bin/python -m pip install -q $(JETSON_PKGS)
	$(JETSON_VENV)/bin/python -m pip install -q --no-deps -e .
	@$(JETSON_VENV)/bin/python -c "import tensorrt; print('TensorRT', tensorrt.__version__, 'from', tensorrt.__file__)" \
	  || echo "warning: TensorRT's Python bindings are not visible: sudo apt install nvidia-tensorrt python3-libnvinfer"
	@$(JETSON_VENV)/bin/python -c "import torch" 2>/dev/null && echo "note: a system torch is visible; the engine path does not use it" || true
	$(JETSON_VENV)/bin/vla-export --help > /dev/null && echo "jetson: OK ($(JETSON_VENV)/bin/vla-export, vla-bench)"

# Triton's perf_analyzer for the served model (tests/serve/test_perf_analyzer.py runs it when present):
# from the tritonclient 2.51.0 wheel, the last one that ships the binary (see the script).
perf-analyzer: install
	tools/get_perf_analyzer.sh $(VENV)

clean:
	rm -rf $(DEMO) build *.egg-info .pytest_cache
