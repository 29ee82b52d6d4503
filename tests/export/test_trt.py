"""TensorRT builds: options -> plan -> builder-config calls / trtexec command line, without TensorRT;
the trtexec path with a stand-in trtexec; real engine builds where TensorRT and a GPU exist (marked trt)."""

from __future__ import annotations

import os
import stat
import sys
from types import SimpleNamespace

import pytest

from tests.conftest import assert_one_error
from vla_export.errors import ArtifactError, ConfigError, DataError, ExitCode, MissingDependencyError
from vla_export.export import trt as T
from vla_export.artifacts.manifest import read_manifest
from vla_export.fileio import sha256_file


@pytest.fixture(scope="module")
def facts(tiny_onnx):
    return T.read_onnx_facts(tiny_onnx)


def test_profile_parsing():
    assert T.parse_profile("input_ids=1x1:1x16:1x64") == ("input_ids", T.Profile((1, 1), (1, 16), (1, 64)))
    assert T.parse_profile("x=2x3") == ("x", T.Profile((2, 3), (2, 3), (2, 3)))
    for bad in ("input_ids", "x=1x1:1x2", "x=axb", "x=1x4:1x2:1x3"):
        with pytest.raises(ConfigError):
            T.parse_profile(bad)


def test_facts_and_default_profiles_from_the_tiny_onnx(facts):
    assert not facts.typed and facts.config.name == "tiny"
    assert {"layernorm", "softmax", "mask"} <= set(facts.sensitive.values())
    profiles = T.derive_profiles(facts, T.TrtBuildOptions(max_batch=4))
    assert profiles["pixel_values"] == T.Profile((1, 4, 3, 224, 224), (1, 4, 3, 224, 224), (4, 4, 3, 224, 224))
    assert profiles["input_ids"] == profiles["attention_mask"] == T.Profile((1, 1), (1, 16), (4, 32))
    assert T.derive_profiles(facts, T.TrtBuildOptions(), text_opt=20)["input_ids"].opt == (1, 20)


def test_profile_flags_override_and_are_checked(facts):
    _, p = T.parse_profile("input_ids=1x8:1x8:1x8")
    profiles = T.derive_profiles(facts, T.TrtBuildOptions(shapes={"input_ids": p}))
    assert profiles["input_ids"] == p
    with pytest.raises(ConfigError, match="has inputs"):
        T.derive_profiles(facts, T.TrtBuildOptions(shapes={"pixels": p}))
    _, wrong_window = T.parse_profile("pixel_values=1x2x3x224x224")
    with pytest.raises(ConfigError, match="axis 1 is fixed at 4"):
        T.derive_profiles(facts, T.TrtBuildOptions(shapes={"pixel_values": wrong_window}))


def test_plan_per_precision(facts):
    fp32 = T.make_plan(facts, T.TrtBuildOptions())
    assert fp32.flags == [] and not fp32.strongly_typed and fp32.layer_rules == []
    fp16 = T.make_plan(facts, T.TrtBuildOptions(precision="fp16"))
    assert fp16.flags == ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
    kept = {r.reason: r for r in fp16.layer_rules}
    assert kept["layernorm+softmax"].layer_types == () and kept["attention-mask arithmetic"].names  # exact names only (3.3)
    assert "node_layer_norm" in kept["layernorm+softmax"].names
    assert all(r.precision == "fp32" for r in fp16.layer_rules)
    assert T.make_plan(facts, T.TrtBuildOptions(precision="fp16", fp16_all=True)).flags == ["FP16"]
    with pytest.raises(DataError, match="--calib"):
        T.make_plan(facts, T.TrtBuildOptions(precision="int8"))
    int8 = T.make_plan(facts, T.TrtBuildOptions(precision="int8", calib="calibration/c.npz"),
                       calib_shapes={"pixel_values": (1, 4, 3, 224, 224), "input_ids": (1, 16), "attention_mask": (1, 16)})
    assert int8.flags[:2] == ["FP16", "INT8"] and int8.calibration_profile["input_ids"] == T.Profile((1, 16), (1, 16), (1, 16))
    assert int8.calib_cache == "calibration/c.tiny.trt10.3.0.cache"
    assert {r.reason: r.precision for r in int8.layer_rules}["residual adds out of INT8"] == "fp16"


def test_typed_onnx_and_tensorrt_versions(facts):
    qdq = T.OnnxFacts(facts.path, facts.inputs, has_qdq=True, has_fp16=False, sensitive={}, config=facts.config)
    assert T.make_plan(qdq, T.TrtBuildOptions()).strongly_typed
    typed_int8 = T.make_plan(qdq, T.TrtBuildOptions(precision="int8"))  # Q/DQ + --int8: strongly typed (3.2)
    assert typed_int8.strongly_typed and typed_int8.flags == [] and typed_int8.calibration_profile is None
    assert T.make_plan(facts, T.TrtBuildOptions(), trt_version="11.0.0").strongly_typed
    with pytest.raises(ConfigError, match="no FP16/INT8 builder flags.*vla-export quantize"):
        T.make_plan(facts, T.TrtBuildOptions(precision="fp16"), trt_version="11.0.0")
    with pytest.raises(ConfigError, match="too old"):
        T.make_plan(facts, T.TrtBuildOptions(), trt_version="8.6.1")
    with pytest.raises(ConfigError, match="DLA runs FP16 or INT8"):
        T.make_plan(facts, T.TrtBuildOptions(dla_core=0))
    with pytest.raises(ConfigError, match="needs --version-compatible"):
        T.TrtBuildOptions(exclude_lean_runtime=True)


class Recorder:
    """Records attribute sets and method calls, the way a TensorRT builder config would receive them."""

    def __init__(self, log, name, **attrs):
        object.__setattr__(self, "_log", log)
        object.__setattr__(self, "_name", name)
        for k, v in attrs.items():
            object.__setattr__(self, k, v)

    def __setattr__(self, key, value):
        self._log.append((f"{self._name}.{key}", value))
        object.__setattr__(self, key, value)

    def __getattr__(self, method):
        def call(*args, **kwargs):
            self._log.append((f"{self._name}.{method}", args, kwargs))
            if method in ("create_optimization_profile",):
                return Recorder(self._log, f"profile{sum(1 for e in self._log if e[0].endswith('create_optimization_profile'))}")
            if method == "create_timing_cache":
                return "CACHE"
            return None

        return call


def fake_trt():
    enum = lambda *names: SimpleNamespace(**{n: n for n in names})  # noqa: E731
    return SimpleNamespace(
        MemoryPoolType=enum("WORKSPACE"),
        BuilderFlag=enum("FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS", "GPU_FALLBACK", "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME"),
        HardwareCompatibilityLevel=enum("AMPERE_PLUS"),
        DeviceType=enum("DLA", "GPU"),
        NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=1),
        LayerType=enum("NORMALIZATION", "SOFTMAX", "ELEMENTWISE", "SHUFFLE"),
        float32="f32", float16="f16", bool="bool",
    )


def test_apply_plan_makes_the_tensorrt10_config_calls(facts):
    trt = fake_trt()
    options = T.TrtBuildOptions(precision="fp16", workspace_mib=512, optimization_level=5, hardware_compatibility="ampere+",
                                dla_core=1, version_compatible=True)
    plan = T.make_plan(facts, options)
    log = []
    builder, config = Recorder(log, "builder", num_DLA_cores=2), Recorder(log, "config")
    assert T.apply_plan(plan, builder, config, trt, b"old-cache") == "CACHE"
    calls = [e[:2] if len(e) == 3 else e for e in log]
    assert ("config.set_memory_pool_limit", ("WORKSPACE", 512 << 20)) in calls
    for flag in ("FP16", "OBEY_PRECISION_CONSTRAINTS", "GPU_FALLBACK", "VERSION_COMPATIBLE"):
        assert ("config.set_flag", (flag,)) in calls
    assert ("config.builder_optimization_level", 5) in calls
    assert ("config.hardware_compatibility_level", "AMPERE_PLUS") in calls
    assert ("config.default_device_type", "DLA") in calls and ("config.DLA_core", 1) in calls
    assert ("profile1.set_shape", ("input_ids", (1, 1), (1, 16), (1, 32))) in calls
    assert [e[0] for e in log].count("config.add_optimization_profile") == 1
    assert ("config.create_timing_cache", (b"old-cache",)) in calls
    assert log[-1] == ("config.set_timing_cache", ("CACHE",), {"ignore_mismatch": False})
    assert T.network_flags(plan, trt) == 0
    assert T.network_flags(T.make_plan(facts, T.TrtBuildOptions(typing="strong")), trt) == 1 << 1
    with pytest.raises(ConfigError, match="has 0 DLA cores"):
        T.apply_plan(plan, Recorder([], "builder", num_DLA_cores=0), Recorder([], "config"), trt)


def test_calibration_profile_call(facts):
    shapes = {"pixel_values": (1, 4, 3, 224, 224), "input_ids": (1, 16), "attention_mask": (1, 16)}
    plan = T.make_plan(facts, T.TrtBuildOptions(precision="int8", calib="c.npz"), calib_shapes=shapes)
    log = []
    T.apply_plan(plan, Recorder(log, "builder"), Recorder(log, "config"), fake_trt())
    assert any(e[0] == "config.set_calibration_profile" for e in log)
    assert ("profile2.set_shape", ("input_ids", (1, 16), (1, 16), (1, 16)), {}) in log


class FakeTensor(SimpleNamespace):
    pass


class FakeLayer:
    def __init__(self, name, type_, dtypes):
        self.name, self.type = name, type_
        self._outs = [FakeTensor(dtype=d) for d in dtypes]
        self.num_outputs = len(dtypes)
        self.precision, self.output_types = None, {}

    def get_output(self, i):
        return self._outs[i]

    def set_output_type(self, i, dtype):
        self.output_types[i] = dtype


def test_layer_rules_pin_float_layers_only():
    trt = fake_trt()
    layers = [
        FakeLayer("node_layer_norm", "NORMALIZATION", ["f32"]),
        FakeLayer("node_Softmax_3", "SOFTMAX", ["f16"]),
        FakeLayer("node_masked_fill", "ELEMENTWISE", ["f32"]),
        FakeLayer("node_full", "ELEMENTWISE", ["bool"]),  # not float: pinning would break the build
        FakeLayer("node_add_7", "ELEMENTWISE", ["f32"]),
        FakeLayer("node_matmul", "ELEMENTWISE", ["f32"]),
    ]
    network = SimpleNamespace(num_layers=len(layers), get_layer=lambda i: layers[i])
    rules = [T.LayerRule("fp32", names=("node_layer_norm", "node_Softmax_3"), reason="norm"),
             T.LayerRule("fp32", names=("node_masked_fill", "node_full"), reason="mask"),
             T.LayerRule("fp16", names=("node_add_7",), reason="residual")]
    assert T.apply_layer_rules(rules, network, trt) == {"norm": 2, "mask": 1, "residual": 1}
    assert [l.precision for l in layers] == ["f32", "f32", "f32", None, "f16", None]
    assert layers[2].output_types == {0: "f32"} and layers[3].output_types == {}
    # exact names, as trtexec: a rule for node_add does not pin node_add_7 (a different ONNX node)
    layers = [FakeLayer("node_add", "ELEMENTWISE", ["f32"]), FakeLayer("node_add_7", "ELEMENTWISE", ["f32"]),
              FakeLayer("other", "NORMALIZATION", ["f32"])]
    network = SimpleNamespace(num_layers=len(layers), get_layer=lambda i: layers[i])
    assert T.apply_layer_rules([T.LayerRule("fp32", names=("node_add",), reason="r")], network, trt) == {"r": 1}
    assert [l.precision for l in layers] == ["f32", None, None]


def test_trtexec_command_line(facts):
    plan = T.make_plan(facts, T.TrtBuildOptions(precision="fp16", timing_cache="t.cache", optimization_level=4,
                                                dla_core=0, hardware_compatibility="ampere+"))
    cmd = T.trtexec_command(plan, "m.onnx", "m.engine")
    assert cmd[:3] == ["trtexec", "--onnx=m.onnx", "--saveEngine=m.engine"]
    for arg in ("--fp16", "--precisionConstraints=obey", "--memPoolSize=workspace:2048M", "--timingCacheFile=t.cache",
                "--builderOptimizationLevel=4", "--useDLACore=0", "--allowGPUFallback", "--hardwareCompatibilityLevel=ampere+",
                "--minShapes=pixel_values:1x4x3x224x224,input_ids:1x1,attention_mask:1x1",
                "--optShapes=pixel_values:1x4x3x224x224,input_ids:1x16,attention_mask:1x16"):
        assert arg in cmd
    precisions = next(a for a in cmd if a.startswith("--layerPrecisions="))
    assert "node_masked_fill:fp32" in precisions and "node_layer_norm:fp32" in precisions
    typed = T.make_plan(T.OnnxFacts(facts.path, facts.inputs, True, False, {}, facts.config), T.TrtBuildOptions())
    assert "--stronglyTyped" in T.trtexec_command(typed, "q.onnx", "q.engine")


@pytest.fixture
def no_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)  # and TensorRT-RTX's too


@pytest.fixture
def fake_trtexec(tmp_path, monkeypatch):
    """A stand-in trtexec on PATH: prints TensorRT's banner and writes --saveEngine, or fails with FAIL_TRTEXEC set."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "trtexec"
    script.write_text(
        "#!/bin/sh\n"
        "echo '&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec'\n"
        "[ -n \"$FAIL_TRTEXEC\" ] && { echo 'Error[4]: fake failure'; exit 1; }\n"
        "for a in \"$@\"; do case $a in --saveEngine=*) printf 'ENGINE' > \"${a#--saveEngine=}\";; esac; done\n"
        "echo \"$@\" > \"$(dirname \"$0\")/last_args\"\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return bindir


def test_missing_tensorrt_says_how_to_install(no_tensorrt, monkeypatch, tiny_onnx, tmp_path, cli):
    monkeypatch.setattr(T.shutil, "which", lambda name: None)
    with pytest.raises(MissingDependencyError, match="JetPack.*pip install"):
        T.build_engine(tiny_onnx, tmp_path / "x.engine")
    r = cli("trt", tiny_onnx, "-o", tmp_path / "x.engine", "--fp16")
    assert_one_error(r, ExitCode.ENVIRONMENT, "TensorRT is not installed")
    assert not (tmp_path / "x.engine").exists()
    r = cli("trt", tiny_onnx, "-o", tmp_path / "x.engine", "--fp16", "--print-trtexec")
    assert r.exit_code == 0 and "--fp16" in r.stdout and "--profilingVerbosity" not in r.stdout
    r = cli("trt", tiny_onnx, "-o", tmp_path / "x.engine", "--print-trtexec", "--profiling-verbosity", "detailed")
    assert r.exit_code == 0 and f"--profilingVerbosity=detailed --exportLayerInfo={tmp_path / 'x.engine.layers.json'}" in r.stdout
    assert_one_error(cli("trt", tiny_onnx, "-o", tmp_path / "x.engine", "--print-trtexec", "--profiling-verbosity", "full"),
                     ExitCode.BAD_INPUT, "--profiling-verbosity", "detailed")


def test_build_through_trtexec_writes_engine_and_manifest(no_tensorrt, fake_trtexec, tiny_onnx, tmp_path):
    engine = tmp_path / "engines" / "tiny.engine"
    result = T.build_engine(tiny_onnx, engine, T.TrtBuildOptions(precision="fp16", timing_cache=tmp_path / "timing.cache"))
    assert result.builder == "trtexec" and result.tensorrt == "10.3.0" and engine.read_bytes() == b"ENGINE"
    args = (fake_trtexec / "last_args").read_text()
    assert "--fp16" in args and "--precisionConstraints=obey" in args and f"--timingCacheFile={tmp_path / 'timing.cache'}" in args
    m = read_manifest(engine, kind="engine").to_dict()
    assert m["tensorrt"] == "10.3.0" and m["precision"] == "fp16" and "FP16" in m["flags"]
    assert m["onnx"]["sha256"] == sha256_file(tiny_onnx) and m["config"]["name"] == "tiny"
    assert m["profiles"]["input_ids"] == {"min": [1, 1], "opt": [1, 16], "max": [1, 32]}
    assert "gpu" in m and "build_seconds" in m and m["parity"] is None
    T.record_parity(engine, {"passed": True})
    assert read_manifest(engine).to_dict()["parity"] == {"passed": True}


def test_failed_or_impossible_trtexec_builds_leave_nothing(no_tensorrt, fake_trtexec, tiny_onnx, tmp_path, monkeypatch):
    engine = tmp_path / "tiny.engine"
    monkeypatch.setenv("FAIL_TRTEXEC", "1")
    with pytest.raises(ArtifactError, match="trtexec failed.*fake failure"):
        T.build_engine(tiny_onnx, engine)
    assert not engine.exists() and not list(tmp_path.glob(".tiny.engine*"))
    monkeypatch.delenv("FAIL_TRTEXEC")
    from vla_export.data.calibration import make_calibration_set
    from vla_export.data.episodes import write_synthetic_episodes
    from vla_export.models.config import get_preset

    write_synthetic_episodes(tmp_path / "ep", 1, frames=5, frame_hw=(24, 32))
    calib = make_calibration_set(tmp_path / "ep", get_preset("tiny"), tmp_path / "c.npz", count=1)
    with pytest.raises(ConfigError, match="needs the calibration cache .* does not exist"):
        T.build_engine(tiny_onnx, engine, T.TrtBuildOptions(precision="int8", calib=calib.path))
    assert not engine.exists()


def test_onnx_with_missing_external_data_is_refused(tiny_onnx, tmp_path):
    from vla_export.artifacts.onnxfile import save_onnx
    from vla_export.artifacts.onnxfile import load_onnx

    save_onnx(load_onnx(tiny_onnx), tmp_path / "m.onnx", external=True)
    (tmp_path / "m.onnx.data").unlink()
    with pytest.raises(ArtifactError, match="m.onnx.data is missing"):
        T.read_onnx_facts(tmp_path / "m.onnx")


# --- real builds: need TensorRT and a GPU ---------------------------------------------------------------

def _require_tensorrt():
    trt = pytest.importorskip("tensorrt", reason="TensorRT Python bindings not installed")
    from vla_export.backends.tensorrt import gpu_info

    if not gpu_info().get("name"):
        pytest.skip("no CUDA GPU visible")
    return trt


@pytest.mark.trt
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_real_engine_build_and_parity(precision, tiny_onnx, tiny_ckpt, tmp_path):
    _require_tensorrt()
    from vla_export.data.calibration import make_calibration_set
    from vla_export.data.episodes import write_synthetic_episodes
    from vla_export.models.config import get_preset
    from vla_export.models.loader import PolicyFromCheckpoint
    from vla_export.verify.parity import parity_check

    calib = None
    if precision == "int8":
        write_synthetic_episodes(tmp_path / "ep", 2, frames=8, frame_hw=(96, 160))
        calib = make_calibration_set(tmp_path / "ep", get_preset("tiny"), tmp_path / "calibration" / "c.npz", count=8).path
    engine = tmp_path / f"tiny.{precision}.engine"
    result = T.build_engine(tiny_onnx, engine, T.TrtBuildOptions(precision=precision, calib=calib, timing_cache=tmp_path / "t.cache"))
    assert result.builder == "tensorrt-python" and engine.stat().st_size > 1000
    assert (tmp_path / "t.cache").exists()
    if calib:
        assert list((tmp_path / "calibration").glob("*.cache"))
    parity = parity_check(PolicyFromCheckpoint(tiny_ckpt), engine, samples=4)
    assert parity.passed, parity.summary()


@pytest.mark.trt
def test_real_strongly_typed_qdq_build(tiny_onnx, tiny_ckpt, tmp_path):
    _require_tensorrt()
    from vla_export.data.calibration import make_calibration_set
    from vla_export.data.episodes import write_synthetic_episodes
    from vla_export.export.quantize import quantize_int8
    from vla_export.models.config import get_preset
    from vla_export.models.loader import PolicyFromCheckpoint
    from vla_export.verify.parity import parity_check

    write_synthetic_episodes(tmp_path / "ep", 2, frames=8, frame_hw=(96, 160))
    calib = make_calibration_set(tmp_path / "ep", get_preset("tiny"), tmp_path / "c.npz", count=8)
    q = quantize_int8(tiny_onnx, calib, tmp_path / "tiny.int8.onnx")
    engine = tmp_path / "tiny.qdq.engine"
    result = T.build_engine(q.output, engine)
    assert result.plan["strongly_typed"]
    assert parity_check(PolicyFromCheckpoint(tiny_ckpt), engine, samples=4).passed
