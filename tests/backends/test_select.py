"""The one selection: an artifact of every kind -> its runner (backends.select) or streaming Policy (runtime.select)."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from tests.conftest import assert_one_error
from vla_export.backends.onnxrt import OnnxrtRunner
from vla_export.backends.select import artifact_kind, is_model_artifact, runner_for_artifact
from vla_export.backends.torch_runner import TorchRunner
from vla_export.errors import ArtifactError, ConfigError
from vla_export.models.config import get_preset
from vla_export.models.resolve import LoadOptions
from vla_export.runtime.select import policy_for_artifact

WITH_PRESETS = ("preset", "onnx", "engine", "checkpoint")


def test_kind_of_every_artifact(tiny_split):
    assert [artifact_kind(a, allowed=WITH_PRESETS) for a in ("m.onnx", "m.engine", "m.plan", "m.pt", "m.safetensors", "preset:tiny")] == [
        "onnx", "engine", "engine", "checkpoint", "checkpoint", "preset"]
    assert artifact_kind(tiny_split.manifest_path, allowed=("split", "onnx")) == "split"  # .split.json, not a plain .json
    assert artifact_kind("out/tiny", allowed=("checkpoint",), otherwise="split") == "split"
    with pytest.raises(ArtifactError, match="unknown artifact type"):
        artifact_kind("preset:tiny")  # presets only where the caller runs them
    assert is_model_artifact("preset:tiny") and is_model_artifact("m.ckpt") and not is_model_artifact("m.onnx")


def test_runner_for_onnx_engine_checkpoint_and_preset(tiny_onnx, tiny_ckpt, tmp_path, monkeypatch):
    onnx = runner_for_artifact(tiny_onnx, providers=["CPUExecutionProvider"])
    assert isinstance(onnx, OnnxrtRunner) and onnx.requested == ["CPUExecutionProvider"]

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\0")
    made = []
    fake = types.SimpleNamespace(TrtRunner=lambda path, **opts: made.append((path, opts)) or "trt-runner")
    monkeypatch.setitem(sys.modules, "vla_export.backends.tensorrt", fake)
    assert runner_for_artifact(engine, providers=["CPUExecutionProvider"]) == "trt-runner" and made == [(engine, {})]

    with runner_for_artifact(tiny_ckpt, load=LoadOptions(sets=(("head_tanh", False),))) as ckpt:
        assert isinstance(ckpt, TorchRunner) and ckpt.config.head_tanh is False  # loaded with the options
    with runner_for_artifact(tiny_ckpt) as plain:
        assert plain.config.head_tanh is True

    with runner_for_artifact("preset:tiny", allowed=WITH_PRESETS, seed=3) as preset:
        assert preset.config == get_preset("tiny")
    with pytest.raises(ConfigError, match="a preset has its own config"):
        runner_for_artifact("preset:tiny", allowed=WITH_PRESETS, load=LoadOptions(sets=(("head_tanh", True),)))


def test_a_split_record_is_two_runners_not_one(tiny_split):
    with pytest.raises(ArtifactError, match="unknown artifact type '.json'"):
        runner_for_artifact(tiny_split.manifest_path)


def test_policy_for_a_split_record_checkpoint_and_preset(tiny_split, tiny_ckpt):
    split = policy_for_artifact(tiny_split.manifest_path, providers=["CPUExecutionProvider"], text_len=32)
    assert isinstance(split.backbone, OnnxrtRunner) and split.backbone.requested == ["CPUExecutionProvider"]
    head = runner_for_artifact(tiny_split.manifest_path.with_name("tiny.head.onnx"))
    assert policy_for_artifact(tiny_split.manifest_path, head=head).head is head  # a runner given for a part is used as it is

    ckpt = policy_for_artifact(tiny_ckpt, load=LoadOptions(sets=(("window", 2),)), text_len=32)
    assert ckpt.window == 2 and ckpt.config.window == 2 and "torch" in ckpt.backbone.name
    preset = policy_for_artifact("preset:tiny", text_len=16)
    assert preset.config == get_preset("tiny") and type(preset.tokenizer).__name__ == "BuiltinTokenizer"
    frame = np.zeros((40, 56, 3), np.uint8)
    for policy in (split, ckpt, preset):
        with policy:
            policy.reset("go to the cup")
            assert policy.step(frame).shape == (3,)


def test_policy_options_that_do_not_apply_are_refused(tiny_split, tiny_ckpt):
    with pytest.raises(ConfigError, match="backbone apply to the parts of a split export"):
        policy_for_artifact(tiny_ckpt, backbone=tiny_split.manifest_path)
    with pytest.raises(ConfigError, match="apply to a checkpoint or preset"):
        policy_for_artifact(tiny_split.manifest_path, load=LoadOptions(sets=(("window", 2),)))


def test_an_unknown_suffix_is_one_error_line(cli, tmp_path):
    weights = tmp_path / "weights.xyz"
    weights.write_bytes(b"\0")
    assert_one_error(cli(str(weights), app="bench"), 2, "unknown artifact type '.xyz'", ".onnx", ".engine", ".pt")
