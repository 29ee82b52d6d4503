"""The real-builder conformance gate: every graph kind the toolkit writes, parsed and built by NVIDIA's own
ONNX parser and builder (TensorRT for RTX 1.7, `tensorrt_rtx`, ahead of time, no GPU needed), in `make test`.

For each graph (tiny preset): zero parser errors, an engine, no warning outside the allow-list (TensorRT's
note that an INT64 input needs an INT64 binding, one per such input), engine I/O names and dtypes equal to
the ONNX manifest's, and the engine's layers (from the VERBOSE build log) in the precision the artifact
claims. Each realistic breakage below must fail it. What this does NOT prove: numerics (nothing runs: no
supported GPU here), or that TensorRT 10.3 on a Jetson builds the same graphs (tests/test_trt_conformance.py
checks those against 10.3's API and op matrix). Skipped, with the reason, only where `tensorrt_rtx` cannot
be imported. Exports and builds are shared per session: the gate's time is dominated by the exports.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from vla_export.errors import ArtifactError

trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX (tensorrt_rtx) cannot be imported: `pip install -e '.[trt-rtx]'`")

from vla_export.export import trt as T  # noqa: E402
from vla_export.artifacts.manifest import read_manifest  # noqa: E402

#: ONNX dtype names (as the ONNX manifest records them) -> TensorRT's in the build log.
DTYPES = {"float32": "Float", "float16": "Half", "int64": "Int64", "int32": "Int32", "bool": "Bool", "int8": "Int8", "uint8": "UInt8"}
FLOAT_ONLY = {"Float", "Int64", "Int32", "Bool", "UInt8", "none"}


def allowed_warnings(onnx: Path) -> list[str]:
    """The warnings a clean build may give: one per INT64 input (TensorRT asks for an INT64 binding)."""
    io = read_manifest(onnx, kind="onnx").to_dict()["io"]
    return [f"Make sure input {i['name']} has Int64 binding." for i in io["inputs"] if i["dtype"] == "int64"]


def unexpected_warnings(warnings: list[str], onnx: Path) -> list[str]:
    allowed = allowed_warnings(onnx)
    return [w for w in warnings if re.sub(r"^\S+:\d+: ", "", w) not in allowed]


def io_mismatch(layers: dict, onnx: Path) -> list[str]:
    """Engine I/O (name, mode, dtype from the build log) against the ONNX manifest's."""
    io = read_manifest(onnx, kind="onnx").to_dict()["io"]
    want = [(t["name"], mode, DTYPES.get(t["dtype"], t["dtype"])) for mode in ("input", "output") for t in io[f"{mode}s"]]
    got = [(t["name"], t["mode"], t["dtype"]) for t in layers["io"]]
    return [] if sorted(got) == sorted(want) else [f"engine I/O {sorted(got)} != ONNX manifest {sorted(want)}"]


def precision_problems(layers: dict, claimed: str) -> list[str]:
    """Does the engine compute in the precision the artifact claims?"""
    kinds, gemms = set(layers["by_precision"]), layers["gemm_by_precision"]
    if claimed == "fp32":
        wide = kinds - FLOAT_ONLY
        return [f"an fp32 artifact's engine has {sorted(wide)} layers"] if wide else []
    if claimed == "fp16":
        return [] if gemms.get("Half") and set(gemms) == {"Half"} else [f"an fp16 artifact's GEMMs are {gemms}, not all Half"]
    if claimed == "int8":
        return [] if gemms.get(T.INT8_X_INT8) and "Half" not in kinds else [f"a Q/DQ artifact's GEMMs are {gemms}: no Int8 x Int8"]
    if claimed == "int8w":
        ok = layers["by_precision"].get(T.INT8_WEIGHTS) and T.INT8_X_INT8 not in kinds
        return [] if ok else [f"a weight-only artifact's layers are {layers['by_precision']}: no Int8-weight fusions"]
    return [f"unknown claim {claimed}"]


def gate(onnx: Path, engine: Path) -> dict:
    """Build ``onnx`` with the real TensorRT-RTX builder and check it; AssertionError naming every problem, ArtifactError
    from the parser or builder (naming the node)."""
    result = T.build_engine(onnx, engine)
    assert result.flavor == "rtx" and engine.stat().st_size > 0
    layers = result.layers
    claimed = read_manifest(engine, kind="engine").to_dict()["onnx"]["precision"]
    problems = unexpected_warnings(result.warnings, onnx) + io_mismatch(layers, onnx) + precision_problems(layers, claimed)
    assert not problems, f"{onnx.name}: " + "; ".join(problems)
    return {"claimed": claimed, "layers": layers, "seconds": result.seconds}


# --- the graphs the toolkit writes ------------------------------------------------------------------------

@pytest.fixture(scope="session")
def gate_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("rtx-gate")


@pytest.fixture(scope="session")
def dynamic_window_export(gate_dir, tiny_ckpt):
    """`vla-export onnx --dynamic-window`, started at once in its own process (dynamo fixes the LSTM's window after an
    earlier export in the same process) so it runs while the other graphs are made and built."""
    import subprocess
    import sys

    path = gate_dir / "dynamic-window" / "tiny.onnx"
    path.parent.mkdir()
    cmd = [str(Path(sys.executable).parent / "vla-export"), "onnx", str(tiny_ckpt), "-o", str(path), "--no-ort-check", "--dynamic-window"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def wait() -> Path:
        out, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, out[-2000:]
        return path

    yield wait
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def calib_set(gate_dir):
    from vla_export.data.calibration import make_calibration_set
    from vla_export.data.episodes import write_synthetic_episodes
    from vla_export.models.config import get_preset

    write_synthetic_episodes(gate_dir / "ep", 2, frames=8, frame_hw=(48, 64))
    return make_calibration_set(gate_dir / "ep", get_preset("tiny"), gate_dir / "calib.npz", count=4)


def _export(tiny_ckpt, path: Path, **options) -> Path:
    from vla_export.export.onnx import OnnxExportOptions, OnnxFromPolicy
    from vla_export.models.loader import PolicyFromCheckpoint

    OnnxFromPolicy(PolicyFromCheckpoint(tiny_ckpt), path, OnnxExportOptions(parity_samples=1, ort_check=False, **options))()
    return path


def _torchscript_available() -> bool:
    import torch

    return hasattr(torch.onnx, "export") and hasattr(torch.jit, "trace")


GRAPHS = ["fp32", "debug-outputs", "torchscript", "simplify", "fp16", "int8", "int8w", "int8-budget",
          "split-backbone", "split-head", "dynamic-window"]


@pytest.fixture(scope="session")
def graph(dynamic_window_export, tiny_onnx, tiny_ckpt, tiny_split, calib_set, gate_dir):
    """One graph kind by name, made on first use and shared by the session."""
    cache: dict[str, Path] = {}

    def make(kind: str) -> Path:
        if kind in cache:
            return cache[kind]
        from vla_export.export.quantize import convert_fp16, quantize_int8
        from vla_export.export.weight_only import quantize_int8_weights

        out = gate_dir / kind
        out.mkdir(exist_ok=True)
        if kind == "fp32":
            path = tiny_onnx
        elif kind == "debug-outputs":
            path = _export(tiny_ckpt, out / "tiny.onnx", debug_outputs=True)
        elif kind == "dynamic-window":
            path = dynamic_window_export()
        elif kind == "torchscript":
            if not _torchscript_available():
                pytest.skip("this torch has no TorchScript exporter")
            path = _export(tiny_ckpt, out / "tiny.onnx", exporter="torchscript", opset=17)
        elif kind == "simplify":
            path = _export(tiny_ckpt, out / "tiny.onnx", simplify=True)
        elif kind == "fp16":
            path = convert_fp16(tiny_onnx, out / "tiny.fp16.onnx").output
        elif kind == "int8":
            path = quantize_int8(tiny_onnx, calib_set, out / "tiny.int8.onnx").output
        elif kind == "int8w":
            path = quantize_int8_weights(tiny_onnx, out / "tiny.int8w.onnx").output
        elif kind == "int8-budget":
            path = _budgeted(tiny_onnx, calib_set, out / "tiny.int8.onnx")
        elif kind.startswith("split-"):
            path = tiny_split.parts[kind.removeprefix("split-")].path
        else:
            raise KeyError(kind)
        cache[kind] = Path(path)
        return cache[kind]

    return make


def _budgeted(onnx: Path, calib, output: Path) -> Path:
    """`quantize --int8 --max-action-error` on held-out windows of the calibration episodes."""
    from vla_export.export.sensitivity import Budget, eval_feeds, quantize_int8_with_budget

    from vla_export.data.episodes import write_synthetic_episodes

    held = output.parent / "held-out"
    write_synthetic_episodes(held, 1, frames=6, frame_hw=(48, 64), seed=1)
    feeds, record = eval_feeds(onnx, [held], calib.frames_used(), 2, calib_meta=calib.meta, option="--eval-samples")
    result, search, _ = quantize_int8_with_budget(onnx, calib, output, Budget(1e-3, None, None), feeds, data=record,
                                                  granularity="block")
    assert search.kept_float and result.options["int8_share_of_weight_elements"] < result.options["int8_share_before_budget"]
    return result.output


@pytest.fixture(scope="session")
def built(graph, gate_dir):
    """The gate's report per graph kind, built once (for the tests of the checks themselves)."""
    cache: dict[str, dict] = {}

    def get(kind: str) -> dict:
        if kind not in cache:
            cache[kind] = gate(graph(kind), gate_dir / "engines" / f"{kind}.engine")
        return cache[kind]

    return get


@pytest.mark.parametrize("kind", GRAPHS)
def test_every_graph_kind_parses_builds_and_computes_as_claimed(kind, built, gate_dir):
    report = built(kind)
    expected = {"fp16": "fp16", "int8": "int8", "int8w": "int8w", "int8-budget": "int8"}.get(kind, "fp32")
    assert report["claimed"] == expected
    m = read_manifest(gate_dir / "engines" / f"{kind}.engine", kind="engine").to_dict()
    assert m["tensorrt_flavor"] == "rtx" and m["tensorrt"] == trt.__version__ and m["onnx"]["precision"] == expected
    if kind == "int8":
        assert report["layers"]["gemm_by_precision"][T.INT8_X_INT8] >= 20  # tiny: 26 (24 GEMMs + 2 convolutions)


# --- the breakages the gate must fail ---------------------------------------------------------------------

def _one_node(path: Path, node, inputs, outputs, initializers=()) -> Path:
    import onnx
    from onnx import helper

    graph = helper.make_graph([node], "g", inputs, outputs, initializer=list(initializers))
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def _copy_with_manifest(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst)
    shutil.copy(src.with_name(src.name + ".json"), dst.with_name(dst.name + ".json"))
    return dst


def _broken_asymmetric(graph, tmp: Path) -> tuple[Path, str]:
    """A Q/DQ graph whose first INT8 zero point is 3 (TensorRT needs symmetric INT8)."""
    import onnx
    from onnx import TensorProto, numpy_helper

    model = onnx.load(str(graph("int8")))
    zp = next(i for i in model.graph.initializer if i.data_type == TensorProto.INT8 and i.name.endswith("zero_point"))
    array = numpy_helper.to_array(zp).copy()
    array[...] = 3
    zp.CopyFrom(numpy_helper.from_array(array, zp.name))
    onnx.save(model, str(tmp / "asym.int8.onnx"))
    user = next(n.name for n in model.graph.node if zp.name in n.input)
    return tmp / "asym.int8.onnx", user


def _broken_missing_cast(graph, tmp: Path) -> tuple[Path, str]:
    """The FP16 graph with one Cast (float -> half, before MatMuls) removed: float meets half."""
    import onnx

    model = onnx.load(str(graph("fp16")))
    users: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    cast = next(n for n in model.graph.node if n.op_type == "Cast" and any(u.op_type == "MatMul" for u in users.get(n.output[0], [])))
    for u in users[cast.output[0]]:
        u.input[:] = [cast.input[0] if i == cast.output[0] else i for i in u.input]
    model.graph.node.remove(cast)
    onnx.save(model, str(tmp / "nocast.fp16.onnx"))
    return tmp / "nocast.fp16.onnx", next(u.name for u in users[cast.output[0]] if u.op_type == "MatMul")


def _broken_dynamic_quant(graph, tmp: Path) -> tuple[Path, str]:
    """onnxruntime's dynamic quantization (uint8 weights with zero points, MatMulInteger)."""
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(graph("fp32")), str(tmp / "dynamic.onnx"))
    return tmp / "dynamic.onnx", "DequantizeLinear"


def _broken_op(kind: str, tmp: Path) -> tuple[Path, str]:
    from onnx import TensorProto as TP, helper, numpy_helper

    V = helper.make_tensor_value_info
    if kind == "unique":
        return _one_node(tmp / "unique.onnx", helper.make_node("Unique", ["x"], ["y"], name="node_unique"),
                         [V("x", TP.FLOAT, [8])], [V("y", TP.FLOAT, [None])]), "node_unique"
    if kind == "scatternd-reduction":
        inits = [numpy_helper.from_array(np.array([[1], [2]], np.int64), "i"), numpy_helper.from_array(np.ones((2, 3), np.float32), "u")]
        return _one_node(tmp / "scatter.onnx", helper.make_node("ScatterND", ["x", "i", "u"], ["y"], name="node_scatter", reduction="add"),
                         [V("x", TP.FLOAT, [4, 3])], [V("y", TP.FLOAT, [4, 3])], inits), "node_scatter"
    return _one_node(tmp / "nonzero.onnx", helper.make_node("NonZero", ["x"], ["y"], name="node_nonzero"),
                     [V("x", TP.FLOAT, [8])], [V("y", TP.INT64, [1, None])]), "node_nonzero"


BREAKAGES = ["ort-dynamic-quantization", "asymmetric-qdq", "fp16-missing-cast", "unique", "scatternd-reduction", "nonzero"]


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_the_gate_fails_each_realistic_breakage_naming_the_node(breakage, graph, tmp_path):
    make = {"ort-dynamic-quantization": _broken_dynamic_quant, "asymmetric-qdq": _broken_asymmetric,
            "fp16-missing-cast": _broken_missing_cast}.get(breakage)
    onnx, node = make(graph, tmp_path) if make else _broken_op(breakage, tmp_path)
    with pytest.raises(ArtifactError, match=f"TensorRT-RTX .*'s ONNX parser failed: node [^;]*{re.escape(node)}") as info:
        gate(onnx, tmp_path / "broken.engine")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "broken.engine").exists() and not (tmp_path / "broken.engine.json").exists()


def test_the_gate_fails_a_new_warning_other_io_and_a_wrong_precision_claim(built, graph, tmp_path):
    fp32, int8 = built("fp32"), built("int8")
    onnx = graph("fp32")
    # a warning outside the allow-list (here: one the real parser gives for an INT64 output)
    assert unexpected_warnings(["ModelImporter.cpp:1071: Make sure input input_ids has Int64 binding."], onnx) == []
    assert unexpected_warnings(["ModelImporter.cpp:1303: Make sure output y has Int64 binding."], onnx)
    # engine I/O that is not the ONNX manifest's (an output renamed in the record)
    renamed = _copy_with_manifest(onnx, tmp_path / "renamed.onnx")
    import json

    m = json.loads(renamed.with_name("renamed.onnx.json").read_text())
    m["io"]["outputs"][0]["name"] = "action"
    renamed.with_name("renamed.onnx.json").write_text(json.dumps(m))
    assert io_mismatch(fp32["layers"], onnx) == [] and io_mismatch(fp32["layers"], renamed)
    # the layers contradict the claim: fp32 layers claimed int8/fp16/int8w, Int8 layers claimed fp32
    for claim in ("int8", "fp16", "int8w"):
        assert precision_problems(fp32["layers"], claim), claim
    assert precision_problems(int8["layers"], "fp32") and precision_problems(int8["layers"], "int8w")
    assert precision_problems(built("int8w")["layers"], "int8") and precision_problems(built("fp16")["layers"], "fp32")


def test_where_the_real_parser_and_the_10_1_op_matrix_disagree(tmp_path):
    """CumSum on INT64: outside the 10.1 matrix's types, built by the real parser (with an INT64 output warning, which the
    gate would refuse); NonZero: listed as supported in the matrix, refused here (a plugin TensorRT-RTX lacks)."""
    from onnx import TensorProto as TP, helper, numpy_helper

    from tests.test_trt_conformance import matrix_violations

    V = helper.make_tensor_value_info
    cumsum = _one_node(tmp_path / "cumsum.onnx", helper.make_node("CumSum", ["x", "a"], ["y"], name="node_cumsum"),
                       [V("x", TP.INT64, [1, 4])], [V("y", TP.INT64, [1, 4])], [numpy_helper.from_array(np.array(1, np.int64), "a")])
    assert matrix_violations(cumsum)
    assert T.build_engine(cumsum, tmp_path / "cumsum.engine").layers["total"] >= 1
    nonzero, _ = _broken_op("nonzero", tmp_path)
    assert matrix_violations(nonzero) == []
    with pytest.raises(ArtifactError, match="node_nonzero"):
        T.build_engine(nonzero, tmp_path / "nonzero.engine")
