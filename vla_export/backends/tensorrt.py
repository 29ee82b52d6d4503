"""TensorRT backend: runs a serialized engine with ``execute_async_v3`` on a CUDA stream.

Engines only run on the TensorRT version and GPU that built them. Before TensorRT sees the file, the
runner checks it against its manifest (``NAME.engine.json``: size, TensorRT version, compute
capability) and refuses a mismatch with a message saying how to rebuild; TensorRT's own
deserialisation failure is reported the same way. Device memory and page-locked host staging buffers
come from Polygraphy's ``polygraphy.cuda`` (the CUDA runtime through ctypes: no compiled package, so it
installs on a Jetson), else cuda-python, else torch. pycuda is not used: it has no Jetson wheel, and its
primary-context handling was a source of leaks.

Two flavours of the library are supported: NVIDIA TensorRT (module ``tensorrt``: Jetson, x86 servers) and
TensorRT for RTX (module ``tensorrt_rtx``: RTX-class GPUs, compute capabilities 7.5-12.1 without 8.7/9.0). An
engine of one never loads in the other, and versions are compared within one flavour. TensorRT-RTX
compiles kernels at run time: the runner asks ``get_engine_validity`` before deserialising, and keeps a
runtime cache (``NAME.engine.runtime-cache``) beside the engine so the compiled kernels survive the process.

I/O dtypes are mapped by TensorRT ``DataType`` name (``trt.nptype`` knows only seven types and raises a
bare TypeError for BF16, FP8, INT4, FP4): an engine whose I/O NumPy cannot hold is refused by name.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vla_export.choices import Precision, TOLERANCE_PRECISIONS
from vla_export.backends.base import Runner
from vla_export.errors import ArtifactError, EnvironmentProblem, MissingDependencyError, RunnerError
from vla_export.lazy import lazy_import
from vla_export.artifacts.manifest import Manifest, read_manifest, validate_files
from vla_export.system import INSTALL_CUDA, cudart, gpu_info

log = logging.getLogger(__name__)

MEMORY_BACKENDS = ("polygraphy", "cuda-python", "torch")
#: TensorRT DataType name -> NumPy dtype, for engine I/O. Names outside it have no NumPy type.
NUMPY_DTYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
                "BOOL": np.bool_, "UINT8": np.uint8}


# --- flavours ----------------------------------------------------------------------------------------------

#: Flavour -> Python module, tried in this order (the Jetson's TensorRT first when both are installed).
FLAVOR_MODULES = {"tensorrt": "tensorrt", "rtx": "tensorrt_rtx"}
FLAVOR_NAMES = {"tensorrt": "TensorRT", "rtx": "TensorRT-RTX"}
#: The TensorRT-RTX wheel the `trt-rtx` extra pins (not on the index under vla-export's name: install from a checkout).
TRT_RTX_PACKAGE = "tensorrt-rtx-cu12==1.7.1.116"
INSTALL_TRT = (
    "TensorRT is not installed: on Jetson install JetPack's TensorRT (`sudo apt install nvidia-tensorrt`, Python bindings "
    "`python3-libnvinfer`); on x86 from this checkout `pip install -e '.[trt]'` (or put `trtexec` on PATH), or TensorRT for "
    f"RTX (builds without a GPU): `pip install -e '.[trt-rtx]'` from the checkout, or `pip install {TRT_RTX_PACKAGE}`"
)


def import_tensorrt() -> tuple[Any, str]:
    """(module, flavour) of the installed TensorRT: ``tensorrt``, else ``tensorrt_rtx``; MissingDependencyError naming
    both install commands when neither imports (OSError: bindings present but their libraries missing)."""
    import importlib

    failures = []
    for flavor, name in FLAVOR_MODULES.items():
        try:
            return importlib.import_module(name), flavor
        except (ImportError, OSError) as exc:
            failures.append(f"{name}: {exc}")
    raise MissingDependencyError(f"{INSTALL_TRT} ({'; '.join(failures)})")


def flavor_label(flavor: str | None, version: str | None = None) -> str:
    """``"TensorRT-RTX 1.7.1"``: the library's name and version, as messages name it."""
    name = FLAVOR_NAMES.get(flavor or "tensorrt", str(flavor))
    return f"{name} {engine_version(version)}" if version else name


def format_cc(cc: str) -> str:
    """``"86"`` or ``"SM86"`` -> ``"8.6"``; ``"120"`` -> ``"12.0"``; a dotted value is kept."""
    digits = str(cc).upper().removeprefix("SM")
    return digits if "." in digits or not digits.isdigit() else f"{digits[:-1]}.{digits[-1]}"


# --- compatibility -----------------------------------------------------------------------------------------

def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split(".")[:3] if p.isdigit())


def engine_version(v: str) -> str:
    """The three-part version engines and trtexec record: ``11.4.0.106`` (the bindings' ``__version__``) -> ``11.4.0``."""
    parts = _version_tuple(str(v))
    return ".".join(str(p) for p in parts) if parts else str(v)


def numpy_dtype(trt_dtype: Any, tensor: str, engine: Path) -> np.dtype:
    """NumPy dtype of an engine I/O tensor, by the TensorRT DataType's name; ArtifactError for BF16, FP8, INT4, FP4..."""
    name = getattr(trt_dtype, "name", str(trt_dtype).rsplit(".", 1)[-1])
    if name not in NUMPY_DTYPES:
        raise ArtifactError(
            f"{engine}: I/O tensor '{tensor}' is {name}, which NumPy cannot hold; rebuild the engine with FP32/FP16 inputs "
            "and outputs (keep BF16/FP8/INT4/FP4 inside the network)"
        )
    return np.dtype(NUMPY_DTYPES[name])


def check_engine_compat(engine: Path, manifest: Manifest, trt_version: str, gpu: Mapping[str, Any],
                        flavor: str = "tensorrt") -> None:
    """Refuse an engine built by the other flavour (TensorRT vs TensorRT-RTX), by another version of the same one, or
    for another GPU (ArtifactError saying how to rebuild). A manifest without a flavour is TensorRT's."""
    onnx = (manifest.extra.get("onnx") or {}).get("path", "MODEL.onnx")
    rebuild = f"rebuild it on this machine: vla-export trt {onnx} -o {engine}"
    built_flavor = manifest.extra.get("tensorrt_flavor") or "tensorrt"
    if built_flavor != flavor:
        raise ArtifactError(
            f"{engine}: built with {flavor_label(built_flavor, manifest.extra.get('tensorrt'))}, and this machine's library is "
            f"{flavor_label(flavor, trt_version)}: the two do not load each other's engines; {rebuild}"
        )
    built = engine_version(str(manifest.extra.get("tensorrt", "unknown")))
    trt_version = engine_version(trt_version)
    plan = manifest.extra.get("plan") or {}
    version_compatible = "VERSION_COMPATIBLE" in (plan.get("flags") or manifest.extra.get("flags") or [])
    if built != trt_version:
        same_major = _version_tuple(built)[:1] == _version_tuple(trt_version)[:1]
        newer = _version_tuple(trt_version) >= _version_tuple(built)
        if not (version_compatible and same_major and newer):
            raise ArtifactError(f"{engine}: built with {flavor_label(flavor, built)}, this machine has "
                                f"{flavor_label(flavor, trt_version)}; {rebuild}")
    if flavor == "rtx":
        return  # TensorRT-RTX engines target compute capabilities: get_engine_validity decides (rtx_validity)
    built_cc = (manifest.extra.get("gpu") or {}).get("compute_capability")
    here_cc = gpu.get("compute_capability")
    if built_cc and here_cc and built_cc != here_cc:
        hw = plan.get("hardware_compatibility", "none")
        portable = hw == "ampere+" and _version_tuple(here_cc) >= (8, 0)
        if not portable:
            built_name = (manifest.extra.get("gpu") or {}).get("name")
            raise ArtifactError(
                f"{engine}: built for {built_name} (compute capability {built_cc}), this GPU is {gpu.get('name')} "
                f"({here_cc}); {rebuild}"
            )


def rtx_validity(trt: Any, runtime: Any, data: bytes, engine: Path, manifest: Manifest | None,
                 gpu: Mapping[str, Any], messages: Sequence[str]) -> None:
    """Ask TensorRT-RTX whether it can run ``data`` here (``Runtime.get_engine_validity``, before deserialising):
    INVALID is an EnvironmentProblem (exit 3) naming the reasons (the diagnostics bits, else the library's own
    message) and the compute capabilities; SUBOPTIMAL is logged."""
    validity, diagnostics = runtime.get_engine_validity(data)
    name = getattr(validity, "name", str(validity))
    if name == "VALID":
        return
    members = trt.EngineInvalidityDiagnostics.__members__
    reasons = [n.lower().replace("_", " ") for n, v in members.items() if int(diagnostics) & int(v)]
    if not reasons and messages:
        reasons = [messages[-1].split(" Ensure ")[0]]
    targets = ", ".join(format_cc(c) for c in (manifest.extra if manifest else {}).get("compute_capabilities") or []) or "the library's defaults"
    here = f"{gpu.get('name')} (compute capability {gpu.get('compute_capability')})" if gpu.get("name") else "no CUDA GPU visible"
    line = (f"{engine}: TensorRT-RTX {engine_version(trt.__version__)} reports the engine {name}: {'; '.join(reasons) or 'no reason given'}; "
            f"the engine targets compute capability {targets}, this machine has {here}")
    if name == "INVALID":
        raise EnvironmentProblem(line)
    log.warning("%s", line)


# --- device memory -----------------------------------------------------------------------------------------

def _pinned_array(ptr: int, nbytes: int, shape: Sequence[int], dtype: Any) -> np.ndarray:
    """A NumPy array over ``nbytes`` of page-locked host memory at ``ptr``."""
    import ctypes

    raw = (ctypes.c_uint8 * max(nbytes, 1)).from_address(ptr)
    count = int(np.prod(shape)) if len(shape) else 1
    return np.frombuffer(raw, dtype=dtype, count=count).reshape(tuple(shape))


class _PolygraphyMemory:
    """Polygraphy's CUDA runtime wrapper (ctypes over libcudart): device buffers, a stream, pinned host memory."""

    name = "polygraphy"

    def __init__(self, device: int):
        pcuda = lazy_import("polygraphy.cuda", purpose="CUDA buffers", install=INSTALL_CUDA)
        self.pcuda = pcuda
        try:
            self.cuda = pcuda.wrapper()
            self.cuda.check(self.cuda.handle.cudaSetDevice(device))
            self.stream = pcuda.Stream()
        except Exception as exc:  # Polygraphy raises PolygraphyException (not exported) when libcudart is missing
            raise RunnerError(f"polygraphy.cuda cannot use the CUDA runtime: {exc}") from exc
        self._pinned: list[int] = []

    @property
    def stream_handle(self) -> int:
        return int(self.stream.ptr)

    def alloc(self, nbytes: int):
        return self.cuda.malloc(max(nbytes, 1))

    def ptr(self, buf) -> int:
        return int(buf)

    def host_empty(self, shape: Sequence[int], dtype: Any) -> np.ndarray:
        import ctypes

        nbytes = max(int(np.prod(shape)) * np.dtype(dtype).itemsize, 1)
        ptr = ctypes.c_void_p()
        self.cuda.check(self.cuda.handle.cudaMallocHost(ctypes.byref(ptr), ctypes.c_size_t(nbytes)))
        self._pinned.append(ptr.value)
        return _pinned_array(ptr.value, nbytes, shape, dtype)

    def htod(self, buf, host: np.ndarray) -> None:
        self.cuda.memcpy(buf, host.ctypes.data, host.nbytes, self.pcuda.MemcpyKind.HostToDevice, self.stream.ptr)

    def dtoh(self, host: np.ndarray, buf) -> None:
        self.cuda.memcpy(host.ctypes.data, buf, host.nbytes, self.pcuda.MemcpyKind.DeviceToHost, self.stream.ptr)

    def sync(self) -> None:
        self.stream.synchronize()

    def free(self, buf) -> None:
        self.cuda.free(buf)

    def close(self) -> None:
        import ctypes

        for ptr in self._pinned:
            self.cuda.check(self.cuda.handle.cudaFreeHost(ctypes.c_void_p(ptr)))
        self._pinned = []
        self.stream.free()


class _CudaPythonMemory:
    name = "cuda-python"

    def __init__(self, device: int):
        self.rt = cudart()
        self._check(self.rt.cudaSetDevice(device), "cudaSetDevice")
        self.stream = self._check(self.rt.cudaStreamCreate(), "cudaStreamCreate")
        self._pinned: list[int] = []

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

    def host_empty(self, shape: Sequence[int], dtype: Any) -> np.ndarray:
        nbytes = max(int(np.prod(shape)) * np.dtype(dtype).itemsize, 1)
        ptr = int(self._check(self.rt.cudaMallocHost(nbytes), "cudaMallocHost"))
        self._pinned.append(ptr)
        return _pinned_array(ptr, nbytes, shape, dtype)

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
        for ptr in self._pinned:
            self._check(self.rt.cudaFreeHost(ptr), "cudaFreeHost")
        self._pinned = []
        self._check(self.rt.cudaStreamDestroy(self.stream), "cudaStreamDestroy")


class _TorchMemory:
    name = "torch"

    def __init__(self, device: int):
        self.torch = lazy_import("torch", purpose="CUDA buffers")
        if not self.torch.cuda.is_available():
            raise RunnerError(f"torch {self.torch.__version__} sees no CUDA device")
        self.device = self.torch.device("cuda", device)
        self.stream = self.torch.cuda.Stream(device=self.device)
        self._pinned: list[Any] = []

    @property
    def stream_handle(self) -> int:
        return self.stream.cuda_stream

    def alloc(self, nbytes: int):
        return self.torch.empty(max(nbytes, 1), dtype=self.torch.uint8, device=self.device)

    def host_empty(self, shape: Sequence[int], dtype: Any) -> np.ndarray:
        nbytes = max(int(np.prod(shape)) * np.dtype(dtype).itemsize, 1)
        pinned = self.torch.empty(nbytes, dtype=self.torch.uint8, pin_memory=True)
        self._pinned.append(pinned)  # keeps the memory alive as long as the runner
        return pinned.numpy()[: int(np.prod(shape)) * np.dtype(dtype).itemsize].view(dtype).reshape(tuple(shape))

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
        self._pinned = []


_MEMORY = {"polygraphy": _PolygraphyMemory, "cuda-python": _CudaPythonMemory, "torch": _TorchMemory}


def device_memory(preference: str = "auto", device: int = 0):
    """The first usable of polygraphy.cuda, cuda-python, torch (or exactly ``preference``)."""
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


class CapturingLogger:
    """A TensorRT logger (made lazily: needs ``trt.ILogger``) that routes messages to vla-export's log and keeps
    what callers report: errors (TensorRT-RTX says why it refuses an engine only in its log; a build failure is
    summarised in one line), warnings (the build record) and the final layer list that detailed profiling puts
    in the VERBOSE log (the engine's layers by precision)."""

    @staticmethod
    def make(trt):
        class Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.errors: list[str] = []
                self.warnings: list[str] = []
                self.layer_log: str | None = None

            def log(self, severity, msg):
                if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                    self.errors.append(msg)
                    log.debug("tensorrt error: %s", msg)  # reported by the caller, in its one error line
                elif severity == trt.ILogger.Severity.WARNING:
                    self.warnings.append(msg)
                    log.warning("tensorrt: %s", msg)
                elif msg.startswith("Layers:\n"):
                    self.layer_log = msg
                else:
                    log.debug("tensorrt: %s", msg)

        return Logger()


# --- the runner --------------------------------------------------------------------------------------------

class TrtRunner(Runner):
    """Runs ``NAME.engine``: sets input shapes, binds device buffers, ``execute_async_v3`` on a stream."""

    def __init__(self, engine_path: str | Path, *, device: int = 0, memory: str = "auto", require_manifest: bool = False,
                 lean_runtime: str | Path | None = None):
        super().__init__()
        self.path = Path(engine_path)
        self.lean_runtime = lean_runtime  # for engines built --version-compatible --exclude-lean-runtime
        self.device_index, self.memory_pref, self.require_manifest = device, memory, require_manifest
        self.name = f"tensorrt:{self.path.name}"
        self.manifest: Manifest | None = None
        self._inputs: list[str] | None = None  # from the engine once active; before, from its manifest
        self._outputs: list[str] | None = None
        self.input_shapes: dict[str, list[Any]] = {}
        self.output_shapes: dict[str, list[Any]] = {}

    @property
    def precision(self) -> str | None:
        """The build's precision from the engine manifest (int8 or fp16 builds keep some layers wider)."""
        recorded = self.manifest.precision if self.manifest else None
        return Precision(recorded).compute_dtype_name if recorded in TOLERANCE_PRECISIONS else None

    @property
    def input_names(self) -> Sequence[str]:
        return self._inputs if self._inputs is not None else self._recorded_io("inputs")

    @property
    def output_names(self) -> Sequence[str]:
        return self._outputs if self._outputs is not None else self._recorded_io("outputs")

    def _recorded_io(self, which: str) -> list[str]:
        """Before activation, the names the engine's manifest records; never a guess."""
        manifest = self.manifest or read_manifest(self.path, kind="engine", required=False)
        recorded = ((manifest.io if manifest else None) or {}).get(which)
        if recorded is None:
            raise RunnerError(f"{self.path.name}: its {which} are known once the runner is active (its manifest records none)")
        return [t["name"] for t in recorded]

    @property
    def device(self) -> str:
        return "cuda"

    def describe(self) -> dict[str, Any]:
        info = super().describe() | {"engine": str(self.path)}
        if self.manifest:
            info |= {"precision": self.manifest.precision, "built_with": self.manifest.extra.get("tensorrt")}
        if self.is_active:
            info |= {"tensorrt": self._trt.__version__, "tensorrt_flavor": self.flavor, "gpu": self._gpu.get("name"), "memory": self._mem.name}
        return info

    def check_file(self) -> None:
        """File-level checks that need no TensorRT: present, non-empty, the size its manifest records."""

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
        trt, self.flavor = import_tensorrt()
        self._trt = trt
        self._gpu = gpu_info(self.device_index)
        if self.manifest is not None:
            check_engine_compat(self.path, self.manifest, trt.__version__, self._gpu, self.flavor)
        self._data = self.path.read_bytes()
        if self.flavor == "rtx":  # can it run here at all? asked before any CUDA buffer or deserialisation
            self._rtx_logger = CapturingLogger.make(trt)
            self._runtime = trt.Runtime(self._rtx_logger)
            rtx_validity(trt, self._runtime, self._data, self.path, self.manifest, self._gpu, self._rtx_logger.errors)
        self._mem = device_memory(self.memory_pref, self.device_index)
        try:
            self._load_engine(trt)
        except BaseException:
            self._mem.close()
            raise

    def _plan(self) -> Mapping[str, Any]:
        return (self.manifest.extra if self.manifest else {}).get("plan") or {}

    def _flags(self) -> list[str]:
        return list(self._plan().get("flags") or (self.manifest.extra if self.manifest else {}).get("flags") or [])

    def _runtime_for(self, trt, logger):
        """``trt.Runtime``, set up for how the engine was built: DLA core before deserialising; the lean runtime
        (``load_runtime``) for version-compatible engines built without it; host code allowed for version-compatible ones."""
        runtime = trt.Runtime(logger)
        flags = self._flags()
        dla_core = self._plan().get("dla_core")
        if dla_core is not None:
            runtime.DLA_core = int(dla_core)
        if "VERSION_COMPATIBLE" in flags:
            runtime.engine_host_code_allowed = True
        if "EXCLUDE_LEAN_RUNTIME" in flags:
            major = _version_tuple(trt.__version__)[:1] or (10,)
            lean = str(self.lean_runtime or f"libnvinfer_lean.so.{major[0]}")
            loaded = runtime.load_runtime(lean)
            if loaded is None:
                raise ArtifactError(
                    f"{self.path}: built --version-compatible --exclude-lean-runtime, so it needs TensorRT's lean runtime, "
                    f"and {lean} could not be loaded; pass its path (TrtRunner(lean_runtime=...))"
                )
            loaded.engine_host_code_allowed = True
            if dla_core is not None:
                loaded.DLA_core = int(dla_core)
            runtime = loaded
        return runtime

    @property
    def runtime_cache_path(self) -> Path:
        """Where a TensorRT-RTX engine's JIT-compiled kernels are kept between processes."""
        return self.path.with_name(self.path.name + ".runtime-cache")

    def _load_engine(self, trt) -> None:
        if self.flavor != "rtx":
            self._runtime = self._runtime_for(trt, trt.Logger(trt.Logger.WARNING))
        data, self._data = self._data, b""
        self._engine = self._runtime.deserialize_cuda_engine(data)
        if self._engine is None:
            raise ArtifactError(
                f"{self.path}: {flavor_label(self.flavor, trt.__version__)} cannot deserialize it (truncated, or built by another "
                f"version or for another GPU); rebuild it on this machine with `vla-export trt MODEL.onnx -o {self.path}`"
            )
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._dtypes = {n: numpy_dtype(self._engine.get_tensor_dtype(n), n, self.path) for n in names}
        self._runtime_cache = None
        if self.flavor == "rtx":
            self._context = self._engine.create_execution_context(self._rtx_runtime_config())
        else:
            self._context = self._engine.create_execution_context()
        if self._context is None:
            raise RunnerError(f"{self.path}: TensorRT could not create an execution context (out of device memory?)")
        is_input = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self._inputs = [n for n in names if is_input[n]]
        self._outputs = [n for n in names if not is_input[n]]
        shapes = {n: [d if d >= 0 else "dynamic" for d in self._engine.get_tensor_shape(n)] for n in names}
        self.input_shapes = {n: shapes[n] for n in self._inputs}
        self.output_shapes = {n: shapes[n] for n in self._outputs}
        self._buffers: dict[str, tuple[Any, int]] = {}
        self._host: dict[str, np.ndarray] = {}  # page-locked staging, grown as needed: async copies stay async

    def _rtx_runtime_config(self):
        """A runtime config whose runtime cache is loaded from beside the engine (if there, and valid here)."""
        runtime_config = self._engine.create_runtime_config()
        runtime_cache = runtime_config.create_runtime_cache()
        if self.runtime_cache_path.is_file() and not runtime_cache.deserialize(self.runtime_cache_path.read_bytes()):
            log.warning("%s: made for another GPU, driver or library version; kernels are compiled afresh", self.runtime_cache_path)
        runtime_config.set_runtime_cache(runtime_cache)
        self._runtime_cache = runtime_cache
        return runtime_config

    def warm(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> int:
        """Run each feed once, untimed: TensorRT-RTX compiles kernels on the first call at each shape, so every shape a
        benchmark times is warmed here first; the runtime cache is saved afterwards. Returns the number of shapes."""
        shapes = {}
        for feed in feeds:
            shapes.setdefault(tuple((k, np.shape(v)) for k, v in sorted(feed.items())), feed)
        for feed in shapes.values():
            self.infer(feed)
        self.save_runtime_cache()
        return len(shapes)

    def save_runtime_cache(self) -> Path | None:
        """Write the runtime cache beside the engine (TensorRT-RTX only; atomically)."""
        if getattr(self, "_runtime_cache", None) is None:
            return None
        from vla_export.fileio import atomic_write

        blob = self._runtime_cache.serialize()
        atomic_write(self.runtime_cache_path, lambda tmp: tmp.write_bytes(memoryview(blob)))
        return self.runtime_cache_path

    def _deactivate(self) -> None:
        if getattr(self, "_runtime_cache", None) is not None:
            try:
                self.save_runtime_cache()
            except OSError as exc:  # e.g. a read-only engine folder: the next process compiles again
                log.warning("%s: runtime cache not saved (%s); kernels will be compiled again next time", self.runtime_cache_path, exc)
        for buf, _ in getattr(self, "_buffers", {}).values():
            self._mem.free(buf)
        self._buffers = {}
        self._host = {}
        self._context = self._engine = self._runtime = self._runtime_cache = None
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

    def _host_array(self, name: str, shape: Sequence[int]) -> np.ndarray:
        """A page-locked host array of ``shape`` for tensor ``name`` (reused; reallocated only to grow)."""
        dtype = self._dtypes[name]
        nbytes = int(np.prod(shape)) * dtype.itemsize
        pool = self._host.get(name)
        if pool is None or pool.nbytes < nbytes:
            pool = self._mem.host_empty((max(nbytes, 1),), np.uint8)
            self._host[name] = pool
        return pool[:nbytes].view(dtype).reshape(tuple(shape))

    def stage(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Set input shapes, copy inputs through pinned staging buffers to the device (async) and bind outputs;
        returns the (pinned) host output arrays."""
        self._require_active()
        for name in self._inputs:
            value = np.asarray(feed[name])
            if not self._context.set_input_shape(name, value.shape):
                raise RunnerError(f"{self.path.name}: input '{name}' shape {value.shape} is outside the engine's optimization profile")
            host = self._host_array(name, value.shape)
            host[...] = value  # cast to the engine's dtype into page-locked memory
            self._mem.htod(self._buffer(name, host.nbytes), host)
        outputs = {}
        for name in self._outputs:
            shape = tuple(self._context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RunnerError(f"{self.path.name}: output '{name}' has an unresolved shape {shape}")
            outputs[name] = self._host_array(name, shape)
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
        # copies: the pinned buffers are reused by the next inference
        return {k: v.astype(np.float32) if v.dtype == np.float16 else v.copy() for k, v in outputs.items()}
