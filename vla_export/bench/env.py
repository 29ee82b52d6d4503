"""The environment a benchmark ran in: CPU, GPU, driver, library versions, threads, Jetson power state.

Every recorded figure carries this. Nothing here imports an optional heavy module: library versions
come from package metadata, the GPU from torch only if torch is already imported, the driver and
the Jetson state from their command-line tools when present.
"""

from __future__ import annotations

import os
import platform
import resource
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

#: Where a Jetson names its board (a module constant so tests can point it elsewhere).
MODEL_FILE = Path("/proc/device-tree/model")
#: Telemetry keys of jtop's ``stats`` summarised over a benchmark (substring match, case-sensitive as jtop writes them).
TELEMETRY_KEYS = ("GPU", "Temp", "Power")
LIBRARIES = ("vla-export", "torch", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "polygraphy", "numpy")
TOOL_TIMEOUT_S = 5.0


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _run(cmd: list[str]) -> str | None:
    """Output of a diagnostic tool, or None if it is missing or fails (the report then says 'absent')."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def gpu_info() -> dict[str, Any] | None:
    """GPU name, memory, driver and CUDA version via torch (if CUDA is usable) and nvidia-smi."""
    info: dict[str, Any] = {}
    smi = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"])
    if smi:
        name, driver, mem, clock = (s.strip() for s in smi.splitlines()[0].split(","))
        info |= {"name": name, "driver": driver, "memory_total": mem, "sm_clock_max": clock}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {
            "name": props.name,
            "multiprocessors": props.multi_processor_count,
            "compute_capability": f"{props.major}.{props.minor}",
            "memory_bytes": props.total_memory,
            "cuda_runtime": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
    return info or None


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
    info["nvpmodel"] = _run(["nvpmodel", "-q"])
    info["jetson_clocks"] = _run(["jetson_clocks", "--show"])
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
        "gpu": gpu_info(),
        "jetson": jetson_info(),
        "libraries": library_versions(),
    }
