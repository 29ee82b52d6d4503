"""Facts about this machine that models, backends, manifests and benchmarks all record.

One module, low in the layers, so that a manifest, an engine's GPU check and a benchmark's
environment describe the machine the same way: package versions, peak memory, the CPU, the GPU.
Nothing heavy is imported: versions come from package metadata, the GPU from whatever answers first.
"""

from __future__ import annotations

import platform
import resource
import shutil
import subprocess
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from vla_export.lazy import lazy_import

TOOL_TIMEOUT_S = 5.0
DEFAULT_PACKAGES = ("vla-export", "torch", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript", "onnxslim", "numpy")
INSTALL_CUDA = "`pip install polygraphy` (uses the CUDA runtime library; or cuda-python, or a CUDA build of torch)"


def versions(packages: Iterable[str] = DEFAULT_PACKAGES) -> dict[str, str]:
    """Installed versions of ``packages`` (absent ones are left out) and the Python version."""
    found = {"python": platform.python_version()}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_tool(cmd: list[str]) -> str | None:
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


def cudart() -> Any:
    """The CUDA runtime bindings of cuda-python (new and old module layouts)."""
    try:
        from cuda.bindings import runtime as rt  # cuda-python >= 12.6
    except ImportError:
        rt = lazy_import("cuda.cudart", purpose="CUDA buffers", install=INSTALL_CUDA)
    return rt


class _NoAnswer(Exception):
    """A GPU probe had nothing to say."""


def _gpu_cuda_python(device: int) -> dict[str, Any]:
    rt = cudart()
    err, props = rt.cudaGetDeviceProperties(device)
    if err != rt.cudaError_t.cudaSuccess:
        raise _NoAnswer(f"cudaGetDeviceProperties failed: {err}")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return {"name": name.rstrip("\x00"), "compute_capability": f"{props.major}.{props.minor}",
            "memory_bytes": int(props.totalGlobalMem), "multiprocessors": int(props.multiProcessorCount)}


def _gpu_torch(device: int) -> dict[str, Any]:
    torch = sys.modules.get("torch")  # only if already imported: asking must not load torch
    if torch is None or not torch.cuda.is_available():
        raise _NoAnswer("torch is not loaded or sees no CUDA device")
    props = torch.cuda.get_device_properties(device)
    return {"name": props.name, "compute_capability": f"{props.major}.{props.minor}", "memory_bytes": props.total_memory,
            "multiprocessors": props.multi_processor_count, "cuda_runtime": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version()}


def _gpu_nvidia_smi(device: int) -> dict[str, Any]:
    out = run_tool(["nvidia-smi", f"--id={device}", "--query-gpu=name,compute_cap,driver_version,memory.total,clocks.max.sm",
                    "--format=csv,noheader"])
    if not out or "," not in out:
        raise _NoAnswer("nvidia-smi is missing or failed")
    name, cc, driver, mem, clock = (s.strip() for s in out.splitlines()[0].split(","))
    return {"name": name, "compute_capability": cc, "driver": driver, "memory_total": mem, "sm_clock_max": clock}


def gpu_info(device: int = 0) -> dict[str, Any]:
    """Name and compute capability of ``device`` (plus what each source adds); ``name`` None if no source answers.

    Sources: cuda-python, an already-imported torch, nvidia-smi. The identity comes from the first
    that answers; the others only add fields (driver, clocks, cuDNN).
    """
    info: dict[str, Any] = {}
    tried = []
    for source, probe in (("cuda-python", _gpu_cuda_python), ("torch", _gpu_torch), ("nvidia-smi", _gpu_nvidia_smi)):
        try:
            found = probe(device)
        except (ImportError, _NoAnswer, OSError, subprocess.SubprocessError, AttributeError) as exc:
            tried.append(f"{source}: {exc}")
            continue
        info = found | info if info else found | {"source": source}
    return info or {"name": None, "compute_capability": None, "source": "; ".join(tried)}
