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

#: Where a Jetson names its board (a module constant so tests can point it elsewhere).
MODEL_FILE = Path("/proc/device-tree/model")
#: Telemetry keys of jtop's ``stats`` summarised over a benchmark (substring match, case-sensitive as jtop writes them).
TELEMETRY_KEYS = ("GPU", "Temp", "Power")
LIBRARIES = ("vla-export", "torch", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "polygraphy", "numpy")


def _jsonable(value: Any) -> Any:
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def jtop_snapshot() -> dict[str, Any] | None:
    """Power mode, clock lock and one ``stats`` sample (GPU load, clocks, temperatures, power) from jetson-stats'
    ``jtop`` service; None when jetson-stats is not installed or its service does not answer."""
    try:
        from jtop import jtop  # jetson-stats: optional, Jetson only
    except ImportError:
        return None
    try:
        with jtop() as jetson:
            if not jetson.ok():
                return None
            return {"nvpmodel": str(jetson.nvpmodel), "jetson_clocks": str(jetson.jetson_clocks), "stats": _jsonable(dict(jetson.stats))}
    except Exception as exc:  # jtop raises its own JtopException when the service is down: report it, do not fail the benchmark
        return {"error": f"jtop: {exc}"}


class JetsonTelemetry:
    """Samples jtop's ``stats`` in a thread while a benchmark runs; :meth:`summary` gives mean and max of the GPU
    load, temperatures and power. Does nothing (summary None) off a Jetson or without jetson-stats."""

    def __init__(self, interval_s: float = 0.5):
        self.interval_s = interval_s
        self.samples: list[dict[str, Any]] = []
        self.error: str | None = None
        self._thread: Any = None
        self._stop: Any = None

    def __enter__(self) -> JetsonTelemetry:
        import threading

        if jetson_model_file() is None:
            return self
        try:
            from jtop import jtop
        except ImportError:
            return self
        self._stop = threading.Event()

        def sample() -> None:
            try:
                with jtop(interval=self.interval_s) as jetson:
                    while not self._stop.is_set() and jetson.ok():
                        self.samples.append(dict(jetson.stats))
            except Exception as exc:  # the service went away: keep what was sampled, say why it stopped
                self.error = f"jtop: {exc}"

        self._thread = threading.Thread(target=sample, name="jtop-telemetry", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5 * self.interval_s + 5)

    def summary(self) -> dict[str, Any] | None:
        if self._thread is None:
            return None
        keys = sorted({k for s in self.samples for k, v in s.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                       and any(t in str(k) for t in TELEMETRY_KEYS)})
        out: dict[str, Any] = {"source": "jetson-stats (jtop)", "samples": len(self.samples), "error": self.error}
        for k in keys:
            values = [float(s[k]) for s in self.samples if isinstance(s.get(k), (int, float))]
            out[str(k)] = {"mean": sum(values) / len(values), "max": max(values)}
        return out


def jetson_model_file() -> str | None:
    """The board name when this is a Jetson, else None."""
    try:
        model = MODEL_FILE.read_text().strip("\x00\n ")
    except OSError:
        return None
    return model if "jetson" in model.lower() or "orin" in model.lower() else None


def jetson_info() -> dict[str, Any] | None:
    """On a Jetson: board, L4T release, power mode, clock lock and telemetry (jtop when installed, else one
    tegrastats line); None elsewhere."""
    try:
        model = MODEL_FILE.read_text().strip("\x00\n ")
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
    info["jtop"] = jtop_snapshot()
    info["tegrastats"] = _tegrastats_line() if not info["jtop"] or "error" in info["jtop"] else None
    if info["jetson_clocks"] is None and info["jtop"] and "jetson_clocks" in info["jtop"]:
        info["jetson_clocks"] = info["jtop"]["jetson_clocks"]  # jtop's service reads it without root
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
