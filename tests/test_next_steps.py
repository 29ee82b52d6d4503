"""The next steps a failed INT8 check prints: real commands, filled in from the manifest, placeholders said out loud."""

from __future__ import annotations

import shlex

from vla_export.artifacts.manifest import SCHEMA, Manifest
from vla_export.compare.tolerance import tolerance_for
from vla_export.verify.next_steps import int8_next_steps


def _manifest(**fields) -> Manifest:
    return Manifest.from_dict({"schema": SCHEMA, "kind": "onnx", "artifact": "x.onnx", "files": [], **fields}, "x.onnx")


W8A8 = _manifest(precision="int8", quantized_from={"path": "engines/small.onnx"},
                 quantization={"options": {"calibration": {"path": "calibration/small.npz"}}})


def _commands(steps):
    return [c for s in steps.steps for c in s.commands]


def test_w8a8_steps_come_from_the_manifest():
    steps = int8_next_steps("engines/small.int8.onnx", W8A8, reference="small.pt", tolerance=tolerance_for("int8"),
                            data=["held out/"], outputs=["actions", "features"])
    commands = _commands(steps)
    assert steps.missing == []
    assert commands[0] == "vla-export parity small.pt engines/small.int8.onnx --data 'held out/' --locate"
    assert "vla-export sensitivity engines/small.onnx engines/small.int8.onnx --data 'held out/'" in commands
    budget = next(c for c in commands if "--max-action-error" in c)
    assert shlex.split(budget) == ["vla-export", "quantize", "engines/small.onnx", "--int8", "--calib", "calibration/small.npz",
                                   "--max-action-error", "0.05", "--min-cosine", "0.99", "--max-feature-rel-error", "0.05",
                                   "--data", "held out/", "-o", "engines/small.int8-budget.onnx"]
    assert "vla-export parity small.pt engines/small.int8-budget.onnx --data 'held out/'" in commands
    assert "vla-export quantize engines/small.onnx --int8-weights" in commands and "vla-export quantize engines/small.onnx --fp16" in commands
    assert "vla-export parity small.pt engines/small.fp16.onnx --data 'held out/'" in commands


def test_weight_only_failure_offers_a_budgeted_w8a8_and_fp16():
    manifest = _manifest(precision="int8w", quantized_from={"path": "engines/small.onnx"})
    steps = int8_next_steps("engines/small.int8w.onnx", manifest, reference="ref.npz", tolerance=tolerance_for("int8"), located=True)
    commands = _commands(steps)
    assert not any("--int8-weights" in c or " sensitivity " in c for c in commands)
    assert "vla-export calib EPISODES --onnx engines/small.onnx -o calibration/small.npz" in commands
    assert steps.missing == ["episodes to calibrate on: EPISODES below"]
    assert any(c.startswith("vla-export quantize engines/small.onnx --int8 --calib calibration/small.npz") for c in commands)


def test_what_the_manifest_lacks_is_a_placeholder_and_said():
    steps = int8_next_steps("x.int8.onnx", _manifest(precision="int8"), reference="x.pt", tolerance=tolerance_for("int8"))
    assert len(steps.missing) == 2 and "FLOAT.onnx" in steps.missing[0] and "CALIB.npz" in steps.missing[1]
    assert any("--calib CALIB.npz" in c for c in _commands(steps))
    assert int8_next_steps("x.fp16.onnx", _manifest(precision="fp16"), reference="x.pt", tolerance=tolerance_for("fp16")).steps == []


def test_without_a_manifest_the_checks_precision_stands_in():
    steps = int8_next_steps("x.int8.onnx", None, precision="int8", reference="x.pt", tolerance=tolerance_for("int8"))
    assert steps.steps and len(steps.missing) == 2
    assert int8_next_steps("x.int8.onnx", None, precision="fp16", reference="x.pt", tolerance=tolerance_for("fp16")).steps == []
