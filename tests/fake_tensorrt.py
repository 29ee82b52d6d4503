"""A stand-in TensorRT for tests: engines whose "execution" runs an ONNX model with ONNX Runtime.

A fake engine file is ``FAKE-ENGINE:`` + the path of an ONNX file. :func:`install` puts a fake ``tensorrt``
module in ``sys.modules`` and gives :mod:`vla_export.backends.tensorrt` host arrays as device memory, so
:class:`~vla_export.backends.tensorrt.TrtRunner` runs its real binding logic (shapes, buffers, pinned
staging, dtype mapping) end to end. Importable in a subprocess where torch is blocked.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np

MAGIC = b"FAKE-ENGINE:"
GPU = {"name": "Orin (fake)", "compute_capability": "8.7"}


class DT:
    """A TensorRT DataType stand-in: only ``.name`` is used."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"DataType.{self.name}"


DATA_TYPES = {n: DT(n) for n in ("FLOAT", "HALF", "INT8", "INT32", "INT64", "BOOL", "UINT8", "BF16", "FP8", "INT4", "FP4")}
ONNX_TO_TRT = {"tensor(float)": "FLOAT", "tensor(float16)": "HALF", "tensor(int64)": "INT64", "tensor(int32)": "INT32",
               "tensor(bool)": "BOOL", "tensor(uint8)": "UINT8", "tensor(int8)": "INT8", "tensor(bfloat16)": "BF16"}


class FakeMemory:
    """Host arrays standing in for device buffers; pointers index a table."""

    name = "fake"

    def __init__(self, *args):
        self.table: dict[int, np.ndarray] = {}
        self.next_ptr = 1
        self.stream_handle = 7
        self.synced = 0
        self.host_allocs = 0

    def alloc(self, nbytes):
        ptr = self.next_ptr
        self.next_ptr += 1
        self.table[ptr] = np.zeros(nbytes, np.uint8)
        return ptr

    def ptr(self, buf):
        return buf

    def host_empty(self, shape, dtype):
        self.host_allocs += 1
        return np.empty(shape, dtype)

    def htod(self, buf, host):
        self.table[buf][: host.nbytes] = host.reshape(-1).view(np.uint8)

    def dtoh(self, host, buf):
        host.reshape(-1).view(np.uint8)[:] = self.table[buf][: host.nbytes]

    def sync(self):
        self.synced += 1

    def free(self, buf):
        self.table.pop(buf)

    def close(self):
        pass


class FakeContext:
    def __init__(self, engine):
        self.engine, self.shapes, self.addresses = engine, {}, {}

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return True

    def _run(self):
        feed = {}
        for name in self.engine.inputs:
            dtype = np.dtype(self.engine.np_dtypes[name])
            n = int(np.prod(self.shapes[name]))
            feed[name] = self.engine.memory.table[self.addresses[name]][: n * dtype.itemsize].view(dtype).reshape(self.shapes[name])
        return dict(zip(self.engine.outputs, self.engine.session.run(self.engine.outputs, feed)))

    def get_tensor_shape(self, name):
        return self._run()[name].shape  # shapes follow the inputs, as in TensorRT

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr

    def execute_async_v3(self, stream):
        for name, value in self._run().items():
            value = np.ascontiguousarray(value)
            self.engine.memory.table[self.addresses[name]][: value.nbytes] = value.reshape(-1).view(np.uint8)
        return True


class FakeEngine:
    def __init__(self, onnx_path: str, memory: FakeMemory):
        import onnxruntime as ort

        self.session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        self.memory = memory
        ins, outs = self.session.get_inputs(), self.session.get_outputs()
        self.inputs, self.outputs = [i.name for i in ins], [o.name for o in outs]
        self.meta = {t.name: t for t in ins + outs}
        self.names = self.inputs + self.outputs
        self.num_io_tensors = len(self.names)
        self.np_dtypes = {n: {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(float16)": np.float16}[self.meta[n].type]
                          for n in self.names}

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return "INPUT" if name in self.inputs else "OUTPUT"

    def get_tensor_dtype(self, name):
        return DATA_TYPES[ONNX_TO_TRT[self.meta[name].type]]

    def get_tensor_shape(self, name):
        return tuple(d if isinstance(d, int) else -1 for d in self.meta[name].shape)

    def create_execution_context(self):
        return FakeContext(self)


def make_module(version: str = "10.3.0.26", memory: FakeMemory | None = None) -> ModuleType:
    trt = ModuleType("tensorrt")
    memory = memory or FakeMemory()

    class Runtime:
        def __init__(self, logger):
            self.engine_host_code_allowed = False
            self.DLA_core = -1

        def deserialize_cuda_engine(self, data):
            if not data.startswith(MAGIC):
                return None
            return FakeEngine(data[len(MAGIC):].decode(), memory)

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    trt.__version__ = version
    trt.Runtime, trt.Logger = Runtime, Logger
    trt.TensorIOMode = SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    trt.DataType = SimpleNamespace(**DATA_TYPES)
    trt.memory = memory
    return trt


def install(version: str = "10.3.0.26", gpu: dict | None = None):
    """Fake ``tensorrt`` in sys.modules; the TensorRT backend's GPU probe and device memory stubbed. Returns the module."""
    from vla_export.backends import tensorrt as B

    trt = make_module(version)
    sys.modules["tensorrt"] = trt
    B.gpu_info = lambda device=0: dict(gpu or GPU)
    B.device_memory = lambda preference="auto", device=0: trt.memory
    return trt


def write_fake_engine(path: str | Path, onnx: str | Path, *, precision: str = "fp32", tensorrt: str = "10.3.0",
                      config: dict | None = None, plan: dict | None = None, **extra) -> Path:
    """A fake engine over ``onnx`` with a manifest carrying the ONNX manifest's config, as `vla-export trt` writes."""
    from vla_export.artifacts.manifest import build_manifest, read_manifest, write_manifest

    path, onnx = Path(path), Path(onnx)
    path.write_bytes(MAGIC + str(onnx.resolve()).encode())
    if config is None:
        recorded = read_manifest(onnx, required=False)
        config = recorded.config if recorded else None
    m = build_manifest("engine", path, [path], tensorrt=tensorrt, gpu=dict(GPU), precision=precision, flags=[],
                       plan=plan or {"flags": [], "hardware_compatibility": "none", "dla_core": None},
                       onnx={"path": str(onnx)}, config=config, **extra)
    write_manifest(path, m)
    return path


class FakeRuntimeCache:
    """TensorRT-RTX's IRuntimeCache stand-in: a blob of the shapes "compiled" so far."""

    def __init__(self):
        self.shapes: list[str] = []

    def serialize(self) -> bytes:
        return ("RTXCACHE:" + ";".join(self.shapes)).encode()

    def deserialize(self, blob: bytes) -> bool:
        if not blob.startswith(b"RTXCACHE:"):
            return False
        self.shapes = [s for s in blob[len(b"RTXCACHE:"):].decode().split(";") if s]
        return True


def make_rtx_module(version: str = "1.7.1.116", validity: str = "VALID", diagnostics: int = 0,
                    memory: FakeMemory | None = None) -> ModuleType:
    """A stand-in ``tensorrt_rtx``: :func:`make_module` plus ``get_engine_validity``, runtime configs with a runtime cache
    (an execution context records each input shape in it, as the JIT compile would), and the ILogger base."""
    trt = make_module(version, memory)
    trt.__name__ = "tensorrt_rtx"
    base_runtime = trt.Runtime

    class EngineValidity(SimpleNamespace):
        pass

    trt.EngineValidity = SimpleNamespace(**{n: EngineValidity(name=n) for n in ("VALID", "SUBOPTIMAL", "INVALID")})
    trt.EngineInvalidityDiagnostics = SimpleNamespace(__members__={
        "VERSION_MISMATCH": 1, "UNSUPPORTED_CC": 2, "OLD_CUDA_DRIVER": 4, "OLD_CUDA_RUNTIME": 8,
        "INSUFFICIENT_GPU_MEMORY": 16, "MALFORMED_ENGINE": 32, "CUDA_ERROR": 64})

    class ILogger:
        Severity = SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)

        def __init__(self):
            pass

    class RuntimeConfig:
        def __init__(self):
            self.cache = None

        def create_runtime_cache(self):
            return FakeRuntimeCache()

        def set_runtime_cache(self, cache):
            self.cache = cache
            return True

    class Runtime(base_runtime):
        def get_engine_validity(self, data):
            return getattr(trt.EngineValidity, validity), diagnostics

        def deserialize_cuda_engine(self, data):
            engine = super().deserialize_cuda_engine(data)
            if engine is not None:
                engine.create_runtime_config = RuntimeConfig
                plain = engine.create_execution_context

                def create_execution_context(config=None):
                    context = plain()
                    context.runtime_config = config
                    record = context.set_input_shape

                    def set_input_shape(name, shape):
                        key = f"{name}={'x'.join(map(str, shape))}"
                        if config is not None and key not in config.cache.shapes:
                            config.cache.shapes.append(key)
                        return record(name, shape)

                    context.set_input_shape = set_input_shape
                    return context

                engine.create_execution_context = create_execution_context
            return engine

    trt.ILogger, trt.Runtime = ILogger, Runtime
    return trt


def install_rtx(validity: str = "VALID", diagnostics: int = 0, gpu: dict | None = None):
    """Fake ``tensorrt_rtx`` in sys.modules and no ``tensorrt`` (so the RTX flavour is the installed one)."""
    from vla_export.backends import tensorrt as B

    trt = make_rtx_module(validity=validity, diagnostics=diagnostics)
    sys.modules["tensorrt"] = None
    sys.modules["tensorrt_rtx"] = trt
    B.gpu_info = lambda device=0: dict(gpu or {"name": "RTX 4090 (fake)", "compute_capability": "8.9"})
    B.device_memory = lambda preference="auto", device=0: trt.memory
    return trt
