"""The per-robot state of the served policy, without a server: batched steps equal Policy.step."""

from __future__ import annotations

import numpy as np
import pytest

from vla_export.errors import RunnerError
from vla_export.compare.tolerance import tolerance_for
from vla_export.runtime.batch import step_batch
from vla_export.runtime.policy import Policy
from vla_export.serve.fleet import Fleet, StepRequest

ATOL = tolerance_for("fp32").atol
TEXT_LEN = 32
INSTRUCTIONS = ("go to the cup", "reach the leftmost box", "turn left and then stop")


def frames(seed: int, n: int, hw=(48, 64)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *hw, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def template(tiny_split):
    policy = Policy.from_artifacts(tiny_split.manifest_path, text_len=TEXT_LEN)
    with policy:
        yield policy


def reference_actions(split, instruction, frames_) -> np.ndarray:
    with Policy.from_artifacts(split, text_len=TEXT_LEN) as p:
        p.reset(instruction)
        return np.stack([p.step(f) for f in frames_])


def test_step_batch_equals_policy_step(template, tiny_split):
    streams = [frames(i, 6, hw) for i, hw in enumerate([(48, 64), (120, 160), (48, 64)])]
    policies = []
    for instruction in INSTRUCTIONS:
        p = Policy(template.backbone, template.head, tokenizer=template.tokenizer, window=template.window,
                   image_size=template.image_size, action_dim=template.action_dim, text_len=TEXT_LEN)
        p.reset(instruction)
        policies.append(p)
    got = np.stack([step_batch(policies, [s[k] for s in streams]) for k in range(6)], axis=1)  # [robot, step, A]
    for robot, (instruction, stream) in enumerate(zip(INSTRUCTIONS, streams)):
        want = reference_actions(tiny_split.manifest_path, instruction, stream)
        np.testing.assert_allclose(got[robot], want, atol=ATOL, rtol=0)
    assert np.abs(got[0] - got[1]).max() > 10 * ATOL  # robots really differ: a mix-up would show
    assert [p.steps for p in policies] == [6, 6, 6]


def test_step_batch_refuses_unequal_prompts(template):
    a = Policy(template.backbone, template.head, tokenizer=template.tokenizer, window=4, image_size=template.image_size)
    b = Policy(template.backbone, template.head, tokenizer=template.tokenizer, window=4, image_size=template.image_size)
    a.reset("go to the cup")
    b.reset("reach the leftmost box and then turn left")
    with pytest.raises(RunnerError, match="fixed text_len"):
        step_batch([a, b], list(frames(0, 2)))


def test_fleet_start_step_end_and_isolated_errors(template, tiny_split):
    now = [0.0]
    fleet = Fleet(template, max_robots=2, idle_seconds=5.0, clock=lambda: now[0])
    f = frames(3, 3)
    ok = fleet.execute([StepRequest(1, f[0], start=True, instruction="go to the cup"),
                        StepRequest(2, f[0].astype(np.float32), start=True),  # wrong dtype: that robot only
                        StepRequest(3, f[0]),  # no START
                        StepRequest(6, f[0], start=True)])  # START without its instruction
    assert ok[0].error is None and ok[0].steps == 1
    assert "uint8" in ok[1].error and "START" in ok[2].error and "INSTRUCTION" in ok[3].error
    assert sorted(fleet.robots) == [1]  # the refused STARTs made no state
    too_long = fleet.execute([StepRequest(2, f[0], start=True, instruction="go " * 40), StepRequest(1, f[1])])
    assert "tokens" in too_long[0].error and too_long[1].error is None and too_long[1].steps == 2
    want = reference_actions(tiny_split.manifest_path, "go to the cup", f[:2])
    np.testing.assert_allclose(too_long[1].action, want[1], atol=ATOL, rtol=0)
    # the limit on robots, END frees a slot, idle robots expire
    fleet.execute([StepRequest(4, f[0], start=True, instruction="turn left")])
    full = fleet.execute([StepRequest(5, f[0], start=True, instruction="turn left")])
    assert "limit is 2" in full[0].error
    fleet.execute([StepRequest(4, f[1], end=True)])
    assert sorted(fleet.robots) == [1]
    now[0] = 10.0
    late = fleet.execute([StepRequest(1, f[2])])
    assert "START" in late[0].error and fleet.robots == {}


def test_torch_parts_with_batch_buckets_warm_up_then_equal_policy_step(tiny_ckpt):
    """The settings `vla-export triton --cuda-graphs` writes, minus the GPU: buckets padded, every size warmed
    up largest first before a robot arrives, and batched steps still equal one robot's Policy.step."""
    from vla_export.data.tokenizer import tokenizer_for
    from vla_export.models.loader import PolicyFromCheckpoint
    from vla_export.runtime.batch import warm_up
    from vla_export.runtime.parts import torch_streaming_policy
    from vla_export.serve.repository import TritonOptions, runner_settings

    runner = runner_settings(TritonOptions(max_batch=4, device="cuda", cuda_graphs=True))
    assert runner["batch_buckets"] == [1, 2, 4] and runner["cuda_graph"] and runner["head_opts"] == {"compile": False, "patch_matmul": False}
    cpu = {k: v for k, v in runner.items() if k != "cuda_graph"}
    loaded = PolicyFromCheckpoint(tiny_ckpt)()
    tokenizer = tokenizer_for(loaded.config)
    with torch_streaming_policy(loaded, tokenizer=tokenizer, text_len=TEXT_LEN, **cpu) as template:
        seen: list[int] = []
        hook = template.backbone.module.register_forward_pre_hook(lambda m, args: seen.append(int(args[0].shape[0])))
        warm_up(template, runner["batch_buckets"])
        assert seen == [4, 2, 1]
        seen.clear()
        policies = [template.sibling() for _ in INSTRUCTIONS]
        for p, instruction in zip(policies, INSTRUCTIONS):
            p.reset(instruction)
        streams = [frames(10 + i, 4) for i in range(3)]
        got = np.stack([step_batch(policies, [s[k] for s in streams]) for k in range(4)], axis=1)
        assert seen == [4] * 4  # three robots padded to the bucket of 4
        hook.remove()
    with torch_streaming_policy(PolicyFromCheckpoint(tiny_ckpt)(), tokenizer=tokenizer, text_len=TEXT_LEN) as plain:
        for robot, (instruction, stream) in enumerate(zip(INSTRUCTIONS, streams)):
            plain.reset(instruction)
            np.testing.assert_allclose(got[robot], np.stack([plain.step(f) for f in stream]), atol=1e-4, rtol=0)
    assert np.abs(got[0] - got[1]).max() > 1e-2


def test_compiled_anchor_needs_a_cuda_torch_backbone(template):
    """The fleet benchmark's raw reference is refused for a backbone it cannot compile (here ONNX Runtime parts)."""
    from vla_export.serve.fleet_bench import anchor_rates

    with pytest.raises(RunnerError, match="PyTorch module on CUDA"):
        anchor_rates(template, [4])


def _template_module(monkeypatch, exec_request):
    """The Triton model template, imported with a stand-in for the stub's ``triton_python_backend_utils``:
    ``exec_request(model_name, inputs)`` answers each BLS request (inputs as name -> array)."""
    import importlib.util
    import sys
    import types

    from vla_export.serve.repository import TEMPLATE

    class Response:
        def __init__(self, outputs=None, error=None):
            self.outputs, self._error = outputs or {}, error

        def has_error(self):
            return self._error is not None

        def error(self):
            return types.SimpleNamespace(message=lambda: self._error)

    class InferenceRequest:
        def __init__(self, model_name, requested_output_names, inputs):
            self.model_name, self.inputs = model_name, {name: array for name, array in inputs}

        def exec(self):
            return exec_request(self.model_name, self.inputs, Response)

    stub = types.SimpleNamespace(InferenceRequest=InferenceRequest, get_output_tensor_by_name=lambda r, name: r.outputs.get(name))
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", stub)
    spec = importlib.util.spec_from_file_location("vla_export_policy_model_under_test", TEMPLATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "_tensor", lambda name, array: (name, np.asarray(array)))  # the stub's tensors: plain arrays here
    monkeypatch.setattr(module, "_array", lambda tensor: tensor)
    return module


def test_the_bls_backbone_is_a_runner_and_steps_like_the_onnx_part(tiny_split, monkeypatch):
    """tensorrt_plan's backbone (a call to Triton's model) keeps the Runner contract: in a Policy it gives the
    actions of the split's own backbone; a feed that does not fit and an error answer are RunnerErrors."""
    from vla_export.backends.base import Runner
    from vla_export.backends.select import runner_for_artifact

    onnx_backbone = runner_for_artifact(tiny_split.manifest_path.with_name("tiny.backbone.onnx")).activate()
    asked = []

    def answer(model_name, inputs, response):
        asked.append(model_name)
        if model_name == "broken":
            return response(error="model broken is not ready")
        return response(outputs=onnx_backbone.infer(inputs))

    module = _template_module(monkeypatch, answer)
    bls = module.BackboneModelRunner("tiny_backbone")
    assert isinstance(bls, Runner) and not bls.is_active
    with Policy.from_artifacts(tiny_split.manifest_path, backbone=bls, text_len=TEXT_LEN) as policy:
        assert policy.backbone is bls and bls.is_active  # activated by the Policy, like any part
        policy.reset(INSTRUCTIONS[0])
        got = np.stack([policy.step(f) for f in frames(3, 5)])
        assert policy.describe()["backbone"]["model"] == "tiny_backbone"
        with pytest.raises(RunnerError, match="inputs do not match"):
            bls.infer({"pixel_values": np.zeros((1, 3, 32, 32), np.float32)})
    assert asked == ["tiny_backbone"] * 5 and not bls.is_active
    np.testing.assert_allclose(got, reference_actions(tiny_split.manifest_path, INSTRUCTIONS[0], frames(3, 5)), atol=ATOL, rtol=0)
    with module.BackboneModelRunner("broken") as broken, pytest.raises(RunnerError, match="broken: model broken is not ready"):
        with Policy.from_artifacts(tiny_split.manifest_path, backbone=broken, text_len=TEXT_LEN) as policy:
            policy.reset(INSTRUCTIONS[0])
            policy.step(frames(3, 1)[0])
    onnx_backbone.deactivate()
