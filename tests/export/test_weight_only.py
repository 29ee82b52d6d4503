"""Weight-only INT8: per-channel INT8 weights behind DequantizeLinear, float activations, no calibration."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vla_export.artifacts.manifest import read_manifest
from vla_export.export.weight_only import quantize_int8_weights, quantize_weight, weight_axis
from vla_export.models.loader import PolicyFromCheckpoint
from vla_export.verify.parity import parity_check


@pytest.fixture(scope="module")
def debug_onnx(tiny_ckpt, tmp_path_factory):
    from vla_export.export.onnx import OnnxExportOptions, OnnxFromPolicy

    path = tmp_path_factory.mktemp("wo") / "tiny.onnx"
    OnnxFromPolicy(PolicyFromCheckpoint(tiny_ckpt), path, OnnxExportOptions(parity_samples=1, debug_outputs=True))()
    return path


@pytest.fixture(scope="module")
def int8w(debug_onnx):
    return quantize_int8_weights(debug_onnx, debug_onnx.with_name("tiny.int8w.onnx"))


def test_quantize_weight_is_symmetric_per_output_channel():
    w = np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32) * np.arange(1, 9, dtype=np.float32)
    q, scale = quantize_weight(w, axis=1)
    assert q.dtype == np.int8 and scale.shape == (8,) and np.abs(q).max() == 127 and q.min() >= -127
    np.testing.assert_allclose(scale, np.abs(w).max(axis=0) / 127, rtol=1e-6)
    assert np.all(np.abs(q * scale - w) <= scale / 2 + 1e-7)
    zero = quantize_weight(np.zeros((4, 3), np.float32), axis=0)
    assert not zero[0].any() and np.all(zero[1] == 1.0)
    gemm_t = helper.make_node("Gemm", ["a", "b"], ["y"], transB=1)
    assert weight_axis(gemm_t, 2) == 0 and weight_axis(helper.make_node("Gemm", ["a", "b"], ["y"]), 2) == 1
    assert weight_axis(helper.make_node("MatMul", ["a", "b"], ["y"]), 3) == 2 and weight_axis(helper.make_node("Conv", ["a", "b"], ["y"]), 4) == 0


def test_graph_has_the_weight_only_form_and_the_manifest_records_bytes(int8w, debug_onnx):
    model = onnx.load(int8w.output)
    inits = {i.name: i for i in model.graph.initializer}
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" not in ops and ops.count("DequantizeLinear") > 10
    consumers = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for dq in (n for n in model.graph.node if n.op_type == "DequantizeLinear"):
        q, scale, zp = (inits[i] for i in dq.input)
        axis = next(a.i for a in dq.attribute if a.name == "axis")
        assert q.data_type == TensorProto.INT8 and not numpy_helper.to_array(zp).any()
        assert list(scale.dims) == [q.dims[axis]]  # per channel, on the axis TensorRT expects
        users = consumers[dq.output[0]]
        assert users and all(u.op_type in ("MatMul", "Gemm", "Conv") and u.input[1] == dq.output[0] for u in users)
    # The policy head stays float by default.
    head = [i for i in inits if i.startswith("policy.action.") and i.endswith("weight")]
    assert head and all(inits[h].data_type == TensorProto.FLOAT for h in head)
    manifest = read_manifest(int8w.output).to_dict()
    w = manifest["quantization"]["options"]["weight_bytes"]
    assert manifest["precision"] == "int8" and manifest["quantization"]["options"]["mode"] == "weight-only"
    assert w["bytes_saved"] > 0.4 * w["float_bytes_before"] and w["bytes_after"] == w["float_bytes_before"] - w["bytes_saved"]
    assert 0.5 < w["int8_share_of_weight_elements"] < 1


def test_weight_only_parity_passes_and_fails_on_a_perturbed_scale(int8w, tiny_ckpt, tmp_path):
    result = parity_check(PolicyFromCheckpoint(tiny_ckpt), int8w.output, samples=4)
    assert result.passed, result.summary()
    assert 0 < result.outputs["actions"].max_abs < 0.02 and result.outputs["features"].max_row_rel < 0.02
    model = onnx.load(int8w.output)
    inits = {i.name: i for i in model.graph.initializer}
    last = [n for n in model.graph.node if n.op_type == "DequantizeLinear"][-1]
    scale = inits[last.input[1]]
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * np.float32(1.5), scale.name))
    bad = tmp_path / "bad.int8w.onnx"
    onnx.save(model, str(bad))
    shutil.copy(str(int8w.output) + ".json", str(bad) + ".json")
    assert not parity_check(PolicyFromCheckpoint(tiny_ckpt), bad, samples=4).passed


def test_quantize_command_int8_weights(cli, debug_onnx, tmp_path):
    src = tmp_path / "m.onnx"
    shutil.copy(debug_onnx, src)
    shutil.copy(str(debug_onnx) + ".json", str(src) + ".json")
    r = cli("quantize", src, "--int8-weights", "--calib", tmp_path / "c.npz")
    assert r.exit_code == 2 and "needs no --calib" in r.stderr, r
    r = cli("quantize", src, "--int8-weights")
    assert r.exit_code == 0 and "weight-only" in r.stdout, r
    assert (tmp_path / "m.int8w.onnx").exists() and (tmp_path / "m.int8w.onnx.json").exists()
