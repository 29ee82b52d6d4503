"""Every ``schema`` string vla-export writes into a JSON file, named once.

Writers put these in their files and readers check them, so a version bump is one edit here and a
grep finds every file of a kind. A report's schema changes when its keys change (README says which).
"""

from __future__ import annotations

# --- records beside artifacts ---
MANIFEST = "vla-export/manifest/1"
MODEL_CONFIG = "vla-export/model-config/1"
MODEL_CONFIG_PREFIX = "vla-export/model-config/"  # any version of it is accepted by --config
CALIBRATION = "vla-export/calibration/1"
PARITY_REFERENCE = "vla-export/parity-reference/1"
REPLAY_REFERENCE = "vla-export/replay-reference/1"
POLYGRAPHY_REFERENCE = "vla-export/polygraphy-reference/1"
TRTEXEC_INPUTS = "vla-export/trtexec-inputs/1"
TRITON_REPOSITORY = "vla-export/triton-repository/1"
TRITON_SERVING = "vla-export/triton-serving/1"

# --- command reports (--json) ---
REPORT = "vla-export/report/1"  # a report that names no schema of its own
PARITY = "vla-export/parity/1"
REPLAY = "vla-export/replay/1"
QUANTIZE = "vla-export/quantize/1"  # with or without --budget (the budget run wrote REPORT before)
FAILURE = "vla-export/failure/1"
INSPECT = "vla-export/inspect/1"
ONNX_EXPORT = "vla-export/onnx-export/1"
SPLIT_EXPORT = "vla-export/split-export/1"
CALIB = "vla-export/calib/1"
TRT_BUILD = "vla-export/trt-build/1"
BENCH = "vla-export/bench/1"
BENCH_STREAMING = "vla-export/bench-streaming/1"
FLEET_BENCH = "vla-export/fleet-bench/1"
SENSITIVITY = "vla-export/sensitivity/1"
LOCATE = "vla-export/locate/1"
EVALUATE = "vla-export/evaluate/1"
