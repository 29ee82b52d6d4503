"""TensorRT backend: runs a serialized engine with ``execute_async_v3`` on a CUDA stream.

Engines only run on the TensorRT version and GPU that built them. Before TensorRT sees the file, the
runner checks it against its manifest (``NAME.engine.json``: size, TensorRT version, compute
capability) and refuses a mismatch with a message saying how to rebuild; TensorRT's own
deserialisation failure is reported the same way. Device memory comes from pycuda when installed,
else cuda-python, else torch (pycuda has no wheel for Jetson).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vla_export.backends.base import Runner
from vla_export.data.source import INPUT_NAMES
from vla_export.errors import ArtifactError, MissingDependencyError, RunnerError
from vla_export.lazy import lazy_import

log = logging.getLogger(__name__)

MEMORY_BACKENDS = ("pycuda", "cuda-python", "torch")
INSTALL_CUDA = "`pip install cuda-python` (or pycuda, or a CUDA build of torch)"


# --- GPU identity ------------------------------------------------------------------------------------------

def _gpu_cuda_python(device: int) -> dict[str, Any]:
    cudart = _cudart()
    err, props = cudart.cudaGetDeviceProperties(device)
    if err != cudart.cudaError_t.cudaSuccess:
        raise RunnerError(f"cudaGetDeviceProperties failed: {err}")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return {"name": name.rstrip("\x00"), "compute_capability": f"{props.major}.{props.minor}"}


def _gpu_pycuda(device: int) -> dict[str, Any]:
    cuda = lazy_import("pycuda.driver")
    cuda.init()
    d = cuda.Device(device)
    major, minor = d.compute_capability()
    return {"name": d.name(), "compute_capability": f"{major}.{minor}"}


def _gpu_torch(device: int) -> dict[str, Any]:
    torch = lazy_import("torch")
    if not torch.cuda.is_available():
        raise RunnerError("torch sees no CUDA device")
    major, minor = torch.cuda.get_device_capability(device)
    return {"name": torch.cuda.get_device_name(device), "compute_capability": f"{major}.{minor}"}


def _gpu_nvidia_smi(device: int) -> dict[str, Any]:
    if not shutil.which("nvidia-smi"):
        raise RunnerError("nvidia-smi not found")
    out = subprocess.run(["nvidia-smi", f"--id={device}", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=30)
    if out.returncode != 0 or "," not in out.stdout:
        raise RunnerError(f"nvidia-smi failed: {out.stderr.strip()}")
    name, cc = (s.strip() for s in out.stdout.strip().splitlines()[0].rsplit(",", 1))
    return {"name": name, "compute_capability": cc}


def gpu_info(device: int = 0) -> dict[str, Any]:
    """Name and compute capability of ``device``, from the first source that answers; ``name`` None if none does."""
    tried = []
    for source, probe in (("cuda-python", _gpu_cuda_python), ("pycuda", _gpu_pycuda), ("torch", _gpu_torch), ("nvidia-smi", _gpu_nvidia_smi)):
        try:
            return probe(device) | {"source": source}
        except (ImportError, RunnerError, OSError, subprocess.SubprocessError) as exc:
            tried.append(f"{source}: {exc}")
    return {"name": None, "compute_capability": None, "source": "; ".join(tried)}


# --- compatibility -----------------------------------------------------------------------------------------

def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split(".")[:3] if p.isdigit())


def check_engine_compat(engine: Path, manifest: Mapping[str, Any], trt_version: str, gpu: Mapping[str, Any]) -> None:
    """Refuse an engine built by another TensorRT version or for another GPU (ArtifactError saying how to rebuild)."""
    onnx = (manifest.get("onnx") or {}).get("path", "MODEL.onnx")
    rebuild = f"rebuild it on this machine: vla-export trt {onnx} -o {engine}"
    built = str(manifest.get("tensorrt", "unknown"))
    plan = manifest.get("plan") or {}
    version_compatible = "VERSION_COMPATIBLE" in (plan.get("flags") or manifest.get("flags") or [])
    if built != trt_version:
        same_major = _version_tuple(built)[:1] == _version_tuple(trt_version)[:1]
        newer = _version_tuple(trt_version) >= _version_tuple(built)
        if not (version_compatible and same_major and newer):
            raise ArtifactError(f"{engine}: built with TensorRT {built}, this machine has TensorRT {trt_version}; {rebuild}")
    built_cc = (manifest.get("gpu") or {}).get("compute_capability")
    here_cc = gpu.get("compute_capability")
    if built_cc and here_cc and built_cc != here_cc:
        hw = plan.get("hardware_compatibility", "none")
        portable = hw == "ampere+" and _version_tuple(here_cc) >= (8, 0)
        if not portable:
            built_name = (manifest.get("gpu") or {}).get("name")
            raise ArtifactError(
                f"{engine}: built for {built_name} (compute capability {built_cc}), this GPU is {gpu.get('name')} "
                f"({here_cc}); {rebuild}"
            )


# --- device memory -----------------------------------------------------------------------------------------

def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        cudart = lazy_import("cuda.cudart", purpose="CUDA buffers", install=INSTALL_CUDA)
    return cudart


class _PycudaMemory:
    name = "pycuda"

    def __init__(self, device: int):
        self.cuda = lazy_import("pycuda.driver", purpose="CUDA buffers")
        self.cuda.init()
        # TensorRT uses the runtime's primary context; a pycuda.autoinit context would be a different one.
        self.ctx = self.cuda.Device(device).retain_primary_context()
        self.ctx.push()
        self.stream = self.cuda.Stream()

    @property
    def stream_handle(self) -> int:
        return self.stream.handle

    def alloc(self, nbytes: int):
        return self.cuda.mem_alloc(max(nbytes, 1))

    def ptr(self, buf) -> int:
        return int(buf)

    def htod(self, buf, host: np.ndarray) -> None:
        self.cuda.memcpy_htod_async(buf, host, self.stream)

    def dtoh(self, host: np.ndarray, buf) -> None:
        self.cuda.memcpy_dtoh_async(host, buf, self.stream)

    def sync(self) -> None:
        self.stream.synchronize()

    def free(self, buf) -> None:
        buf.free()

    def close(self) -> None:
        self.ctx.pop()


class _CudaPythonMemory:
    name = "cuda-python"

    def __init__(self, device: int):
        self.rt = _cudart()
        self._check(self.rt.cudaSetDevice(device), "cudaSetDevice")
        self.stream = self._check(self.rt.cudaStreamCreate(), "cudaStreamCreate")

    def _check(self, result, what: str):
        err = result[0]
        if err != self.rt.cudaError_t.cudaSuccess:
            raise RunnerError(f"{what} failed: {err}")
        return result[1] if len(result) > 1 else None

    @property
    def stream_handle(self) -> int:
        return int(self.stream)

    def alloc(self, nbytes: int):
        return self._check(self.rt.cudaMalloc(max(nbytes, 1)), "cudaMalloc")

    def ptr(self, buf) -> int:
        return int(buf)

    def htod(self, buf, host: np.ndarray) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.rt.cudaMemcpyAsync(buf, host.ctypes.data, host.nbytes, kind, self.stream), "cudaMemcpyAsync")

    def dtoh(self, host: np.ndarray, buf) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.rt.cudaMemcpyAsync(host.ctypes.data, buf, host.nbytes, kind, self.stream), "cudaMemcpyAsync")

    def sync(self) -> None:
        self._check(self.rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def free(self, buf) -> None:
        self._check(self.rt.cudaFree(buf), "cudaFree")

    def close(self) -> None:
        self._check(self.rt.cudaStreamDestroy(self.stream), "cudaStreamDestroy")


class _TorchMemory:
    name = "torch"

    def __init__(self, device: int):
        self.torch = lazy_import("torch", purpose="CUDA buffers")
        if not self.torch.cuda.is_available():
            raise RunnerError(f"torch {self.torch.__version__} sees no CUDA device")
        self.device = self.torch.device("cuda", device)
        self.stream = self.torch.cuda.Stream(device=self.device)

    @property
    def stream_handle(self) -> int:
        return self.stream.cuda_stream

    def alloc(self, nbytes: int):
        return self.torch.empty(max(nbytes, 1), dtype=self.torch.uint8, device=self.device)

    def ptr(self, buf) -> int:
        return buf.data_ptr()

    @staticmethod
    def _bytes(host: np.ndarray) -> np.ndarray:
        return host.reshape(-1).view(np.uint8)

    def htod(self, buf, host: np.ndarray) -> None:
        with self.torch.cuda.stream(self.stream):
            buf[: host.nbytes].copy_(self.torch.from_numpy(self._bytes(host)), non_blocking=True)

    def dtoh(self, host: np.ndarray, buf) -> None:
        with self.torch.cuda.stream(self.stream):
            self.torch.from_numpy(self._bytes(host)).copy_(buf[: host.nbytes], non_blocking=True)

    def sync(self) -> None:
        self.stream.synchronize()

    def free(self, buf) -> None:
        del buf

    def close(self) -> None:
        pass


_MEMORY = {"pycuda": _PycudaMemory, "cuda-python": _CudaPythonMemory, "torch": _TorchMemory}


def device_memory(preference: str = "auto", device: int = 0):
    """The first usable of pycuda, cuda-python, torch (or exactly ``preference``)."""
    names = MEMORY_BACKENDS if preference == "auto" else (preference,)
    if preference not in ("auto", *MEMORY_BACKENDS):
        raise RunnerError(f"memory backend must be auto or one of {MEMORY_BACKENDS}, got {preference!r}")
    failures = []
    for name in names:
        try:
            return _MEMORY[name](device)
        except (ImportError, RunnerError) as exc:
            failures.append(f"{name}: {exc}")
    raise MissingDependencyError(f"TensorRT engines need CUDA buffers; none of {list(names)} works ({'; '.join(failures)}); install {INSTALL_CUDA}")


# --- the runner --------------------------------------------------------------------------------------------

class TrtRunner(Runner):
    """Runs ``NAME.engine``: sets input shapes, binds device buffers, ``execute_async_v3`` on a stream."""

    def __init__(self, engine_path: str | Path, *, device: int = 0, memory: str = "auto", require_manifest: bool = False):
        super().__init__()
        self.path = Path(engine_path)
        self.device_index, self.memory_pref, self.require_manifest = device, memory, require_manifest
        self.name = f"tensorrt:{self.path.name}"
        self.manifest: dict[str, Any] | None = None
        self._inputs: list[str] = list(INPUT_NAMES)
        self._outputs: list[str] = ["actions"]
        self.input_shapes: dict[str, list[Any]] = {}
        self.output_shapes: dict[str, list[Any]] = {}

    @property
    def input_names(self) -> Sequence[str]:
        return self._inputs

    @property
    def output_names(self) -> Sequence[str]:
        return self._outputs

    @property
    def device(self) -> str:
        return "cuda"

    def describe(self) -> dict[str, Any]:
        info = super().describe() | {"engine": str(self.path)}
        if self.manifest:
            info |= {"precision": self.manifest.get("precision"), "built_with": self.manifest.get("tensorrt")}
        if self.is_active:
            info |= {"tensorrt": self._trt.__version__, "gpu": self._gpu.get("name"), "memory": self._mem.name}
        return info

    def check_file(self) -> None:
        """File-level checks that need no TensorRT: present, non-empty, the size its manifest records."""
        from vla_export.export.manifest import read_manifest, validate_files

        if not self.path.is_file():
            raise ArtifactError(f"{self.path}: engine file not found")
        if self.path.stat().st_size == 0:
            raise ArtifactError(f"{self.path}: engine file is empty")
        self.manifest = read_manifest(self.path, kind="engine", required=self.require_manifest)
        if self.manifest is None:
            log.warning("%s: no manifest beside it; TensorRT version and GPU cannot be checked before loading", self.path)
        else:
            validate_files(self.path, self.manifest)

    def _activate(self) -> None:
        self.check_file()
        trt = lazy_import("tensorrt", purpose="running TensorRT engines")
        self._trt = trt
        self._gpu = gpu_info(self.device_index)
        if self.manifest is not None:
            check_engine_compat(self.path, self.manifest, trt.__version__, self._gpu)
        self._mem = device_memory(self.memory_pref, self.device_index)
        try:
            self._load_engine(trt)
        except BaseException:
            self._mem.close()
            raise

    def _load_engine(self, trt) -> None:
        logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(logger)
        if self.manifest and "VERSION_COMPATIBLE" in self.manifest.get("flags", []):
            self._runtime.engine_host_code_allowed = True
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise ArtifactError(
                f"{self.path}: TensorRT {trt.__version__} cannot deserialize it (truncated, or built by another TensorRT "
                f"version or for another GPU); rebuild it on this machine with `vla-export trt MODEL.onnx -o {self.path}`"
            )
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_input = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self._inputs = [n for n in names if is_input[n]]
        self._outputs = [n for n in names if not is_input[n]]
        self._dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}
        shapes = {n: [d if d >= 0 else "dynamic" for d in self._engine.get_tensor_shape(n)] for n in names}
        self.input_shapes = {n: shapes[n] for n in self._inputs}
        self.output_shapes = {n: shapes[n] for n in self._outputs}
        self._buffers: dict[str, tuple[Any, int]] = {}
        self._staged_inputs: dict[str, np.ndarray] = {}

    def _deactivate(self) -> None:
        for buf, _ in getattr(self, "_buffers", {}).values():
            self._mem.free(buf)
        self._buffers = {}
        self._context = self._engine = self._runtime = None
        self._mem.close()

    def _buffer(self, name: str, nbytes: int) -> int:
        buf, size = self._buffers.get(name, (None, 0))
        if buf is None or size < nbytes:
            if buf is not None:
                self._mem.free(buf)
            buf = self._mem.alloc(nbytes)
            self._buffers[name] = (buf, nbytes)
        ptr = self._mem.ptr(buf)
        self._context.set_tensor_address(name, ptr)
        return buf

    def stage(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Set input shapes, copy inputs to the device (async) and bind outputs; returns host output arrays."""
        self._require_active()
        for name in self._inputs:
            host = np.ascontiguousarray(feed[name], dtype=self._dtypes[name])
            if not self._context.set_input_shape(name, host.shape):
                raise RunnerError(f"{self.path.name}: input '{name}' shape {host.shape} is outside the engine's optimization profile")
            self._mem.htod(self._buffer(name, host.nbytes), host)
            self._staged_inputs[name] = host  # kept alive until the async copy has read it
        outputs = {}
        for name in self._outputs:
            shape = tuple(self._context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RunnerError(f"{self.path.name}: output '{name}' has an unresolved shape {shape}")
            outputs[name] = np.empty(shape, dtype=self._dtypes[name])
            self._buffer(name, outputs[name].nbytes)
        return outputs

    def _execute(self, staged: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self._context.execute_async_v3(self._mem.stream_handle):
            raise RunnerError(f"{self.path.name}: execute_async_v3 failed (see the TensorRT log)")
        return staged

    def synchronize(self) -> None:
        self._mem.sync()

    def to_host(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, host in outputs.items():
            self._mem.dtoh(host, self._buffers[name][0])
        self._mem.sync()
        return {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in outputs.items()}
