"""The engine code against real TensorRT artifacts (issue 12, part 4), committed under tests/data/tensorrt/:

- the Python names it uses, against the binding sources (github:NVIDIA/TensorRT python/src at v10.3.0 and v11.1:
  which class a name belongs to) and the exported strings of the real bindings wheels (10.3.0, 10.16.1.11,
  11.4.0.106: a name is there when a string ends with it, the linker merges INT8 into UINT8);
- the trtexec options it prints, against sampleOptions.cpp of trtexec 10.3.0 and 11.1;
- every op and input dtype of the exported tiny graphs (fp32, fp16, Q/DQ, split parts), against onnx-tensorrt's
  support matrix (10.1-GA, the newest tag available), with the matrix's restrictions reviewed one by one.

Each file's header says where it came from and the command that made it (tools/trt_conformance/).
A new TensorRT call, trtexec flag or op that the real artifacts do not have fails here.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

from vla_export.export import trt as T

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "tensorrt"
ENGINE_CODE = (ROOT / "vla_export" / "export" / "trt.py", ROOT / "vla_export" / "backends" / "tensorrt.py")
#: Variables of the engine code that hold TensorRT objects, and their binding classes.
VAR_CLASS = {
    "builder": "Builder", "config": "IBuilderConfig", "network": "INetworkDefinition", "parser": "OnnxParser",
    "layer": "ILayer", "o": "ITensor", "profile": "IOptimizationProfile", "cal": "IOptimizationProfile",
    "runtime": "Runtime", "loaded": "Runtime", "self._runtime": "Runtime", "self._engine": "ICudaEngine",
    "self._context": "IExecutionContext", "cache": "ITimingCache",
    "runtime_config": "IRuntimeConfig", "runtime_cache": "IRuntimeCache", "self._runtime_cache": "IRuntimeCache",
}
#: Called only on the TensorRT for RTX path (plans with flavor "rtx", engines whose manifest says rtx): not TensorRT
#: 10.3 API, checked instead against the real `tensorrt_rtx` module (test_rtx_only_names_exist_in_tensorrt_rtx).
RTX_ONLY = {
    "ComputeCapability", "IBuilderConfig.num_compute_capabilities", "IBuilderConfig.set_compute_capability",
    "Runtime.get_engine_validity", "EngineInvalidityDiagnostics", "EngineInvalidityDiagnostics.__members__",
    "ICudaEngine.create_runtime_config", "IRuntimeConfig.create_runtime_cache", "IRuntimeConfig.set_runtime_cache",
    "IRuntimeCache.deserialize", "IRuntimeCache.serialize",
}
#: Defined in the wheel's tensorrt_bindings/__init__.py (Python), not in tensorrt.so.
PYTHON_LEVEL = {"__version__"}
#: Reviewed by hand against the binding sources: enum values exported into the enclosing class with export_values().
EXPORTED_VALUES = {"Logger.WARNING": "ILogger.Severity.WARNING, export_values() (pyCore.cpp)"}


def _lines(name: str) -> list[str]:
    return [line.strip() for line in (DATA / name).read_text().splitlines() if line.strip() and not line.startswith("#")]


@cache
def wheel_strings(version: str) -> tuple[str, ...]:
    return tuple(_lines(f"bindings-{version}.names"))


@cache
def qualified(tag: str) -> frozenset[str]:
    return frozenset(_lines(f"python-src-{tag}.qualified"))


def in_wheel(name: str, version: str) -> bool:
    return any(s.endswith(name) for s in wheel_strings(version))


def used_names(source: str) -> set[str]:
    """``Class.member`` for attribute uses on TensorRT objects, and ``trt.A.B`` chains as ``A`` / ``A.B``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute):
            continue
        base = ast.unparse(node.value)
        if base in VAR_CLASS:
            found.add(f"{VAR_CLASS[base]}.{node.attr}")
        elif base == "trt":
            found.add(node.attr)
        elif base.startswith("trt.") and base.count(".") in (1, 2):  # trt.A.B and trt.A.B.C (nested enums)
            found.add(f"{base.split('.', 1)[1].rsplit('.', 1)[-1] if base.count('.') == 2 else base[4:]}.{node.attr}")
    # builder flags are plan data, looked up with getattr(trt.BuilderFlag, flag): the plan's flags.append("X") or
    # flags.append(Precision.X.trt_flag) (the flag name from vla_export.choices' one table)
    from vla_export.choices import Precision

    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and ast.unparse(node.func) == "flags.append"):
            continue
        arg = node.args[0]
        if isinstance(arg, ast.Constant):
            found.add(f"BuilderFlag.{arg.value}")
        elif (m := re.fullmatch(r"Precision\.(\w+)\.trt_flag", ast.unparse(arg))):
            found.add(f"BuilderFlag.{Precision[m.group(1)].trt_flag}")
        else:
            raise AssertionError(f"flags.append({ast.unparse(arg)}): the scan cannot tell which BuilderFlag this is")
    return found


def unknown_names(names: set[str], tag: str, wheel: str) -> list[str]:
    bad = []
    for name in sorted(names):
        if name in PYTHON_LEVEL or name in EXPORTED_VALUES:
            continue
        cls, _, member = name.rpartition(".")
        if member == "__init__" and cls in qualified(tag):  # pybind11 constructors (py::init) are not named in the sources
            continue
        if name not in qualified(tag) or not in_wheel(member, wheel):
            bad.append(name)
    return bad


def test_engine_code_uses_only_names_of_the_real_tensorrt_10_3_bindings():
    names = set().union(*(used_names(p.read_text()) for p in ENGINE_CODE))
    assert RTX_ONLY <= names  # the list is exact: a name no longer used must leave it
    names -= RTX_ONLY
    assert {"IBuilderConfig.set_flag", "BuilderFlag.FP16", "Runtime.deserialize_cuda_engine", "IExecutionContext.execute_async_v3",
            "Runtime.DLA_core", "Runtime.load_runtime", "ILayer.set_output_type"} <= names  # the scan sees the code
    assert unknown_names(names, "v10.3.0", "10.3.0") == []
    # and the newest 10.x wheel still has every name (its sources are not mirrored: strings only)
    assert [n for n in names - PYTHON_LEVEL - set(EXPORTED_VALUES) if not in_wheel(n.rsplit(".", 1)[-1], "10.16.1.11")] == []


def test_rtx_only_names_exist_in_tensorrt_rtx():
    rtx = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX (tensorrt_rtx) cannot be imported: `pip install -e '.[trt-rtx]'`")
    missing = []
    for name in sorted(RTX_ONLY):
        obj = rtx
        for part in name.split("."):
            if not hasattr(obj, part):
                missing.append(name)
                break
            obj = getattr(obj, part)
    assert missing == []
    assert [n for n in RTX_ONLY if unknown_names({n}, "v10.3.0", "10.3.0") == []] == []  # none of them is 10.3 API


def test_the_name_check_fails_on_names_tensorrt_does_not_have():
    code = "config.set_flagz(trt.BuilderFlag.FP17)\nlayer.precision = trt.float32\nruntime.DLA_core = 0\n"
    assert unknown_names(used_names(code), "v10.3.0", "10.3.0") == ["BuilderFlag.FP17", "IBuilderConfig.set_flagz"]
    # gone in TensorRT 11 (the reference's list): the check against 11.x sees it
    gone = used_names("config.set_flag(trt.BuilderFlag.INT8)\nconfig.set_calibration_profile(p)\nconfig.int8_calibrator = c\nlayer.precision = x\n")
    assert unknown_names(gone, "v11.1", "11.4.0.106") == ["BuilderFlag.INT8", "IBuilderConfig.int8_calibrator",
                                                          "IBuilderConfig.set_calibration_profile", "ILayer.precision"]


def test_tensorrt11_builds_call_only_what_tensorrt11_has(tiny_onnx):
    from tests.export.test_trt import Recorder, fake_trt

    facts = T.read_onnx_facts(tiny_onnx)
    options = T.TrtBuildOptions(workspace_mib=512, optimization_level=4, hardware_compatibility="ampere+", version_compatible=True,
                                exclude_lean_runtime=True, timing_cache="t.cache")
    plan = T.make_plan(facts, options, trt_version="11.4.0.106")
    log: list = []
    trt = fake_trt()
    trt.BuilderFlag.EXCLUDE_LEAN_RUNTIME = "EXCLUDE_LEAN_RUNTIME"
    T.apply_plan(plan, Recorder(log, "builder"), Recorder(log, "config"), trt)
    called = {e[0].replace("config.", "IBuilderConfig.").replace("builder.", "Builder.").replace("profile1.", "IOptimizationProfile.")
              for e in log}
    called |= {f"BuilderFlag.{f}" for f in plan.flags} | {"NetworkDefinitionCreationFlag.STRONGLY_TYPED"}
    assert plan.strongly_typed and "IBuilderConfig.set_flag" in called
    assert unknown_names(called, "v11.1", "11.4.0.106") == []


def _options(tag: str) -> set[str]:
    return set(_lines(f"trtexec-{tag}.options"))


def _flags(cmd: list[str]) -> set[str]:
    return {a.split("=", 1)[0] for a in cmd[1:]}


def test_every_trtexec_flag_the_code_prints_exists_in_trtexec(tiny_onnx, tmp_path):
    facts = T.read_onnx_facts(tiny_onnx)
    cache_file = tmp_path / "c.cache"
    cache_file.write_bytes(b"cache")
    shapes = {"pixel_values": (1, 4, 3, 224, 224), "input_ids": (1, 16), "attention_mask": (1, 16)}
    qdq = T.OnnxFacts(facts.path, facts.inputs, has_qdq=True, has_fp16=False, sensitive={}, config=facts.config)
    plans10 = [
        T.make_plan(facts, T.TrtBuildOptions(precision="fp16", timing_cache="t.cache", optimization_level=3, dla_core=0,
                                             hardware_compatibility="ampere+", version_compatible=True, exclude_lean_runtime=True)),
        T.make_plan(facts, T.TrtBuildOptions(precision="int8", calib="c.npz", calib_cache=cache_file), calib_shapes=shapes),
        T.make_plan(qdq, T.TrtBuildOptions(precision="int8")),
        T.make_plan(facts, T.TrtBuildOptions(typing="strong")),
    ]
    emitted10 = set().union(*(_flags(T.trtexec_command(p, "m.onnx", "m.engine")) for p in plans10))
    assert {"--fp16", "--int8", "--calib", "--optShapesCalib", "--layerPrecisions", "--stronglyTyped", "--useDLACore"} <= emitted10
    assert emitted10 - _options("v10.3.0") == set()
    plans11 = [T.make_plan(facts, T.TrtBuildOptions(timing_cache="t.cache", optimization_level=3, hardware_compatibility="ampere+",
                                                    version_compatible=True, exclude_lean_runtime=True), trt_version="11.4.0")]
    emitted11 = set().union(*(_flags(T.trtexec_command(p, "m.onnx", "m.engine")) for p in plans11))
    assert emitted11 - _options("v11.1") == set()
    assert {"--fp16", "--layerPrecisions", "--calib"} - _options("v11.1") == {"--fp16", "--layerPrecisions", "--calib"}


# --- ONNX operators --------------------------------------------------------------------------------------

MATRIX_TYPES = {1: "FP32", 10: "FP16", 16: "BF16", 6: "INT32", 7: "INT64", 3: "INT8", 2: "UINT8", 9: "BOOL"}


@cache
def support_matrix() -> dict[str, tuple[bool, set[str], str]]:
    rows = {}
    for line in (DATA / "onnx-tensorrt-10.1-GA.ops").read_text().splitlines():
        if line.startswith("#"):
            continue
        op, supported, types, restriction = (line.split("\t") + ["", "", ""])[:4]
        listed = {t.strip() for t in types.split(",") if t.strip()}
        # a typo in the matrix (ConstantOfShape lists "INF64"): read as INT64, flagged here
        listed = {"INT64" if t == "INF64" else t for t in listed}
        rows[op] = (supported == "Y", listed, restriction)
    return rows


def _restriction_checks(model):
    """The matrix's restrictions for ops in these graphs, each reviewed: node -> None if satisfied, else why not."""
    import onnx

    consts = {i.name for i in model.graph.initializer} | {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    import onnx.numpy_helper as nh

    values = {i.name: nh.to_array(i) for i in model.graph.initializer}

    def zero_point(node, index):
        if len(node.input) <= index or not node.input[index]:
            return None
        v = values.get(node.input[index])
        return None if v is not None and not v.any() else "zero point not a zero initializer"

    def attr(node, name, default):
        for a in node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    def axes_initializer(node):
        if len(node.input) > 1 and node.input[1] and node.input[1] not in consts:
            return "axes not an initializer"
        return None

    def lstm(node):
        if attr(node, "input_forget", 0) != 0 or attr(node, "layout", 0) != 0:
            return "input_forget or layout not 0"
        acts = attr(node, "activations", [])
        if attr(node, "direction", b"forward") == b"bidirectional" and acts and acts[: len(acts) // 2] != acts[len(acts) // 2 :]:
            return "bidirectional with different activations"
        return None

    return {
        "LayerNormalization": lambda n: None if len([o for o in n.output if o]) == 1 else "uses more than the output Y",
        "LSTM": lstm,
        "ReduceL2": axes_initializer,
        "Pad": lambda n: None if len(n.input) < 4 or not n.input[3] or n.input[3] in consts else "axes not an initializer",
        "QuantizeLinear": lambda n: zero_point(n, 2),
        "DequantizeLinear": lambda n: zero_point(n, 2),
        "CumSum": lambda n: None if n.input[1] in consts else "axis not an initializer",
        "Gather": lambda n: None,  # restriction text: negative indices in a shape tensor; reviewed, not the case here
        "Concat": lambda n: None,
        "Pow": lambda n: None,
        "Expand": lambda n: None,
        "MatMul": lambda n: None,
        "Slice": lambda n: None,
        "Split": lambda n: None,
        "ReduceMean": lambda n: None,
        "ReduceSum": lambda n: None,
        "ReduceMax": lambda n: None,
        "Resize": lambda n: None,
        "Softmax": lambda n: None,
        "Where": lambda n: None,
        "Transpose": lambda n: None,
        "Unsqueeze": lambda n: None,
        "Squeeze": lambda n: None,
        "Range": lambda n: None,
        "Gemm": lambda n: None,
        "Conv": lambda n: None,
    }


def _toposort(graph) -> None:
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        if not ready:
            raise AssertionError(f"graph has a cycle or a dangling input: {[n.name for n in pending][:5]}")
        for n in ready:
            known.update(n.output)
        ordered += ready
        pending = [n for n in pending if n not in ready]
    del graph.node[:]
    graph.node.extend(ordered)


def matrix_violations(path: Path) -> list[str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    del bare.graph.value_info[:]  # the FP16 converter leaves stale float32 value_info behind: infer afresh
    _toposort(bare.graph)  # ... and appends its input Casts at the end (TensorRT's parser sorts; inference does not)
    typed = onnx.shape_inference.infer_shapes(bare)
    types = {v.name: v.type.tensor_type.elem_type for v in (*typed.graph.value_info, *typed.graph.input, *typed.graph.output)}
    types |= {i.name: i.data_type for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    types[n.output[0]] = a.t.data_type
    checks = _restriction_checks(model)
    problems = []
    for node in model.graph.node:
        if node.op_type == "Constant":
            continue
        row = support_matrix().get(node.op_type)
        if row is None or not row[0]:
            problems.append(f"{node.name}: {node.op_type} is not supported")
            continue
        dtype = MATRIX_TYPES.get(types.get(node.input[0])) if node.input else None
        if dtype is None:
            problems.append(f"{node.name}: {node.op_type} input type unknown ({types.get(node.input[0])})")
        elif dtype not in row[1]:
            problems.append(f"{node.name}: {node.op_type} on {dtype}, the matrix lists {sorted(row[1])}")
        if row[2]:
            check = checks.get(node.op_type)
            why = "restriction not reviewed: " + row[2] if check is None else check(node)
            if why:
                problems.append(f"{node.name}: {node.op_type}: {why}")
    return problems


@pytest.fixture(scope="module")
def graphs(tiny_onnx, tiny_split, tmp_path_factory):
    from vla_export.data.calibration import make_calibration_set
    from vla_export.data.episodes import write_synthetic_episodes
    from vla_export.export.quantize import convert_fp16, quantize_int8
    from vla_export.models.config import get_preset

    folder = tmp_path_factory.mktemp("conformance")
    write_synthetic_episodes(folder / "ep", 1, frames=6, frame_hw=(48, 64))
    calib = make_calibration_set(folder / "ep", get_preset("tiny"), folder / "c.npz", count=2)
    return {
        "fp32": tiny_onnx,
        "fp16": convert_fp16(tiny_onnx, folder / "tiny.fp16.onnx").output,
        "qdq": quantize_int8(tiny_onnx, calib, folder / "tiny.int8.onnx").output,
        **{f"split-{k}": p.path for k, p in tiny_split.parts.items()},
    }


@pytest.mark.parametrize("which", ["fp32", "fp16", "qdq", "split-backbone", "split-head"])
def test_every_op_and_input_dtype_is_in_the_onnx_tensorrt_matrix(graphs, which):
    assert matrix_violations(graphs[which]) == []


def test_the_op_check_flags_cumsum_on_int64(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    axis = helper.make_tensor("axis", TensorProto.INT64, [], [1])
    graph = helper.make_graph([helper.make_node("CumSum", ["mask", "axis"], ["pos"], name="node_cumsum")], "g",
                              [helper.make_tensor_value_info("mask", TensorProto.INT64, [1, 4])],
                              [helper.make_tensor_value_info("pos", TensorProto.INT64, [1, 4])], initializer=[axis])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "c.onnx")
    assert matrix_violations(tmp_path / "c.onnx") == ["node_cumsum: CumSum on INT64, the matrix lists ['BF16', 'FP16', 'FP32']"]
