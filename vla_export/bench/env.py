"""The environment a benchmark ran in: CPU, GPU, driver, library versions, threads, Jetson power state.

Every recorded figure carries this. Nothing here imports an optional heavy module: library versions
come from package metadata, the GPU from torch only if torch is already imported, the driver and
the Jetson state from their command-line tools when present.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from vla_export.system import TOOL_TIMEOUT_S, cpu_model, gpu_info, run_tool, versions

LIBRARIES = ("vla-export", "torch", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "polygraphy", "numpy")


def jetson_info() -> dict[str, Any] | None:
    """On a Jetson: board, L4T release, power mode, clock lock and one tegrastats line; None elsewhere."""
    model_file = Path("/proc/device-tree/model")
    try:
        model = model_file.read_text().strip("\x00\n ")
    except OSError:
        return None
    if "jetson" not in model.lower() and "orin" not in model.lower():
        return None
    info: dict[str, Any] = {"model": model}
    try:
        info["l4t"] = Path("/etc/nv_tegra_release").read_text().splitlines()[0]
    except (OSError, IndexError):
        info["l4t"] = None
    info["nvpmodel"] = run_tool(["nvpmodel", "-q"])
    info["jetson_clocks"] = run_tool(["jetson_clocks", "--show"])
    info["tegrastats"] = _tegrastats_line()
    if info["jetson_clocks"] is None:
        info["warning"] = "clock lock unknown (jetson_clocks --show needs root): latencies may include DVFS ramp-up"
    return info


def _tegrastats_line() -> str | None:
    if shutil.which("tegrastats") is None:
        return None
    try:
        proc = subprocess.Popen(["tegrastats", "--interval", "100"], stdout=subprocess.PIPE, text=True)
    except OSError:
        return None
    try:
        return proc.stdout.readline().strip() if proc.stdout else None
    finally:
        proc.terminate()
        proc.wait(timeout=TOOL_TIMEOUT_S)


def jetson_model_name() -> str | None:
    info = jetson_info()
    return info["model"] if info else None


def capture_environment() -> dict[str, Any]:
    """Everything a figure needs to be reproduced or compared."""
    torch = sys.modules.get("torch")
    threads: dict[str, Any] = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if torch is not None:
        threads["torch_intra_op"] = torch.get_num_threads()
        threads["torch_tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    return {
        "host": platform.node(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        # Other work on the machine while it ran (a shared CI box makes CPU latencies noisy).
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "threads": threads,
        "gpu": gpu if (gpu := gpu_info())["name"] else None,
        "jetson": jetson_info(),
        "libraries": versions(LIBRARIES),
    }
