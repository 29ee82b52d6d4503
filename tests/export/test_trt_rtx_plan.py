"""TensorRT for RTX as a flavour of the one plan: strongly typed, compute-capability targets, detailed profiling, no
timing cache; every option it cannot act on refused in one line (plan level and CLI, exit 2). The builder itself
is exercised by the conformance gate (test_trt_rtx_gate.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.conftest import assert_one_error
from tests.export.test_trt import Recorder, fake_trt
from vla_export.errors import ConfigError, ExitCode
from vla_export.export import trt as T


@pytest.fixture(scope="module")
def facts(tiny_onnx):
    return T.read_onnx_facts(tiny_onnx)


def rtx_trt():
    trt = fake_trt()
    trt.ProfilingVerbosity = SimpleNamespace(DETAILED="DETAILED")
    trt.ComputeCapability = SimpleNamespace(**{f"SM{c}": f"SM{c}" for c in T.RTX_COMPUTE_CAPABILITIES})
    return trt


def test_the_rtx_plan_is_strongly_typed_with_targets_and_detailed_profiling(facts):
    plan = T.make_plan(facts, T.TrtBuildOptions(compute_capabilities=("86", "89", "120"), optimization_level=3),
                       trt_version="1.7.1.116", flavor="rtx")
    assert plan.strongly_typed and plan.flags == [] and plan.layer_rules == [] and plan.timing_cache is None
    assert plan.flavor == "rtx" and plan.tensorrt == "1.7.1" and plan.compute_capabilities == ["86", "89", "120"]
    log: list = []
    assert T.apply_plan(plan, Recorder(log, "builder"), Recorder(log, "config"), rtx_trt()) is None  # no timing cache
    calls = [e[:2] if len(e) == 3 else e for e in log]
    assert ("config.profiling_verbosity", "DETAILED") in calls and ("config.num_compute_capabilities", 3) in calls
    assert [c[1] for c in calls if c[0] == "config.set_compute_capability"] == [("SM86", 0), ("SM89", 1), ("SM120", 2)]
    assert not any(c[0] in ("config.set_flag", "config.create_timing_cache", "config.set_timing_cache") for c in calls)
    assert ("config.builder_optimization_level", 3) in calls
    assert T.network_flags(plan, rtx_trt()) == 1 << 1
    # without targets: the library's default (nothing set), and the plan says so
    default = T.make_plan(facts, T.TrtBuildOptions(), trt_version="1.7.1", flavor="rtx")
    log = []
    T.apply_plan(default, Recorder(log, "builder"), Recorder(log, "config"), rtx_trt())
    assert default.compute_capabilities == [] and not any(e[0] == "config.num_compute_capabilities" for e in log)
    # a target this library lacks is refused, not skipped
    trt = rtx_trt()
    del trt.ComputeCapability.SM121
    with pytest.raises(ConfigError, match="has no SM121 target"):
        T.apply_plan(T.make_plan(facts, T.TrtBuildOptions(compute_capabilities=("121",)), trt_version="1.7.1", flavor="rtx"),
                     Recorder([], "builder"), Recorder([], "config"), trt)


REFUSED = [
    ({"precision": "fp16"}, "--fp16: TensorRT-RTX 1.7.1 builds strongly typed only"),
    ({"precision": "int8"}, "--int8: TensorRT-RTX 1.7.1 builds strongly typed only"),
    ({"fp16_all": True}, "--fp16-all"),
    ({"calib": "c.npz"}, "--calib: TensorRT-RTX 1.7.1 has no INT8 calibrator"),
    ({"calib_cache": "c.cache"}, "--calib-cache"),
    ({"typing": "weak"}, "--typing weak"),
    ({"version_compatible": True}, "--version-compatible: TensorRT-RTX 1.7.1 ships no lean runtime"),
    ({"version_compatible": True, "exclude_lean_runtime": True}, "--version-compatible"),
    ({"dla_core": 0}, "--dla-core: TensorRT-RTX 1.7.1 has no DLA"),
    ({"timing_cache": "t.cache"}, "--timing-cache: TensorRT-RTX 1.7.1 has no timing cache"),
    ({"hardware_compatibility": "ampere+"}, "--hardware-compat: TensorRT-RTX 1.7.1 targets compute capabilities"),
    ({"profiling_verbosity": "layer_names_only"}, "--profiling-verbosity layer_names_only: TensorRT-RTX 1.7.1 builds are always detailed"),
]


@pytest.mark.parametrize("options,message", REFUSED, ids=[m.split(":")[0] for _, m in REFUSED])
def test_options_tensorrt_rtx_cannot_act_on_are_refused(facts, options, message):
    with pytest.raises(ConfigError) as info:
        T.make_plan(facts, T.TrtBuildOptions(**options), trt_version="1.7.1.116", flavor="rtx")
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    # TensorRT 10 takes every one of them (with what each needs there)
    needs = {"precision": {"calib": "c.npz"} if options["precision"] == "int8" else {}} if "precision" in options else {}
    extra = needs.get("precision", {}) | ({"precision": "fp16"} if "dla_core" in options else {})
    T.make_plan(facts, T.TrtBuildOptions(**options, **extra), trt_version="10.3.0")


def test_compute_capabilities_are_validated_and_only_for_rtx(facts):
    assert T.parse_compute_capabilities("86, sm89,12.0,86") == ("86", "89", "120")
    for bad in ("87", "90", "86,90"):
        with pytest.raises(ConfigError, match="TensorRT-RTX targets 75, 80, 86, 89, 120, 121"):
            T.TrtBuildOptions(compute_capabilities=T.parse_compute_capabilities(bad))
    with pytest.raises(ConfigError, match="takes a list like 86,89,120"):
        T.parse_compute_capabilities("8x")
    with pytest.raises(ConfigError, match="--compute-capability: TensorRT-RTX's targets, and this build is for TensorRT 10.3.0"):
        T.make_plan(facts, T.TrtBuildOptions(compute_capabilities=("86",)), trt_version="10.3.0")


def test_the_cli_refuses_each_in_one_line_before_building(tiny_onnx, tmp_path, cli):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX (tensorrt_rtx) cannot be imported: `pip install -e '.[trt-rtx]'`")
    import sys

    if sys.modules.get("tensorrt") is not None or __import__("importlib").util.find_spec("tensorrt"):
        pytest.skip("NVIDIA TensorRT is installed here too: it is the flavour `vla-export trt` builds with")
    engine = tmp_path / "x.engine"
    for args, needle in ((["--fp16"], "--fp16: TensorRT-RTX"), (["--int8"], "--int8: TensorRT-RTX"),
                         (["--version-compatible"], "ships no lean runtime"), (["--dla-core", "0"], "has no DLA"),
                         (["--timing-cache", str(tmp_path / "t.cache")], "has no timing cache"),
                         (["--compute-capability", "87"], "no 87 Jetson Orin")):
        assert_one_error(cli("trt", tiny_onnx, "-o", engine, *args), ExitCode.BAD_INPUT, needle)
    calib = tmp_path / "c.npz"
    calib.write_bytes(b"")
    assert_one_error(cli("trt", tiny_onnx, "-o", engine, "--calib", calib), ExitCode.BAD_INPUT, "--calib: TensorRT-RTX")
    assert not engine.exists() and not (tmp_path / "t.cache").exists()
