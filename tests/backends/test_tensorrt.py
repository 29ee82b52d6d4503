"""TrtRunner: manifest checks, refusals and the binding/execution logic, against a stand-in TensorRT and
stand-in device memory (the real thing runs only where TensorRT and a GPU exist: see tests/export/test_trt.py)."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest

from vla_export.backends import tensorrt as B
from vla_export.backends.select import runner_for_artifact
from vla_export.errors import ArtifactError, MissingDependencyError, RunnerError
from vla_export.artifacts.manifest import SCHEMA as MANIFEST_SCHEMA, FileEntry, Manifest, build_manifest, read_manifest as read_manifest_json, write_manifest

GPU = {"name": "Orin", "compute_capability": "8.7"}
ENGINE_BYTES = b"FAKE-ENGINE"
WINDOW = 2


class FakeMemory:
    """Host arrays standing in for device buffers; pointers are indices into a shared table."""

    name = "fake"
    table: dict[int, np.ndarray] = {}
    next_ptr = [1]

    def __init__(self, *args):
        self.stream_handle = 7
        self.synced = 0

    def alloc(self, nbytes):
        ptr = self.next_ptr[0]
        self.next_ptr[0] += 1
        self.table[ptr] = np.zeros(nbytes, np.uint8)
        return ptr

    def ptr(self, buf):
        return buf

    def host_empty(self, shape, dtype):
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


INPUT, OUTPUT = "INPUT", "OUTPUT"
TENSORS = {
    "pixel_values": (INPUT, np.float32, (-1, WINDOW, 3, 8, 8)),
    "input_ids": (INPUT, np.int64, (-1, -1)),
    "attention_mask": (INPUT, np.int64, (-1, -1)),
    "actions": (OUTPUT, np.float32, (-1, 3)),
}


class FakeContext:
    def __init__(self):
        self.shapes, self.addresses = {}, {}

    def set_input_shape(self, name, shape):
        if shape[0] > 2:
            return False  # outside the profile
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        return (self.shapes["pixel_values"][0], 3)

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr

    def execute_async_v3(self, stream):
        assert stream == 7
        b = self.shapes["pixel_values"][0]
        pv = FakeMemory.table[self.addresses["pixel_values"]][: b * WINDOW * 3 * 64 * 4].view(np.float32).reshape(b, -1)
        ids = FakeMemory.table[self.addresses["input_ids"]].view(np.int64)[: b * self.shapes["input_ids"][1]].reshape(b, -1)
        out = np.stack([pv.mean(1), pv.max(1), ids.sum(1).astype(np.float32)], axis=1).astype(np.float32)
        FakeMemory.table[self.addresses["actions"]][: out.nbytes] = out.reshape(-1).view(np.uint8)
        return True


class FakeEngine:
    names = list(TENSORS)
    num_io_tensors = len(TENSORS)

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return TENSORS[name][0]

    def get_tensor_dtype(self, name):
        return SimpleNamespace(name={np.float32: "FLOAT", np.int64: "INT64"}.get(TENSORS[name][1], TENSORS[name][1]))

    def get_tensor_shape(self, name):
        return TENSORS[name][2]

    def create_execution_context(self):
        return FakeContext()


def make_fake_trt(version="10.3.0"):
    class Runtime:
        def __init__(self, logger):
            self.engine_host_code_allowed = False

        def deserialize_cuda_engine(self, data):
            return FakeEngine() if data == ENGINE_BYTES else None

    return SimpleNamespace(
        __version__=version, Logger=SimpleNamespace(WARNING=2, __call__=None), Runtime=Runtime,
        TensorIOMode=SimpleNamespace(INPUT=INPUT, OUTPUT=OUTPUT), nptype=lambda t: t,
    )


@pytest.fixture
def fake_stack(monkeypatch):
    def install(version="10.3.0", gpu=GPU):
        trt = make_fake_trt(version)
        trt.Logger = lambda level: None
        trt.Logger.WARNING = 2
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(B, "gpu_info", lambda device=0: dict(gpu))
        monkeypatch.setattr(B, "device_memory", lambda pref="auto", device=0: FakeMemory())
        return trt

    return install


def write_engine(path, data=ENGINE_BYTES, *, tensorrt="10.3.0", gpu=GPU, flags=(), hw="none", recorded_bytes=None):
    path.write_bytes(data)
    m = build_manifest("engine", path, [path], tensorrt=tensorrt, gpu=dict(gpu), precision="fp16", flags=list(flags),
                       plan={"flags": list(flags), "hardware_compatibility": hw}, onnx={"path": "engines/tiny.onnx"})
    if recorded_bytes is not None:
        m = m.replace(files=(FileEntry(path.name, recorded_bytes),))
    write_manifest(path, m)
    return path


def feed(batch=1, text=5, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "pixel_values": rng.normal(size=(batch, WINDOW, 3, 8, 8)).astype(np.float32),
        "input_ids": rng.integers(5, 50, size=(batch, text)),
        "attention_mask": np.ones((batch, text), np.int64),
    }


def test_runner_binds_buffers_runs_and_returns_numpy(fake_stack, tmp_path):
    fake_stack()
    engine = write_engine(tmp_path / "tiny.engine")
    with runner_for_artifact(engine) as runner:
        assert isinstance(runner, B.TrtRunner)
        assert list(runner.input_names) == ["pixel_values", "input_ids", "attention_mask"] and list(runner.output_names) == ["actions"]
        assert runner.input_shapes["input_ids"] == ["dynamic", "dynamic"] and runner.device == "cuda"
        for batch, text in ((1, 5), (2, 9), (1, 3)):  # shapes change between calls: buffers grow and rebind
            x = feed(batch, text, seed=batch + text)
            out = runner.infer(x)["actions"]
            pv = x["pixel_values"].reshape(batch, -1)
            expected = np.stack([pv.mean(1), pv.max(1), x["input_ids"].sum(1)], axis=1)
            np.testing.assert_allclose(out, expected, rtol=1e-5)
        staged = runner.stage(feed(1, 4))  # the pieces benchmarks time separately
        runner.execute(staged)
        runner.synchronize()
        assert runner.to_host(staged)["actions"].shape == (1, 3)
        info = runner.describe()
        assert info["tensorrt"] == "10.3.0" and info["gpu"] == "Orin" and info["built_with"] == "10.3.0"
        with pytest.raises(RunnerError, match="outside the engine's optimization profile"):
            runner.infer(feed(3, 4))


def test_engine_from_another_tensorrt_version_is_refused(fake_stack, tmp_path):
    fake_stack(version="10.7.0")
    engine = write_engine(tmp_path / "tiny.engine", tensorrt="10.3.0")
    with pytest.raises(ArtifactError, match=r"built with TensorRT 10.3.0, this machine has TensorRT 10.7.0; rebuild .*vla-export trt engines/tiny.onnx -o"):
        B.TrtRunner(engine).activate()
    compatible = write_engine(tmp_path / "vc.engine", tensorrt="10.3.0", flags=("VERSION_COMPATIBLE",))
    with B.TrtRunner(compatible) as runner:  # a version-compatible engine runs on a later 10.x
        assert runner.infer(feed())["actions"].shape == (1, 3)


def test_engine_for_another_gpu_is_refused(fake_stack, tmp_path):
    fake_stack(gpu={"name": "RTX 3090", "compute_capability": "8.6"})
    engine = write_engine(tmp_path / "tiny.engine")
    with pytest.raises(ArtifactError, match=r"built for Orin \(compute capability 8.7\), this GPU is RTX 3090 \(8.6\); rebuild"):
        B.TrtRunner(engine).activate()
    portable = write_engine(tmp_path / "hw.engine", hw="ampere+")
    with B.TrtRunner(portable):
        pass


def test_truncated_engine_is_refused_before_tensorrt_loads(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    engine = write_engine(tmp_path / "tiny.engine", recorded_bytes=len(ENGINE_BYTES) + 100)
    with pytest.raises(ArtifactError, match="changed or truncated"):
        B.TrtRunner(engine).activate()
    (tmp_path / "empty.engine").write_bytes(b"")
    with pytest.raises(ArtifactError, match="empty"):
        B.TrtRunner(tmp_path / "empty.engine").activate()
    with pytest.raises(MissingDependencyError, match="tensorrt"):
        B.TrtRunner(write_engine(tmp_path / "ok.engine")).activate()


def test_undeserializable_engine_without_manifest(fake_stack, tmp_path):
    fake_stack()
    bad = tmp_path / "other.engine"
    bad.write_bytes(b"engine from somewhere else")
    with pytest.raises(ArtifactError, match="cannot deserialize it .*rebuild"):
        B.TrtRunner(bad).activate()
    with pytest.raises(ArtifactError, match="manifest not found"):
        B.TrtRunner(bad, require_manifest=True).activate()


def test_compat_rules():
    m = Manifest.from_dict({"schema": MANIFEST_SCHEMA, "kind": "engine", "artifact": "e", "tensorrt": "10.3.0", "gpu": GPU,
                            "plan": {"flags": ["VERSION_COMPATIBLE"], "hardware_compatibility": "none"}}, "e")
    B.check_engine_compat("e", m, "10.3.0", GPU)
    B.check_engine_compat("e", m, "10.8.0", GPU)
    with pytest.raises(ArtifactError):
        B.check_engine_compat("e", m, "10.2.0", GPU)  # older runtime
    with pytest.raises(ArtifactError):
        B.check_engine_compat("e", m, "11.0.0", GPU)  # other major


def test_no_cuda_buffers_and_no_gpu(monkeypatch):
    def broken(device):
        raise ImportError("not installed")

    monkeypatch.setattr(B, "_MEMORY", {name: broken for name in B.MEMORY_BACKENDS})
    with pytest.raises(MissingDependencyError, match="none of .*polygraphy.*cuda-python.*torch"):
        B.device_memory()
    from vla_export import system

    for probe in ("_gpu_cuda_python", "_gpu_torch", "_gpu_nvidia_smi"):
        monkeypatch.setattr(system, probe, broken)
    assert system.gpu_info()["name"] is None


@pytest.mark.gpu
@pytest.mark.parametrize("backend", B.MEMORY_BACKENDS)
def test_device_memory_roundtrip_on_a_real_gpu(backend):
    try:
        mem = B.device_memory(backend)
    except MissingDependencyError as exc:
        pytest.skip(f"{backend}: {exc}")
    try:
        host = {"f": np.arange(1000, dtype=np.float32).reshape(10, 100), "i": np.arange(7, dtype=np.int64)}
        bufs = {k: mem.alloc(v.nbytes) for k, v in host.items()}
        for k, v in host.items():
            mem.htod(bufs[k], v)
        back = {k: np.empty_like(v) for k, v in host.items()}
        for k, v in back.items():
            mem.dtoh(v, bufs[k])
        mem.sync()
        for k in host:
            np.testing.assert_array_equal(back[k], host[k])
        pinned = {k: mem.host_empty(v.shape, v.dtype) for k, v in host.items()}  # page-locked staging, as TrtRunner uses
        for k, v in host.items():
            pinned[k][...] = v[::-1]
            mem.htod(bufs[k], pinned[k])
        mem.sync()  # the async copies have read the staging buffers
        for k in host:
            pinned[k][...] = 0
            mem.dtoh(pinned[k], bufs[k])
        mem.sync()
        for k in host:
            np.testing.assert_array_equal(pinned[k], host[k][::-1])
            mem.free(bufs[k])
    finally:
        mem.close()
    assert B.gpu_info()["compute_capability"]


# --- defects found by the conformance review (issue 12, 3.5) ---------------------------------------------

def test_bf16_io_is_refused_by_name_not_a_bare_type_error(fake_stack, tmp_path, monkeypatch):
    fake_stack()
    monkeypatch.setitem(TENSORS, "actions", (OUTPUT, "BF16", (-1, 3)))
    with pytest.raises(ArtifactError, match="'actions' is BF16, which NumPy cannot hold; rebuild"):
        B.TrtRunner(write_engine(tmp_path / "bf16.engine")).activate()
    assert B.numpy_dtype(SimpleNamespace(name="HALF"), "x", tmp_path) == np.float16
    for name in ("FP8", "INT4", "FP4"):
        with pytest.raises(ArtifactError, match=name):
            B.numpy_dtype(SimpleNamespace(name=name), "x", tmp_path)


def test_four_part_bindings_version_matches_the_three_part_engine_version(fake_stack, tmp_path):
    fake_stack(version="11.4.0.106")  # trt.__version__ in the wheels; trtexec and engines record 11.4.0
    engine = write_engine(tmp_path / "tiny.engine", tensorrt="11.4.0")
    with B.TrtRunner(engine) as runner:
        assert runner.infer(feed())["actions"].shape == (1, 3)
    assert B.engine_version("10.3.0.26") == "10.3.0" and B.engine_version("10.3.0") == "10.3.0"


def _runtime_recorder(monkeypatch, trt, *, lean_ok=True, context=True):
    made = []

    class Runtime:
        def __init__(self, logger):
            self.log = []
            made.append(self)

        def __setattr__(self, key, value):
            if key != "log":
                self.log.append((key, value))
            object.__setattr__(self, key, value)

        def load_runtime(self, path):
            self.log.append(("load_runtime", path))
            return Runtime(None) if lean_ok else None

        def deserialize_cuda_engine(self, data):
            self.log.append(("deserialize_cuda_engine",))
            engine = FakeEngine()
            if not context:
                engine.create_execution_context = lambda: None
            return engine

    monkeypatch.setattr(trt, "Runtime", Runtime)
    return made


def test_dla_core_is_set_before_deserialising(fake_stack, tmp_path, monkeypatch):
    made = _runtime_recorder(monkeypatch, fake_stack())
    engine = write_engine(tmp_path / "dla.engine")
    m = read_manifest_json(engine)
    write_manifest(engine, m.replace(plan={**m.extra["plan"], "dla_core": 1}))
    with B.TrtRunner(engine):
        pass
    assert made[0].log[:2] == [("DLA_core", 1), ("deserialize_cuda_engine",)]


def test_version_compatible_engine_without_lean_runtime_loads_it(fake_stack, tmp_path, monkeypatch):
    trt = fake_stack()
    made = _runtime_recorder(monkeypatch, trt)
    engine = write_engine(tmp_path / "vc.engine", flags=("VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME"))
    with B.TrtRunner(engine):
        pass
    assert ("load_runtime", "libnvinfer_lean.so.10") in made[0].log
    assert ("deserialize_cuda_engine",) in made[1].log and ("engine_host_code_allowed", True) in made[1].log
    made = _runtime_recorder(monkeypatch, trt, lean_ok=False)
    with pytest.raises(ArtifactError, match="needs TensorRT's lean runtime, and /x/lean.so could not be loaded"):
        B.TrtRunner(engine, lean_runtime="/x/lean.so").activate()


def test_missing_execution_context_is_an_error(fake_stack, tmp_path, monkeypatch):
    _runtime_recorder(monkeypatch, fake_stack(), context=False)
    with pytest.raises(RunnerError, match="could not create an execution context"):
        B.TrtRunner(write_engine(tmp_path / "tiny.engine")).activate()


def test_host_staging_buffers_are_pinned_and_reused(fake_stack, tmp_path, monkeypatch):
    fake_stack()
    allocs = []
    monkeypatch.setattr(FakeMemory, "host_empty", lambda self, shape, dtype: allocs.append(shape) or np.empty(shape, dtype))
    with B.TrtRunner(write_engine(tmp_path / "tiny.engine")) as runner:
        first = runner.infer(feed(1, 5))["actions"]
        n = len(allocs)
        assert n == 4  # three inputs and one output, each from the memory backend's page-locked allocator
        second = runner.infer(feed(1, 5, seed=3))["actions"]
        assert len(allocs) == n  # same shapes: no new host allocation
        assert not np.shares_memory(first, second) and not np.array_equal(first, second)  # results are copies


def test_io_names_before_activation_come_from_the_manifest_never_a_guess(tmp_path):
    engine = tmp_path / "part.engine"
    engine.write_bytes(b"not a real engine")
    with pytest.raises(RunnerError, match="known once the runner is active"):
        B.TrtRunner(engine).input_names
    io = {"inputs": [{"name": "features", "shape": ["batch", "window", 8], "dtype": "float32"}],
          "outputs": [{"name": "actions", "shape": ["batch", 3], "dtype": "float32"}]}
    write_manifest(engine, build_manifest("engine", engine, [engine], io=io))
    runner = B.TrtRunner(engine)
    assert list(runner.input_names) == ["features"] and list(runner.output_names) == ["actions"]
