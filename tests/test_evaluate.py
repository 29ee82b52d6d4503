"""`vla-export evaluate`: accuracy against recorded actions per artifact, its gate and its honesty rule.

The checks need a checkpoint whose actions follow the episodes: a random policy is no better than a
constant action, so (rightly) every evaluation with it is inconclusive. The fitted checks use the session's
``fitted_tiny_ckpt`` (`init --fit` on 32 synthetic episodes, tests/conftest.py) on its ``held_out_episodes``.
"""

from __future__ import annotations

import json
import math
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import assert_one_error
from vla_export.data.episodes import ACTION_SCALE  # what `init --fit` trains on: recorded / ACTION_SCALE

EPISODES = dict(count=4, frames=8, frame_hw=(48, 64))  # 4 x 8 = 32 windows, both sides, every scenario


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny policy's tensors are small: on the shared 2-core machine one torch thread runs them ~20x faster than two."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def episodes(tmp_path_factory) -> Path:
    from vla_export.data.episodes import write_synthetic_episodes

    out = tmp_path_factory.mktemp("episodes")
    write_synthetic_episodes(out, seed=1, **EPISODES)
    return out


def with_actions(src: Path, dst: Path, *, scale: float, offset) -> Path:
    """A copy of the ONNX ``src`` (and its manifest) whose ``actions`` become ``actions * scale + offset``:
    scale 0 and the reference's mean as offset make an artifact that outputs one action whatever it sees."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    producer = next(n for n in g.node if "actions" in n.output)
    producer.output[list(producer.output).index("actions")] = "actions_raw"
    g.initializer.extend([numpy_helper.from_array(np.asarray(scale, dtype=np.float32), "broken_scale"),
                          numpy_helper.from_array(np.asarray(offset, dtype=np.float32).reshape(1, -1), "broken_offset")])
    g.node.extend([helper.make_node("Mul", ["actions_raw", "broken_scale"], ["actions_scaled"], name="broken_mul"),
                   helper.make_node("Add", ["actions_scaled", "broken_offset"], ["actions"], name="broken_add")])
    onnx.save(model, str(dst))
    shutil.copy(src.with_name(src.name + ".json"), dst.with_name(dst.name + ".json"))
    return dst


def _report(path: Path) -> dict:
    return json.loads(path.read_text())


def _artifact(report: dict, label: str) -> dict:
    return next(a for a in report["artifacts"] if a["label"] == label)


# --- the rule, on numbers -----------------------------------------------------------------------------

def _targets(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice([0.0, 1.15], n), rng.choice([-1.15, 0.0, 1.15], n), np.zeros(n)], axis=1)


def test_discrimination_rule_on_numbers():
    from vla_export.compare.actions import MIN_WINDOWS, discrimination

    names = ["linear_x", "linear_y", "angular_z"]
    y = _targets(40)
    good = y + np.random.default_rng(1).normal(0, 0.1, y.shape)
    found = discrimination(good, y, names, gate=None)
    assert found["conclusive"]
    assert [found["dims"][n]["status"] for n in names] == ["discriminating", "discriminating", "constant"]
    # a constant prediction (what a broken artifact would give) cannot beat the recorded median: inconclusive
    constant = np.tile(np.median(y, axis=0), (len(y), 1))
    found = discrimination(constant, y, names, gate=None)
    assert not found["conclusive"] and found["dims"]["linear_x"]["status"] == "undiscriminating"
    # a gate wider than the checkpoint's lead over a constant could be passed by a constant artifact
    lead = found_lead = discrimination(good, y, names, gate=None)["dims"]["linear_y"]["headroom"]
    assert not discrimination(good, y, names, gate=lead + 0.01)["conclusive"]
    assert discrimination(good, y, names, gate=found_lead / 2)["conclusive"]
    # too few windows
    few = discrimination(good[: MIN_WINDOWS - 1], y[: MIN_WINDOWS - 1], names, gate=None)
    assert not few["conclusive"] and "fewer than" in few["dims"]["linear_x"]["why"]
    # nothing varies at all
    assert not discrimination(np.zeros((20, 1)), np.zeros((20, 1)), ["linear_x"], gate=None)["conclusive"]


def test_gate_and_its_resolution_on_numbers():
    from vla_export.verify.evaluate import ArtifactScore, _change
    from vla_export.compare.actions import action_metrics

    names = ["linear_x", "linear_y", "angular_z"]
    y = _targets(40)
    rng = np.random.default_rng(2)
    err = rng.uniform(0, 0.1, y.shape) * rng.choice([-1, 1], y.shape)

    def score(pred):
        s = ArtifactScore("a", "a", "onnx", "fp32", 4, {}, "", pred)
        s.metrics = action_metrics(pred, y, names)
        return s

    ref, art = score(y.copy()), score(y + err)
    rises = np.abs(err).mean(axis=0)
    worst = names[int(np.argmax(rises))]
    change, gate = _change(art, ref, y, names, gate=float(rises.max()) + 1e-3)
    assert change["mae"]["linear_x"] == pytest.approx(rises[0]) and gate["passed"] and worst in gate["unresolved"]
    change, gate = _change(art, ref, y, names, gate=0.2)
    assert gate["passed"] and gate["unresolved"] == []
    change, gate = _change(art, ref, y, names, gate=0.0)
    assert not gate["passed"] and gate["over"] == names and gate["unresolved"] == []
    assert _change(art, ref, y, names, gate=None)[1] is None


def test_metrics_on_numbers():
    from vla_export.compare.actions import action_metrics

    y = np.array([[1.0, -1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    p = np.array([[0.5, -0.5], [0.0, -1.0], [-1.0, 0.0], [0.0, 0.0]])
    m = action_metrics(p, y, ["linear_x", "linear_y"])
    assert m["mae"]["linear_x"] == pytest.approx(2.5 / 4) and m["mae"]["linear_y"] == pytest.approx(2.5 / 4)
    assert m["rmse"]["linear_x"] == pytest.approx(math.sqrt((0.25 + 4) / 4))
    assert m["mae"]["overall"] == pytest.approx(2.5 / 4)
    assert m["sign_agreement"] == {"linear_x": 0.5, "linear_y": 0.5}  # over the windows with a key press
    assert m["pressed_windows"] == {"linear_x": 2, "linear_y": 2}
    p[0, 0] = np.nan
    bad = action_metrics(p, y, ["linear_x", "linear_y"])
    assert bad["nonfinite"] == 1 and bad["mae"]["linear_x"] is None


# --- the command --------------------------------------------------------------------------------------

def test_fitted_onnx_passes_and_a_constant_artifact_fails_the_gate(cli, tmp_path, fitted_tiny_ckpt, fitted_tiny_onnx, held_out_episodes):
    """The fitted policy's ONNX keeps its MAE; one that outputs the checkpoint's mean action whatever it sees
    (what a broken INT8 graph can do, and what parity on a random policy lets through) fails the gate. The
    recorded actions are divided by the fit record's action_scale without being told."""
    first = tmp_path / "first.json"
    r = cli("evaluate", fitted_tiny_ckpt, fitted_tiny_onnx, "--data", held_out_episodes, "--json", first)
    assert r.exit_code == 0, r
    report = _report(first)
    assert report["schema"] == "vla-export/evaluate/1" and report["conclusive"], report["discrimination"]
    assert report["data"]["action_scale"] == ACTION_SCALE and "fit record" in r.stderr
    ck = _artifact(report, "checkpoint")
    assert report["data"]["windows"] == 4 * 18 == len(ck["actions"])
    assert report["dims"] == ["linear_x", "linear_y", "angular_z"]
    onnx_row = _artifact(report, fitted_tiny_onnx.name)
    for dim in ("linear_x", "linear_y", "angular_z", "overall"):
        assert abs(onnx_row["change"]["mae"][dim]) < 1e-3  # fp32 rounding only, far under any gate
    assert "evaluate: pass" in r.stdout and "conclusive:" in r.stdout

    mean = np.mean(ck["actions"], axis=0)
    broken = with_actions(fitted_tiny_onnx, tmp_path / "constant.onnx", scale=0.0, offset=mean)
    out = tmp_path / "gate.json"
    r = cli("evaluate", fitted_tiny_ckpt, fitted_tiny_onnx, broken, "--data", held_out_episodes, "--max-mae-increase", "0.05", "--json", out)
    assert r.exit_code == 1, r
    report = _report(out)
    assert report["conclusive"] and not report["passed"]
    assert _artifact(report, fitted_tiny_onnx.name)["gate"]["passed"]
    gate = _artifact(report, "constant.onnx")["gate"]
    assert not gate["passed"] and set(gate["over"]) >= {"linear_x", "linear_y"}
    assert "evaluate: FAIL" in r.stdout


def test_a_random_policy_cannot_tell_the_constant_artifact_apart(cli, tmp_path, tiny_ckpt, tiny_onnx, episodes):
    """The issue's case: with a random policy the constant artifact passes the gate; the rule says so, and --strict fails."""
    first = tmp_path / "random.json"
    assert cli("evaluate", tiny_ckpt, "--data", episodes, "--json", first).exit_code == 0
    mean = np.mean(_artifact(_report(first), "checkpoint")["actions"], axis=0)
    broken = with_actions(tiny_onnx, tmp_path / "constant.onnx", scale=0.0, offset=mean)
    args = ("evaluate", tiny_ckpt, broken, "--data", episodes, "--max-mae-increase", "0.05")
    r = cli(*args, "--json", tmp_path / "lenient.json")
    assert r.exit_code == 0, r  # the gate cannot see it...
    report = _report(tmp_path / "lenient.json")
    assert report["passed"] and not report["conclusive"]
    assert "inconclusive: these episodes cannot tell a broken artifact apart" in r.stdout  # ...and it says so
    r = cli(*args, "--strict", "--junit", tmp_path / "strict.xml")
    assert r.exit_code == 1, r
    cases = {c.get("name"): c for c in ET.parse(tmp_path / "strict.xml").getroot().iter("testcase")}
    assert cases["discrimination"].find("failure") is not None
    assert cases["constant.onnx [linear_x]"].find("failure") is None


def test_split_export_through_the_streaming_runtime(cli, tmp_path, tiny_ckpt, tiny_split, episodes):
    r = cli("evaluate", tiny_ckpt, tiny_split.manifest_path, tiny_ckpt, "--data", episodes, "--json", "-")
    assert r.exit_code == 0, r
    report = json.loads(r.stdout)  # --json -: standard output holds only the JSON
    again = report["artifacts"][2]  # the checkpoint itself as an artifact: another TorchRunner, the same figures
    assert again["kind"] == "checkpoint" and all(abs(v) < 1e-6 for v in again["change"]["mae"].values())
    split = report["artifacts"][1]
    assert split["kind"] == "split" and split["precision"].startswith("split")
    assert split["runner"]["warmup"] == "pad with the first frame's feature"
    assert all(abs(v) < 1e-4 for v in split["change"]["mae"].values())
    assert "evaluate:" in r.stderr  # the table went to standard error


def test_nonfinite_actions_fail_and_junit_names_them(cli, tmp_path, tiny_ckpt, tiny_onnx, episodes):
    broken = with_actions(tiny_onnx, tmp_path / "nan.onnx", scale=1.0, offset=[np.nan, 0.0, 0.0])
    r = cli("evaluate", tiny_ckpt, broken, "--data", episodes, "--junit", "-")
    assert r.exit_code == 1, r
    root = ET.fromstring(r.stdout)
    failed = [c.get("name") for c in root.iter("testcase") if c.find("failure") is not None]
    assert "nan.onnx [linear_x]" in failed


def test_an_artifact_of_another_config_is_refused_before_running(cli, tmp_path, tiny_ckpt, tiny_onnx, episodes):
    other = tmp_path / "other.onnx"
    shutil.copy(tiny_onnx, other)
    manifest = json.loads(tiny_onnx.with_name(tiny_onnx.name + ".json").read_text())
    manifest["config"]["head_tanh"] = not manifest["config"]["head_tanh"]
    other.with_name(other.name + ".json").write_text(json.dumps(manifest))
    r = cli("evaluate", tiny_ckpt, tiny_onnx, other, "--data", episodes)
    assert_one_error(r, 2, "other.onnx", "not exported from this checkpoint's config", "head_tanh")
    assert "running the checkpoint" not in r.stderr  # refused before any window ran


@pytest.mark.parametrize("args, needles", [
    ((), ("--data",)),
    (("--data", "{episodes}", "--max-mae-increase", "-0.1"), ("--max-mae-increase", ">= 0")),
    (("--data", "{episodes}", "--max-mae-increase", "nan"), ("--max-mae-increase",)),
    (("--data", "{episodes}", "--action-scale", "0"), ("--action-scale", "> 0")),
    (("--data", "{episodes}", "--qdq", "fast"), ("--qdq",)),
    (("{onnx}", "{onnx}", "--data", "{episodes}"), ("named twice",)),
    (("{tmp}/model.tflite", "--data", "{episodes}"), ("unknown artifact type",)),
    (("{tmp}/missing.onnx", "--data", "{episodes}"), ("missing.onnx", "not found")),
    (("--data", "{tmp}/nowhere"), ("nowhere", "not found")),
    (("--data", "{tmp}"), ("no episode files",)),
])
def test_bad_input_is_one_line_exit_2(cli, tmp_path, tiny_ckpt, tiny_onnx, episodes, args, needles):
    fill = {"episodes": str(episodes), "onnx": str(tiny_onnx), "tmp": str(tmp_path)}
    r = cli("evaluate", tiny_ckpt, *[a.format(**fill) for a in args])
    assert_one_error(r, 2, *needles)


def test_a_saved_reference_is_refused(cli, tmp_path, episodes):
    ref = tmp_path / "ref.npz"
    ref.write_bytes(b"x")
    assert_one_error(cli("evaluate", ref, "--data", episodes), 2, "saved reference")


# --- quantize's MAE-increase budget, measured the same way ------------------------------------------------

def test_quantize_mae_budget_on_a_fitted_policy(cli, tmp_path, fitted_tiny_onnx, fitted_tiny_calib, held_out_episodes):
    """`quantize --int8 --max-mae-increase X --data EPISODES`: the W8A8 model of the fitted policy is searched until
    its MAE against the recorded actions of held-out windows rises at most X; the manifest records it."""
    import re

    from vla_export.artifacts.manifest import read_manifest

    out = tmp_path / "fitted.int8.onnx"
    r = cli("quantize", fitted_tiny_onnx, "--int8", "--calib", fitted_tiny_calib.path, "--max-mae-increase", "0.05",
            "--action-scale", ACTION_SCALE, "--data", held_out_episodes, "--eval-samples", "60", "-o", out)  # every full window
    assert r.exit_code == 0, r
    measured = re.search(r"MAE budget measured on (\d+) held-out windows", r.stdout)
    assert measured and int(measured.group(1)) >= 10, r.stdout
    options = read_manifest(out).to_dict()["quantization"]["options"]
    assert options["budget"]["budget"]["max_mae_increase"] == 0.05 and options["budget"]["met"]
    assert options["budget"]["final"]["actions_mae_increase"] <= 0.05
    assert options["held_out"]["action_scale"] == ACTION_SCALE
    assert len(options["held_out"]["recorded_actions"]) == int(measured.group(1))
    assert options["mae_discrimination"]["conclusive"], options["mae_discrimination"]["dims"]


@pytest.mark.parametrize("args, needles", [
    (("--int8-weights", "--max-mae-increase", "0.1"), ("--max-mae-increase", "only with --int8")),
    (("--int8", "--calib", "{calib}", "--action-scale", "2"), ("--action-scale", "--max-mae-increase")),
    (("--int8", "--calib", "{calib}", "--max-mae-increase", "-1"), ("--max-mae-increase", ">= 0")),
    (("--int8", "--calib", "{calib}", "--max-mae-increase", "0.1", "--action-scale", "0"), ("--action-scale", "> 0")),
])
def test_quantize_mae_budget_bad_input(cli, tmp_path, tiny_onnx, args, needles):
    calib = tmp_path / "c.npz"
    calib.write_bytes(b"x")
    r = cli("quantize", tiny_onnx, *[a.format(calib=calib) for a in args], "-o", tmp_path / "out.onnx")
    assert_one_error(r, 2, *needles)


def test_fp16_onnx_and_an_engine(cli, tmp_path, tiny_ckpt, tiny_onnx, episodes, monkeypatch):
    """An FP16 ONNX, and a TensorRT engine through the real TrtRunner over the stand-in TensorRT (tests/fake_tensorrt.py)."""
    import sys

    from tests import fake_tensorrt
    from vla_export.backends import tensorrt as B
    from vla_export.export.quantize import convert_fp16

    fp16 = convert_fp16(tiny_onnx, tmp_path / "tiny.fp16.onnx").output
    engine = fake_tensorrt.write_fake_engine(tmp_path / "tiny.engine", tiny_onnx)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt.make_module("10.3.0.26"))
    monkeypatch.setattr(B, "gpu_info", lambda device=0: dict(fake_tensorrt.GPU))
    monkeypatch.setattr(B, "device_memory", lambda preference="auto", device=0: sys.modules["tensorrt"].memory)
    out = tmp_path / "e.json"
    r = cli("evaluate", tiny_ckpt, fp16, engine, "--data", episodes, "--json", out)
    assert r.exit_code == 0, r
    rows = {a["label"]: a for a in _report(out)["artifacts"]}
    assert rows["tiny.fp16.onnx"]["precision"] == "fp16" and abs(rows["tiny.fp16.onnx"]["change"]["mae"]["overall"]) < 1e-2
    assert rows["tiny.engine"]["kind"] == "engine" and rows["tiny.engine"]["runner"]["name"].startswith("tensorrt:")
    assert abs(rows["tiny.engine"]["change"]["mae"]["overall"]) < 1e-4
