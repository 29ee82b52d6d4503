"""TrtRunner with TensorRT for RTX: the refusals against the real library (no supported GPU here: it says so, with the
compute capabilities, exit 3), flavour and version checks, and the run path (runtime cache, warming every shape)
against the stand-in (tests/fake_tensorrt.py), until a supported GPU is available."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest

from tests import fake_tensorrt as F
from tests.conftest import assert_one_error
from vla_export.backends import tensorrt as B
from vla_export.errors import ArtifactError, EnvironmentProblem, ExitCode


@pytest.fixture
def restore(monkeypatch):
    """Undo the stand-in's patches of the backend and sys.modules."""
    monkeypatch.setattr(B, "gpu_info", B.gpu_info)
    monkeypatch.setattr(B, "device_memory", B.device_memory)
    for name in ("tensorrt", "tensorrt_rtx"):
        monkeypatch.setitem(sys.modules, name, sys.modules.get(name))


@pytest.fixture(scope="module")
def real_rtx_engine(tiny_onnx, tmp_path_factory):
    """A real TensorRT-RTX engine of tiny for 8.6 and 8.9, built here (no GPU needed to build)."""
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX (tensorrt_rtx) cannot be imported: `pip install -e '.[trt-rtx]'`")
    from vla_export.export.trt import TrtBuildOptions, build_engine

    engine = tmp_path_factory.mktemp("rtx") / "tiny.engine"
    build_engine(tiny_onnx, engine, TrtBuildOptions(compute_capabilities=("86", "89")))
    return engine


def test_the_real_library_refuses_to_run_here_naming_the_reason_and_compute_capabilities(real_rtx_engine, cli):
    if B.gpu_info().get("name"):
        pytest.skip("a GPU is visible: this test is for machines without one")
    with pytest.raises(EnvironmentProblem) as info:
        B.TrtRunner(real_rtx_engine).activate()
    message = str(info.value)
    assert info.value.exit_code == ExitCode.ENVIRONMENT and "\n" not in message
    assert "TensorRT-RTX 1.7.1 reports the engine INVALID" in message and "cudaError 35" in message
    assert "compute capability 8.6, 8.9" in message and "no CUDA GPU visible" in message
    assert not B.TrtRunner(real_rtx_engine).runtime_cache_path.exists()
    r = cli(real_rtx_engine, "-b", "trt", "--warmup", "1", "--iters", "1", app="bench")
    assert_one_error(r, ExitCode.ENVIRONMENT, "reports the engine INVALID", "8.6, 8.9")


def test_an_engine_of_the_other_flavour_or_version_is_refused_by_name(real_rtx_engine, tiny_onnx, tmp_path, restore):
    # a TensorRT engine offered to TensorRT-RTX (the real one installed here, no `tensorrt`)
    sys.modules["tensorrt"] = None
    pytest.importorskip("tensorrt_rtx")
    trt_engine = F.write_fake_engine(tmp_path / "orin.engine", tiny_onnx, tensorrt="10.3.0")
    with pytest.raises(ArtifactError, match=r"built with TensorRT 10\.3\.0, and this machine's library is TensorRT-RTX 1\.7\.1"):
        B.TrtRunner(trt_engine).activate()
    # a TensorRT-RTX engine offered to TensorRT (a stand-in 10.3)
    F.install()
    with pytest.raises(ArtifactError, match=r"built with TensorRT-RTX 1\.7\.1, and this machine's library is TensorRT 10\.3\.0"):
        B.TrtRunner(real_rtx_engine).activate()
    # another TensorRT-RTX version
    F.install_rtx()
    old = F.write_fake_engine(tmp_path / "old.engine", tiny_onnx, tensorrt="1.6.0.5", tensorrt_flavor="rtx")
    with pytest.raises(ArtifactError, match=r"built with TensorRT-RTX 1\.6\.0, this machine has TensorRT-RTX 1\.7\.1"):
        B.TrtRunner(old).activate()


def test_invalid_engines_are_refused_before_deserialising(tiny_onnx, tmp_path, restore):
    F.install_rtx(validity="INVALID", diagnostics=2 | 4)
    engine = F.write_fake_engine(tmp_path / "e.engine", tiny_onnx, tensorrt="1.7.1.116", tensorrt_flavor="rtx",
                                 compute_capabilities=["120"])
    with pytest.raises(EnvironmentProblem, match=r"INVALID: unsupported cc; old cuda driver; the engine targets compute capability "
                                                 r"12\.0, this machine has RTX 4090 \(fake\) \(compute capability 8\.9\)"):
        B.TrtRunner(engine).activate()


def test_the_run_path_keeps_a_runtime_cache_beside_the_engine_and_warms_every_shape(tiny_onnx, tmp_path, restore):
    F.install_rtx()
    engine = F.write_fake_engine(tmp_path / "tiny.engine", tiny_onnx, tensorrt="1.7.1.116", tensorrt_flavor="rtx",
                                 compute_capabilities=["89"])
    rng = np.random.default_rng(0)

    def feed(text_len: int) -> dict:
        return {"pixel_values": rng.standard_normal((1, 4, 3, 224, 224), dtype=np.float32),
                "input_ids": np.ones((1, text_len), np.int64), "attention_mask": np.ones((1, text_len), np.int64)}

    runner = B.TrtRunner(engine)
    with runner:
        assert runner.warm([feed(8), feed(8), feed(16)]) == 2  # two shapes, each compiled once before any timing
        assert runner.runtime_cache_path.read_bytes().count(b"input_ids=") == 2
        out = runner.infer(feed(16))
        assert out["actions"].shape == (1, 3) and np.isfinite(out["actions"]).all()
        assert runner.describe()["tensorrt_flavor"] == "rtx"
    cache = runner.runtime_cache_path.read_bytes()
    assert b"input_ids=1x8" in cache and b"input_ids=1x16" in cache
    with B.TrtRunner(engine) as again:  # the next process starts from the cache: nothing new to compile
        assert again._runtime_cache.shapes == cache[len(b"RTXCACHE:"):].decode().split(";")
    runner.runtime_cache_path.write_bytes(b"another GPU's cache")  # refused by the library: compiled afresh, said out loud
    with B.TrtRunner(engine) as fresh:
        assert fresh._runtime_cache.shapes == []


def test_inspect_prints_the_layers_by_precision_without_deserialising(real_rtx_engine, cli):
    r = cli("inspect", real_rtx_engine)
    assert r.exit_code == 0, r
    out = " ".join(r.stdout.split())
    assert "TensorRT-RTX engine; compute capability targets: 86, 89" in out
    assert re.search(r"engine layers by precision \(\d+\): \d+ Float", out) and "GEMM/convolution layers: 35 Float" in out
    assert "Int8" not in out.split("engine layers by precision")[1].split("no per-layer")[0].replace("Int64", "")
