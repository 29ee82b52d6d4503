"""The ONNX Runtime runner and runner selection by artifact suffix."""

from __future__ import annotations

import numpy as np
import pytest

from vla_export.backends.onnxrt import OnnxrtRunner
from vla_export.errors import ArtifactError, MissingDependencyError, RunnerError


def test_runner_reports_provider_and_matches_torch(tiny_onnx, tiny_policy):
    from vla_export.backends.onnxrt import OnnxrtRunner
    from vla_export.backends.torch_runner import TorchRunner
    from vla_export.data.source import SyntheticSource

    feed = SyntheticSource(tiny_policy.cfg, batch=2).sample(3)
    runner = OnnxrtRunner(tiny_onnx)
    with pytest.raises(RunnerError, match="activate"):
        runner.infer(feed)
    with runner, TorchRunner(tiny_policy) as ref:
        info = runner.describe()
        assert info["provider"] == "CPUExecutionProvider" and info["fallback"] is False and info["device"] == "cpu"
        assert list(runner.input_names) == ["pixel_values", "input_ids", "attention_mask"]
        assert runner.input_shapes["pixel_values"] == ["batch", 4, 3, 224, 224]
        staged = runner.stage(feed)
        out = runner.to_host(runner.execute(staged))
        runner.synchronize()
        np.testing.assert_allclose(out["actions"], ref.infer(feed)["actions"], atol=1e-5)
        with pytest.raises(RunnerError, match="inputs do not match"):
            runner.infer({"pixel_values": feed["pixel_values"]})


def test_silent_cpu_fallback_is_reported(tiny_onnx, monkeypatch, caplog):
    """onnxruntime-gpu without CUDA libraries creates a CPU session when CUDA was asked for."""
    import logging

    import onnxruntime as ort

    from vla_export.backends.onnxrt import OnnxrtRunner

    real = ort.InferenceSession

    def cpu_session(path, sess_options=None, providers=None):
        return real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", cpu_session)
    logging.getLogger("vla_export").propagate = True  # the CLI turns propagation off; caplog listens at the root
    with caplog.at_level(logging.WARNING, logger="vla_export"), OnnxrtRunner(tiny_onnx) as runner:
        info = runner.describe()
    assert info["requested_providers"][0] == "CUDAExecutionProvider"
    assert info["provider"] == "CPUExecutionProvider" and info["fallback"] is True and info["device"] == "cpu"
    assert "requested CUDAExecutionProvider but onnxruntime runs on CPUExecutionProvider" in caplog.text


def test_unavailable_provider_is_an_error(tiny_onnx):
    from vla_export.backends.onnxrt import OnnxrtRunner

    with pytest.raises(RunnerError, match="has no"):
        OnnxrtRunner(tiny_onnx, providers=["NoSuchExecutionProvider"]).activate()


def test_default_providers():
    from vla_export.backends.onnxrt import default_providers

    assert default_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert default_providers(["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_bad_files(tmp_path):
    from vla_export.backends.onnxrt import OnnxrtRunner

    with pytest.raises(ArtifactError, match="not found"):
        OnnxrtRunner(tmp_path / "none.onnx").activate()
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ArtifactError, match="junk.onnx"):
        OnnxrtRunner(junk).activate()


def test_select_by_suffix(tiny_onnx, tiny_ckpt, tmp_path, monkeypatch):
    from vla_export.backends.onnxrt import OnnxrtRunner
    from vla_export.backends.select import artifact_kind, runner_for_artifact
    from vla_export.backends.torch_runner import TorchRunner

    assert isinstance(runner_for_artifact(tiny_onnx), OnnxrtRunner)
    torch_runner = runner_for_artifact(tiny_ckpt, debug_outputs=True)
    assert isinstance(torch_runner, TorchRunner)
    with torch_runner:
        assert torch_runner.output_names == ("actions", "features")
    assert artifact_kind("x.plan") == "engine"
    with pytest.raises(ArtifactError, match="unknown artifact type"):
        runner_for_artifact(tmp_path / "x.txt")
    with pytest.raises(ArtifactError, match="not found"):
        runner_for_artifact(tmp_path / "x.onnx")
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"\0")
    monkeypatch.setitem(__import__("sys").modules, "vla_export.backends.tensorrt", None)  # unimportable
    with pytest.raises(MissingDependencyError, match="TensorRT"):
        runner_for_artifact(engine)


def _qdq_matmul(path):
    """y = DQ(Q(x)) @ DQ(w_int8): the Q/DQ pattern onnxruntime fuses into an integer MatMul kernel."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).integers(-127, 128, size=(64, 32)).astype(np.int8)
    inits = [
        numpy_helper.from_array(w, "w_q"), numpy_helper.from_array(np.full(32, 0.01, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(32, np.int8), "w_zp"), numpy_helper.from_array(np.float32(0.05), "x_scale"),
        numpy_helper.from_array(np.int8(0), "x_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w_dq"], axis=1),
        helper.make_node("MatMul", ["x_dq", "w_dq"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 32])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return w.astype(np.float64) * 0.01


def test_exact_qdq_runs_the_quantized_arithmetic_not_int8_kernels(tmp_path):
    """qdq="exact" keeps onnxruntime from fusing Q/DQ into its int8 kernels (whose error depends on the CPU)."""
    import onnx
    import onnxruntime as ort

    from vla_export.backends.onnxrt import OnnxrtRunner

    w = _qdq_matmul(tmp_path / "qdq.onnx")
    x = np.random.default_rng(1).normal(size=(8, 64)).astype(np.float32)
    expected = np.clip(np.round(x / 0.05), -128, 127) * 0.05 @ w  # the Q/DQ graph's own arithmetic

    def fused_ops(runner):
        opts = ort.SessionOptions()
        opts.optimized_model_filepath = str(tmp_path / f"{runner.qdq}.opt.onnx")
        for k, v in runner.session_config().items():
            opts.add_session_config_entry(k, v)
        ort.InferenceSession(str(runner.path), opts, providers=["CPUExecutionProvider"])
        return {n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node}

    kernels, exact = OnnxrtRunner(tmp_path / "qdq.onnx"), OnnxrtRunner(tmp_path / "qdq.onnx", qdq="exact")
    assert fused_ops(kernels) & {"MatMulIntegerToFloat", "QLinearMatMul", "MatMulInteger"}
    assert not fused_ops(exact) & {"MatMulIntegerToFloat", "QLinearMatMul", "MatMulInteger", "DynamicQuantizeMatMul"}
    with exact:
        assert exact.describe()["qdq_arithmetic"] == "exact"
        np.testing.assert_allclose(exact.session.run(None, {"x": x})[0], expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(RunnerError, match="qdq"):
        OnnxrtRunner(tmp_path / "qdq.onnx", qdq="fast")


def test_gpu_provider_stages_with_iobinding(tiny_onnx, monkeypatch):
    """On a GPU provider, stage() copies inputs to the device and binds them, so execute() runs the graph only.

    No CUDA provider exists here: the device copy and the binding are recorded by stand-ins around the
    real CPU session, which also computes the outputs."""
    import onnxruntime as ort

    from vla_export.data.iospec import POLICY, dummy_inputs
    from vla_export.models.config import get_preset

    feed = dummy_inputs(POLICY, get_preset("tiny"), window=4)
    calls = []

    class Binding:
        def __init__(self, session):
            self.session, self.inputs, self.outputs, self.result = session, {}, [], None

        def bind_ortvalue_input(self, name, value):
            calls.append(("bind_input", name, value.device))
            self.inputs[name] = value.array

        def bind_output(self, name, device, index):
            calls.append(("bind_output", name, device))
            self.outputs.append(name)

        def copy_outputs_to_cpu(self):
            calls.append(("copy_outputs_to_cpu",))
            return self.result

    class Session:
        def __init__(self, real):
            self.real = real

        def io_binding(self):
            return Binding(self.real)

        def run_with_iobinding(self, binding):
            calls.append(("run_with_iobinding",))
            binding.result = self.real.run(binding.outputs, binding.inputs)

        def run(self, *args):  # the host path must not be taken
            raise AssertionError("session.run called on a GPU provider")

    class DeviceValue:
        def __init__(self, array, device):
            self.array, self.device = array, device

    monkeypatch.setattr(ort.OrtValue, "ortvalue_from_numpy", staticmethod(lambda a, device, index: DeviceValue(a, device)))
    with OnnxrtRunner(tiny_onnx) as cpu:
        want = cpu.infer(feed)
    with OnnxrtRunner(tiny_onnx) as runner:
        runner.session, runner.provider = Session(runner.session), "CUDAExecutionProvider"
        assert runner.device == "cuda"
        staged = runner.stage(feed)
        assert [c[0] for c in calls] == ["bind_input"] * 3 + ["bind_output"] * len(runner.output_names)
        assert all(c[2] == "cuda" for c in calls)
        calls.clear()
        outputs = runner.execute(staged)
        assert calls == [("run_with_iobinding",)]
        got = runner.to_host(outputs)
    np.testing.assert_array_equal(got["actions"], want["actions"])
