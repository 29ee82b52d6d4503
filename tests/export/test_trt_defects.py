"""The engine-path defects of the conformance review (issue 12, part 3), each shown fixed."""

from __future__ import annotations

import shlex
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from vla_export.errors import ConfigError
from vla_export.export import trt as T


@pytest.fixture(scope="module")
def facts(tiny_onnx):
    return T.read_onnx_facts(tiny_onnx)


@pytest.fixture(scope="module")
def calib_set(tmp_path_factory):
    from vla_export.data.calibration import make_calibration_set
    from vla_export.data.episodes import write_synthetic_episodes
    from vla_export.models.config import get_preset

    folder = tmp_path_factory.mktemp("calib")
    write_synthetic_episodes(folder / "ep", 1, frames=5, frame_hw=(24, 32))
    return make_calibration_set(folder / "ep", get_preset("tiny"), folder / "calibration" / "c.npz", count=1).path


# 3.1 -------------------------------------------------------------------------------------------------------

def test_int8_trtexec_line_needs_the_cache_the_python_builder_writes(cli, tiny_onnx, calib_set, tmp_path):
    args = ("trt", tiny_onnx, "-o", tmp_path / "t.engine", "--int8", "--calib", calib_set, "--print-trtexec", "--trt-version", "10.3.0")
    r = cli(*args)
    assert r.exit_code == 2 and "needs the calibration cache" in r.stderr and "random data" in r.stderr and "trtexec" not in r.stdout
    # the Python builder names the cache from trt.__version__ (four parts in the bindings): the same file
    cache = T.default_calib_cache(calib_set, tiny_onnx, "10.3.0.26")
    assert cache == T.default_calib_cache(calib_set, tiny_onnx, "10.3.0") and cache.name.endswith(".trt10.3.0.cache")
    plan = T.make_plan(T.read_onnx_facts(tiny_onnx), T.TrtBuildOptions(precision="int8", calib=calib_set),
                       trt_version="10.3.0.26", calib_shapes={"pixel_values": (1, 4, 3, 224, 224), "input_ids": (1, 16), "attention_mask": (1, 16)})
    assert plan.calib_cache == str(cache)
    cache.write_bytes(b"TRT-1003-EntropyCalibration2")
    r = cli(*args)
    assert r.exit_code == 0, r
    assert f"--calib={cache}" in shlex.split(r.stdout)


# 3.2 -------------------------------------------------------------------------------------------------------

def _qdq_onnx(path):
    """x -> Q/DQ -> MatMul(x, x^T-ish weight via Q/DQ): a MatMul of two activations, as in quantized attention."""
    import onnx
    from onnx import TensorProto, helper

    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    zero = helper.make_tensor("z", TensorProto.INT8, [], [0])
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q_x"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq_x"),
        helper.make_node("Transpose", ["x"], ["xt"], name="t", perm=[0, 2, 1]),
        helper.make_node("QuantizeLinear", ["xt", "s", "z"], ["tq"], name="q_t"),
        helper.make_node("DequantizeLinear", ["tq", "s", "z"], ["td"], name="dq_t"),
        helper.make_node("MatMul", ["xd", "td"], ["scores"], name="node_matmul_attn"),
        helper.make_node("Softmax", ["scores"], ["actions"], name="node_softmax", axis=-1),
    ]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
                              [helper.make_tensor_value_info("actions", TensorProto.FLOAT, [1, 4, 4])], initializer=[scale, zero])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def test_qdq_graphs_build_strongly_typed_and_quantized_layers_are_never_pinned(tmp_path):
    facts = T.read_onnx_facts(_qdq_onnx(tmp_path / "q.onnx"))
    assert facts.sensitive["node_matmul_attn"] == "attention-matmul" and "node_matmul_attn" in facts.quantized
    plan = T.make_plan(facts, T.TrtBuildOptions(precision="int8"))
    assert plan.strongly_typed and plan.flags == [] and plan.layer_rules == []  # before: weak, FP16+INT8, MatMul pinned to FP16
    assert "--stronglyTyped" in T.trtexec_command(plan, "q.onnx", "q.engine")
    weak = T.make_plan(facts, T.TrtBuildOptions(precision="int8", typing="weak"))
    pinned = {n for r in weak.layer_rules for n in r.names}
    assert "node_matmul_attn" not in pinned and "node_softmax" in pinned


# 3.3 -------------------------------------------------------------------------------------------------------

def test_python_and_trtexec_paths_pin_the_same_layers(facts):
    plan = T.make_plan(facts, T.TrtBuildOptions(precision="fp16"))
    cmd = T.trtexec_command(plan, "m.onnx", "m.engine")
    line_names = {spec.rsplit(":", 1)[0] for a in cmd if a.startswith("--layerPrecisions=") for spec in a.split("=", 1)[1].split(",")}
    trt = SimpleNamespace(float32="f32", float16="f16", LayerType=SimpleNamespace(NORMALIZATION="N", SOFTMAX="S"))

    class Layer:
        def __init__(self, name, type_):
            self.name, self.type, self.num_outputs, self.precision = name, type_, 1, None

        def get_output(self, i):
            return SimpleNamespace(dtype="f32")

        def set_output_type(self, i, dtype):
            pass

    # every ONNX node as TensorRT names it, plus the extra layers the parser adds (NAME_1 ...), and unrelated
    # normalization/softmax layers: the Python path used to pin those by type and by prefix, trtexec never did
    import onnx

    model = onnx.load(str(facts.path), load_external_data=False)
    layers = [Layer(n.name, "N" if n.op_type == "LayerNormalization" else "X") for n in model.graph.node]
    layers += [Layer(f"{l.name}_1", l.type) for l in list(layers)] + [Layer("anon_softmax", "S")]
    network = SimpleNamespace(num_layers=len(layers), get_layer=lambda i: layers[i])
    T.apply_layer_rules(plan.layer_rules, network, trt)
    assert {l.name for l in layers if l.precision is not None} == line_names and line_names


def test_printed_trtexec_line_is_shell_quoted(cli, tiny_onnx, tmp_path):
    spaced = tmp_path / "my models"
    spaced.mkdir()
    shutil.copy(tiny_onnx, spaced / "tiny.onnx")
    shutil.copy(f"{tiny_onnx}.json", spaced / "tiny.onnx.json")
    r = cli("trt", spaced / "tiny.onnx", "-o", spaced / "tiny engine.engine", "--fp16", "--print-trtexec", "--trt-version", "10.3.0")
    assert r.exit_code == 0, r
    argv = shlex.split(r.stdout)
    assert f"--onnx={spaced / 'tiny.onnx'}" in argv and f"--saveEngine={spaced / 'tiny engine.engine'}" in argv


# 3.4 -------------------------------------------------------------------------------------------------------

def test_no_tensorrt10_only_trtexec_flags_for_tensorrt11(cli, tiny_onnx, facts, tmp_path):
    r = cli("trt", tiny_onnx, "-o", tmp_path / "t.engine", "--fp16", "--print-trtexec", "--trt-version", "11.4.0.106")
    assert r.exit_code == 2 and "no FP16/INT8 builder flags" in r.stderr
    r = cli("trt", tiny_onnx, "-o", tmp_path / "t.engine", "--print-trtexec", "--trt-version", "11.4.0.106")
    assert r.exit_code == 0, r
    argv = shlex.split(r.stdout)
    assert not {a.split("=")[0] for a in argv} & set(T.TRTEXEC_GONE_IN_11)
    plan10 = T.make_plan(facts, T.TrtBuildOptions(precision="fp16"), trt_version="10.3.0")
    plan10.tensorrt = "11.4.0"  # a TensorRT 10 plan handed to trtexec 11
    with pytest.raises(ConfigError, match="trtexec 11.4.0 does not take --fp16, --layerOutputTypes, --layerPrecisions, --precisionConstraints"):
        T.trtexec_command(plan10, "m.onnx", "m.engine")


# 3.6 -------------------------------------------------------------------------------------------------------

def test_exported_graphs_have_no_cumsum_on_int64(tiny_onnx, tiny_split):
    import onnx

    for path in (tiny_onnx, *(p.path for p in tiny_split.parts.values())):
        model = onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False))
        types = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.value_info, *model.graph.input)}
        int64_cumsum = [n.name for n in model.graph.node if n.op_type == "CumSum" and types.get(n.input[0]) == onnx.TensorProto.INT64]
        assert not int64_cumsum, f"{path.name}: {int64_cumsum}"


def test_closed_form_position_ids_equal_cumsum_for_right_padded_masks():
    torch = pytest.importorskip("torch")
    for length in (1, 5, 9):
        for kept in range(1, length + 1):
            mask = torch.tensor([[1] * kept + [0] * (length - kept)])
            closed = torch.arange(1, length + 1).unsqueeze(0) * mask
            assert torch.equal(closed, torch.cumsum(mask, dim=1) * mask)
