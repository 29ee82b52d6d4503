"""Explicit quantization: INT8 Q/DQ and FP16 ONNX that ONNX Runtime runs, with the sensitive ops kept in FP32."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from vla_export.data.calibration import load_calibration_set, make_calibration_set
from vla_export.data.episodes import write_synthetic_episodes
from vla_export.errors import ArtifactError, DataError
from vla_export.artifacts.onnxfile import load_onnx
from vla_export.export import quantize as Q
from vla_export.artifacts.manifest import read_manifest
from vla_export.models.config import get_preset
from vla_export.models.loader import PolicyFromCheckpoint
from vla_export.verify.parity import parity_check

KEPT_OPS = ("LayerNormalization", "Softmax")


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    root = tmp_path_factory.mktemp("quant")
    write_synthetic_episodes(root / "episodes", 2, seed=0, frames=8, frame_hw=(48, 64))
    return make_calibration_set(root / "episodes", get_preset("tiny"), root / "calib.npz", count=4)


@pytest.fixture(scope="module")
def int8_onnx(tiny_onnx, calib, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "tiny.int8.onnx"
    return Q.quantize_int8(tiny_onnx, calib, out)


@pytest.fixture(scope="module")
def fp16_onnx(tiny_onnx, tmp_path_factory):
    return Q.convert_fp16(tiny_onnx, tmp_path_factory.mktemp("fp16") / "tiny.fp16.onnx")


def _producers(model):
    return {out: node for node in model.graph.node for out in node.output}


def test_int8_graph_has_qdq_and_keeps_sensitive_ops_out(int8_onnx, tiny_onnx):
    model = onnx.load(int8_onnx.output)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
    producers = _producers(model)
    reasons = Q.precision_sensitive_nodes(load_onnx(tiny_onnx))
    assert {"layernorm", "softmax", "mask", "residual-add", "attention-matmul", "head"} <= set(reasons.values())
    for node in model.graph.node:
        fed_by_dq = [i for i in node.input if i in producers and producers[i].op_type == "DequantizeLinear"]
        if node.op_type in KEPT_OPS or reasons.get(node.name) in ("residual-add", "attention-matmul", "head", "mask"):
            assert not fed_by_dq, f"{node.name} ({node.op_type}) was quantized"
    quantized_matmuls = [n for n in model.graph.node if n.op_type == "MatMul" and any(
        i in producers and producers[i].op_type == "DequantizeLinear" for i in n.input)]
    assert quantized_matmuls
    # symmetric int8 (TensorRT's requirement) and per-channel weights
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    zero_points = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    assert any(inits[n.input[1]].size > 1 for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[1] in inits)


def test_int8_manifest_and_parity_in_onnx_runtime(int8_onnx, fitted_tiny_ckpt, fitted_tiny_int8, held_out_episodes):
    manifest = read_manifest(int8_onnx.output, kind="onnx").to_dict()
    assert manifest["precision"] == "int8" and manifest["config"]["name"] == "tiny"
    assert manifest["quantization"]["kept_fp32"]["layernorm"] > 0 and manifest["parity"] == {}
    # Against the fitted policy (a random one's actions vary too little for INT8's atol: inconclusive).
    result = parity_check(PolicyFromCheckpoint(fitted_tiny_ckpt), fitted_tiny_int8, samples=24, data=held_out_episodes, strict=True)
    assert result.precision == "int8" and result.conclusive
    assert result.passed, result.summary()
    assert result.outputs["actions"].max_abs > 1e-6  # it really is a different (quantized) model


def test_fp16_graph_keeps_io_fp32_and_sensitive_ops_fp32(fp16_onnx, fitted_tiny_ckpt, fitted_tiny_onnx, held_out_episodes, tmp_path):
    model = onnx.load(fp16_onnx.output)
    assert all(v.type.tensor_type.elem_type != TensorProto.FLOAT16 for v in (*model.graph.input, *model.graph.output))
    assert any(i.data_type == TensorProto.FLOAT16 for i in model.graph.initializer)
    inits = {i.name: i for i in model.graph.initializer}
    norms = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    assert norms and all(inits[n.input[1]].data_type == TensorProto.FLOAT for n in norms if n.input[1] in inits)
    assert fp16_onnx.kept_fp32["mask"] > 0
    fitted = Q.convert_fp16(fitted_tiny_onnx, tmp_path / "fitted.fp16.onnx").output
    result = parity_check(PolicyFromCheckpoint(fitted_tiny_ckpt), fitted, samples=24, data=held_out_episodes, strict=True)
    assert result.precision == "fp16" and result.conclusive and result.passed, result.summary()


def _graph(nodes, inits):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits))


def test_sensitive_node_rules_on_a_handmade_graph():
    lowest = helper.make_tensor("lowest", TensorProto.FLOAT, [1], [-3.4028235e38])
    bias = helper.make_tensor("bias", TensorProto.FLOAT, [2], [0.1, 0.2])
    head_w = helper.make_tensor("policy.action.0.weight", TensorProto.FLOAT, [2, 2], [1, 0, 0, 1])
    nodes = [
        helper.make_node("Less", ["x", "bias"], ["cond"], name="less"),
        helper.make_node("Where", ["cond", "lowest", "x"], ["masked"], name="mask_fill"),
        helper.make_node("Add", ["x", "masked"], ["scores"], name="scores_plus_mask"),
        helper.make_node("Softmax", ["scores"], ["probs"], name="softmax"),
        helper.make_node("MatMul", ["probs", "x"], ["attn"], name="attn"),
        helper.make_node("Add", ["attn", "bias"], ["biased"], name="bias_add"),
        helper.make_node("Add", ["biased", "x"], ["res"], name="residual"),
        helper.make_node("Gemm", ["res", "policy.action.0.weight"], ["y"], name="head"),
    ]
    reasons = Q.precision_sensitive_nodes(_graph(nodes, [lowest, bias, head_w]))
    assert reasons == {"mask_fill": "mask", "scores_plus_mask": "mask", "softmax": "softmax", "attn": "attention-matmul",
                       "residual": "residual-add", "head": "head"}
    assert "residual" not in Q.precision_sensitive_nodes(_graph(nodes, [lowest, bias, head_w]), int8=False)


def test_external_data_is_written_and_runs(tiny_onnx, calib, tmp_path, monkeypatch):
    monkeypatch.setattr(Q, "needs_external_data", lambda model, source=None: True)  # as for a > 2 GB model
    result = Q.quantize_int8(tiny_onnx, calib, tmp_path / "ext.int8.onnx")
    assert [p.rsplit("/", 1)[-1] for p in result.files] == ["ext.int8.onnx", "ext.int8.onnx.data"]
    import onnxruntime as ort

    out = ort.InferenceSession(result.output).run(None, calib.feed(0))[0]
    assert out.shape == (1, 3) and np.isfinite(out).all()
    assert not list(tmp_path.glob(".*partial*"))


def test_missing_external_data_and_mismatched_calibration_are_clear_errors(tiny_onnx, calib, tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    model = load_onnx(tiny_onnx)
    Q.save_onnx(model, src / "m.onnx", external=True)
    (src / "m.onnx.data").unlink()
    with pytest.raises(ArtifactError, match="external data file .*m.onnx.data is missing"):
        Q.convert_fp16(src / "m.onnx", tmp_path / "m.fp16.onnx")
    episodes = sorted({w["episode"] for w in calib.meta["windows"]})
    short = make_calibration_set(episodes, get_preset("tiny"), tmp_path / "short.npz", count=1, window=2)
    with pytest.raises(DataError, match="--window"):
        Q.quantize_int8(tiny_onnx, load_calibration_set(short.path), tmp_path / "bad.int8.onnx")
    assert not (tmp_path / "bad.int8.onnx").exists() and not list(tmp_path.glob(".bad*"))


def test_quantize_command(cli, tiny_onnx, calib, tmp_path):
    onnx_copy = tmp_path / "tiny.onnx"
    shutil.copy(tiny_onnx, onnx_copy)
    shutil.copy(tiny_onnx.with_name("tiny.onnx.json"), tmp_path / "tiny.onnx.json")
    r = cli("quantize", onnx_copy, "--int8")
    assert r.exit_code == 2 and "--calib" in r.stderr
    r = cli("quantize", onnx_copy, "--fp16")
    assert r.exit_code == 0, r
    assert (tmp_path / "tiny.fp16.onnx").exists() and read_manifest(tmp_path / "tiny.fp16.onnx").to_dict()["precision"] == "fp16"
    r = cli("quantize", onnx_copy, "--int8", "--calib", calib.path, "--per-tensor", "-o", tmp_path / "q.onnx")
    assert r.exit_code == 0 and "QuantizeLinear" in r.stdout, r


@pytest.fixture(scope="module")
def int8_debug_onnx(tiny_ckpt, calib, tmp_path_factory):
    """tiny exported with `features` as a second output, then quantized to W8A8 Q/DQ."""
    from vla_export.export.onnx import OnnxExportOptions, OnnxFromPolicy

    root = tmp_path_factory.mktemp("int8debug")
    OnnxFromPolicy(PolicyFromCheckpoint(tiny_ckpt), root / "tiny.onnx", OnnxExportOptions(parity_samples=1, debug_outputs=True))()
    return Q.quantize_int8(root / "tiny.onnx", calib, root / "tiny.int8.onnx")


def test_int8_parity_measures_the_quantization_and_fails_on_a_perturbed_qdq_graph(int8_debug_onnx, tiny_ckpt, tmp_path):
    from onnx import numpy_helper

    result = parity_check(PolicyFromCheckpoint(tiny_ckpt), int8_debug_onnx.output, samples=4, qdq="both")
    assert result.passed, result.summary()
    features = result.outputs["features"]
    assert features.rule == "relative" and 1e-4 < features.max_row_rel < 0.05
    assert result.candidate["qdq_arithmetic"] == "exact" and "qdq_kernels" in result.also_measured
    # The last quantized weight's scale off by 1.5x (what a wrong scale or calibration does): parity fails.
    model = onnx.load(int8_debug_onnx.output)
    inits = {i.name: i for i in model.graph.initializer}
    weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                 and inits[n.input[0]].data_type == TensorProto.INT8]
    scale = inits[weight_dq[-1].input[1]]
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * np.float32(1.5), scale.name))
    bad = tmp_path / "perturbed.int8.onnx"
    onnx.save(model, str(bad))
    shutil.copy(str(int8_debug_onnx.output) + ".json", str(bad) + ".json")
    perturbed = parity_check(PolicyFromCheckpoint(tiny_ckpt), bad, samples=4)
    assert perturbed.precision == "int8" and not perturbed.passed
    assert not perturbed.outputs["features"].passed and perturbed.outputs["features"].max_row_rel > 0.05


def test_int8_manifest_records_calibration_and_parity_holds_its_frames_out(int8_onnx, calib, tiny_ckpt, tmp_path):
    import json

    record = read_manifest(int8_onnx.output).to_dict()["quantization"]["options"]["calibration"]
    assert record["frames"] == calib.frames_used() and record["samples"] == len(calib) and len(record["sha256"]) == 64
    episodes = sorted({w["episode"] for w in calib.meta["windows"]} | {str(p) for p in (calib.path.parent / "episodes").glob("*.h5")})
    held_out = write_synthetic_episodes(tmp_path / "held-out", 1, seed=7, frames=8, frame_hw=(48, 64))
    result = parity_check(PolicyFromCheckpoint(tiny_ckpt), int8_onnx.output, samples=3, data=episodes + held_out)
    assert result.candidate["held_out"]["status"] == "held out"
    # A copy whose manifest says every frame was calibrated on: parity says loudly it could not hold out.
    copy = tmp_path / "all.int8.onnx"
    shutil.copy(int8_onnx.output, copy)
    manifest = read_manifest(int8_onnx.output).to_dict()
    manifest["quantization"]["options"]["calibration"]["frames"] = {Path(e).name: list(range(8)) for e in episodes}
    (tmp_path / "all.int8.onnx.json").write_text(json.dumps(manifest))
    overlap = parity_check(PolicyFromCheckpoint(tiny_ckpt), copy, samples=2, data=episodes)
    assert overlap.candidate["held_out"]["status"] == "NOT held out" and "calibration frames" in overlap.candidate["held_out"]["note"]


def _activation_scales(path):
    """QuantizeLinear input name -> scale, for activations (weights are stored already quantized)."""
    model = onnx.load(str(path))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.input[0]: float(inits[n.input[1]]) for n in model.graph.node if n.op_type == "QuantizeLinear"}


def test_entropy_calibration_is_not_minmax(int8_onnx, tiny_onnx, calib, tmp_path):
    """onnxruntime's quantize_static "Entropy" with its default 128/128 bins equals MinMax byte for byte."""
    entropy = Q.quantize_int8(tiny_onnx, calib, tmp_path / "entropy.int8.onnx", method="entropy")
    minmax, clipped = _activation_scales(int8_onnx.output), _activation_scales(entropy.output)
    assert minmax.keys() == clipped.keys()
    # KL thresholds lie inside the observed range: never wider, and narrower for some tensors.
    assert all(clipped[k] <= minmax[k] * (1 + 1e-6) for k in minmax)
    assert sum(clipped[k] < 0.95 * minmax[k] for k in minmax) >= 1
    assert read_manifest(entropy.output).to_dict()["quantization"]["options"]["entropy_bins"] == Q.ENTROPY_BINS


def test_trtexec_line_for_the_fp16_graph(fp16_onnx, cli, tmp_path):
    """The converter leaves stale type information in the graph; the engine planner infers types afresh."""
    r = cli("trt", fp16_onnx.output, "-o", tmp_path / "tiny.fp16.engine", "--print-trtexec")
    assert r.exit_code == 0, r
    assert "trtexec" in r.stdout and "--stronglyTyped" in r.stdout


def test_duplicate_cast_nodes_are_dropped_and_conflicting_writers_refused():
    """onnxruntime 1.30's FP16 converter repeats a shared weight's Cast (same output name; TensorRT refuses it)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from vla_export.errors import ArtifactError
    from vla_export.export.quantize import drop_duplicate_nodes

    cast = helper.make_node("Cast", ["w"], ["w_cast_to_fp32"], to=1, name="w_cast_to_fp32_node")
    nodes = [cast, helper.make_node("Add", ["x", "w_cast_to_fp32"], ["y"], name="add"), helper.make_node("Cast", ["w"], ["w_cast_to_fp32"], to=1, name="w_cast_to_fp32_node")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
                              initializer=[numpy_helper.from_array(np.ones(2, np.float16), "w")],
                              value_info=[helper.make_tensor_value_info("w_cast_to_fp32", TensorProto.FLOAT, [2])] * 2)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(onnx.checker.ValidationError, match="SSA|w_cast_to_fp32"):
        onnx.checker.check_model(model)  # the repeat breaks the graph
    assert drop_duplicate_nodes(model) == 1
    assert [n.name for n in model.graph.node] == ["w_cast_to_fp32_node", "add"] and len(model.graph.value_info) == 1
    onnx.checker.check_model(model)
    assert drop_duplicate_nodes(model) == 0
    model.graph.node.append(helper.make_node("Cast", ["w"], ["w_cast_to_fp32"], to=10, name="other"))  # another writer
    with pytest.raises(ArtifactError, match="both write 'w_cast_to_fp32'"):
        drop_duplicate_nodes(model)


def test_fp16_graph_is_sorted_for_the_checker(tmp_path):
    """The converter appends its Casts last; the written FP16 model must pass onnx.checker (sorted nodes)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from vla_export.export.quantize import sort_topologically
    from vla_export.artifacts.onnxfile import check_model

    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("LayerNormalization", ["h", "g", "b"], ["n"], name="ln", axis=-1),
             helper.make_node("Relu", ["n"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              initializer=[numpy_helper.from_array(np.eye(4, dtype=np.float32), "w"),
                                           numpy_helper.from_array(np.ones(4, np.float32), "g"), numpy_helper.from_array(np.zeros(4, np.float32), "b")])
    src = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    out = tmp_path / "m.fp16.onnx"
    result = Q.convert_fp16(src, out)
    assert result.options["nodes_reordered"] is True
    check_model(out)  # fails without the sort: "Nodes in a graph must be topologically sorted"
    model = onnx.load(str(out))
    assert sort_topologically(model) is False
    model.graph.node.append(model.graph.node[0])  # a node after its users: moved back in front of them
    del model.graph.node[0]
    assert sort_topologically(model) is True
    onnx.checker.check_model(model)


@pytest.mark.parametrize("flag", ["--fp16", "--int8-weights", "--int8"])
def test_quantize_parses_its_onnx_once(cli, tiny_onnx, calib, tmp_path, monkeypatch, flag):
    """`vla-export quantize` opens the source once (an OnnxFile) and hands the model from step to step:
    before issue 22 the checks, the transform and the manifest each re-read the file (4 parses for --fp16,
    3 for --int8-weights, 4 for --int8)."""
    real = onnx.load
    reads = []

    def counting(f, *args, **kwargs):
        if Path(str(f)) == Path(tiny_onnx):
            reads.append(kwargs)
        return real(f, *args, **kwargs)

    monkeypatch.setattr(onnx, "load", counting)
    extra = ["--calib", calib.path] if flag == "--int8" else []
    r = cli("quantize", tiny_onnx, flag, *extra, "-o", tmp_path / "t.q.onnx")
    assert r.exit_code == 0, r
    assert len(reads) == 1, reads


def test_onnx_file_loads_external_weights_once_and_checks_them(tiny_onnx, tmp_path):
    """The weights of an external-data model load into the parsed model on demand, after the data file is
    checked; the structure is refused once they are in (it would no longer serialise at any size)."""
    from vla_export.artifacts.onnxfile import OnnxFile

    Q.save_onnx(load_onnx(tiny_onnx), tmp_path / "m.onnx", external=True)
    source = OnnxFile(tmp_path / "m.onnx")
    assert source.external and source.io() == OnnxFile(tiny_onnx).io()
    assert source.structure() is not None
    model = source.model()
    assert not any(i.external_data for i in model.graph.initializer) and source.model() is model
    with pytest.raises(RuntimeError, match="weights are loaded already"):
        source.structure()
    source.release()  # a step that wrote the model elsewhere lets go of it; the file's facts stay
    assert source.external and source.path == tmp_path / "m.onnx"
    with pytest.raises(RuntimeError, match="released"):
        source.model()
    data = tmp_path / "m.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(ArtifactError, match="truncated"):
        OnnxFile(tmp_path / "m.onnx").model()
