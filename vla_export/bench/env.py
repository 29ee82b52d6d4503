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


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def jtop_record(jetson: Any) -> dict[str, Any]:
    """One reading of a running ``jtop`` through its documented properties (jetson-stats 4 and later):
    ``power`` ({"rail": {NAME: {"power": mW, "online": ...}}, "tot": {"power": mW}}), ``gpu`` ({NAME:
    {"status": {"load": %}, "freq": {"cur": kHz}}}) and ``temperature`` ({NAME: {"temp": degC, "online": ...}},
    -256 when offline). Fields a board does not have are left out."""
    rec: dict[str, Any] = {"rails_w": {}, "temps_c": {}}
    power = getattr(jetson, "power", None) or {}
    total = _number((power.get("tot") or {}).get("power"))
    if total is not None:
        rec["power_w"] = total / 1e3
    for name, rail in (power.get("rail") or {}).items():
        mw = _number((rail or {}).get("power"))
        if mw is not None and (rail or {}).get("online", True):
            rec["rails_w"][str(name)] = mw / 1e3
    gpus = getattr(jetson, "gpu", None) or {}
    for name in gpus:  # the first GPU: the integrated one on every Jetson
        gpu = gpus[name] or {}
        rec["gpu"] = str(name)
        khz = _number((gpu.get("freq") or {}).get("cur"))
        load = _number((gpu.get("status") or {}).get("load"))
        if khz is not None:
            rec["gpu_mhz"] = khz / 1e3
        if load is not None:
            rec["gpu_load_pct"] = load
        break
    for name, sensor in (getattr(jetson, "temperature", None) or {}).items():
        c = _number((sensor or {}).get("temp"))
        if c is not None and c > -256 and (sensor or {}).get("online", True):
            rec["temps_c"][str(name)] = c
    return rec


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarise_jtop(records: list[dict[str, Any]], samples_s: list[float] | None = None, *, idle_power_w: float | None = None) -> dict[str, Any]:
    """Mean power (total and per rail), GPU clock, GPU load and peak temperatures over ``records``; with the
    window's per-iteration seconds also the energy per inference (mean total power x mean latency: the whole
    board's, idle included, and above ``idle_power_w`` when the idle power was measured before the run)."""
    out: dict[str, Any] = {"source": "jetson-stats (jtop)", "samples": len(records)}
    if not records:
        return out | {"note": "no jtop reading inside this timed window (shorter than the service's interval): time it longer with --duration"}
    power = [r["power_w"] for r in records if "power_w" in r]
    mhz = [r["gpu_mhz"] for r in records if "gpu_mhz" in r]
    load = [r["gpu_load_pct"] for r in records if "gpu_load_pct" in r]
    rails = sorted({k for r in records for k in r["rails_w"]})
    temps = sorted({k for r in records for k in r["temps_c"]})
    out |= {
        "power_w": {"mean": _mean(power), "max": max(power)} if power else None,
        "rails_w": {k: _mean([r["rails_w"][k] for r in records if k in r["rails_w"]]) for k in rails},
        "gpu": next((r["gpu"] for r in records if "gpu" in r), None),
        "gpu_mhz": {"mean": _mean(mhz), "min": min(mhz), "max": max(mhz)} if mhz else None,
        "gpu_load_pct": _mean(load),
        "temps_c_max": {k: max(r["temps_c"][k] for r in records if k in r["temps_c"]) for k in temps},
    }
    out["temp_c_max"] = max(out["temps_c_max"].values()) if temps else None
    if samples_s and power:
        latency_ms = 1e3 * sum(samples_s) / len(samples_s)
        out["energy_mj_per_inference"] = out["power_w"]["mean"] * latency_ms  # W x ms = mJ
        if idle_power_w is not None:
            out["idle_power_w"] = idle_power_w
            out["energy_above_idle_mj_per_inference"] = max(0.0, out["power_w"]["mean"] - idle_power_w) * latency_ms
    return out


class JetsonTelemetry:
    """Reads jtop in a thread while a benchmark runs: per timed window (a :class:`~vla_export.bench.monitor.Monitor`
    named ``jetson``) the power, GPU clock and load, temperatures and energy per inference; :meth:`before` measures
    the idle board first; :meth:`summary` covers the whole run. Does nothing (summaries None) off a Jetson or
    without jetson-stats."""

    name = "jetson"

    def __init__(self, interval_s: float = 0.25):
        self.interval_s = interval_s
        self.samples: list[tuple[float, dict[str, Any]]] = []  # (monotonic seconds, jtop_record)
        self.error: str | None = None
        self.service_interval_s: float | None = None
        self.idle_power_w: float | None = None
        self._thread: Any = None
        self._stop: Any = None
        self._t0: float | None = None

    @property
    def active(self) -> bool:
        return self._thread is not None

    def __enter__(self) -> JetsonTelemetry:
        import threading
        import time

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
                    self.service_interval_s = _number(getattr(jetson, "interval", None))  # the service may run slower
                    while not self._stop.is_set() and jetson.ok():
                        self.samples.append((time.monotonic(), jtop_record(jetson)))
            except Exception as exc:  # the service went away: keep what was sampled, say why it stopped
                self.error = f"jtop: {exc}"

        self._thread = threading.Thread(target=sample, name="jtop-telemetry", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5 * self.interval_s + 5)

    def _between(self, t0: float, t1: float) -> list[dict[str, Any]]:
        return [r for t, r in list(self.samples) if t0 <= t <= t1]

    def before(self, seconds: float) -> dict[str, Any] | None:
        """Watch the idle board for ``seconds`` (the caller does nothing meanwhile); its mean power is the idle power."""
        import time

        if not self.active:
            return None
        t0 = time.monotonic()
        time.sleep(seconds)
        summary = summarise_jtop(self._between(t0, time.monotonic()))
        self.idle_power_w = (summary.get("power_w") or {}).get("mean")
        return summary

    # the Monitor protocol (bench/monitor.py)
    def start(self) -> None:
        import time

        self._t0 = time.monotonic()

    def stop(self, samples_s: Any = ()) -> dict[str, Any] | None:
        import time

        if not self.active or self._t0 is None:
            return None
        records = self._between(self._t0, time.monotonic())
        self._t0 = None
        return summarise_jtop(records, list(samples_s), idle_power_w=self.idle_power_w) | {"error": self.error}

    def warnings(self, summary: dict[str, Any]) -> list[str]:
        return [summary["note"]] if summary.get("note") else []

    def summary(self) -> dict[str, Any] | None:
        """The whole run's readings summarised (None off a Jetson or without jetson-stats)."""
        if not self.active:
            return None
        return summarise_jtop([r for _, r in self.samples]) | {"error": self.error, "requested_interval_s": self.interval_s,
                                                                 "service_interval_s": self.service_interval_s}


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
