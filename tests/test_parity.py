"""Parity: pass on a faithful export, fail on a perturbed weight, clear errors on mismatched artifacts."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from vla_export.errors import ConfigError
from vla_export.compare.comparator import compare_output
from vla_export.compare.tolerance import tolerance_for


def _rewrite(src, dst, edit):
    import onnx

    model = onnx.load(str(src))
    edit(model)
    onnx.save(model, str(dst))
    return dst


def test_cli_parity_passes_and_writes_json(cli, tiny_ckpt, tiny_onnx, tmp_path):
    out = tmp_path / "parity.json"
    r = cli("parity", tiny_ckpt, tiny_onnx, "--samples", "3", "--json", out)
    assert r.exit_code == 0, r
    assert "parity: pass" in r.stdout
    data = json.loads(out.read_text())
    assert data["passed"] and data["samples"] == 3 and data["precision"] == "fp32"
    actions = data["outputs"]["actions"]
    assert {"max_abs", "mean_abs", "p99_abs", "max_rel", "cosine", "mae_per_dim", "sign_agreement"} <= set(actions)
    assert len(actions["mae_per_dim"]) == 3 and min(actions["sign_agreement"]) == 1.0
    # The test model's outputs vary across inputs by far more than the tolerance: parity is not vacuous.
    assert actions["ref_std"] > 100 * data["tolerance"]["atol"] + 100 * actions["max_abs"]


def test_perturbed_weight_fails_parity(cli, tiny_ckpt, tiny_onnx, tmp_path):
    from onnx import numpy_helper

    def perturb(model):
        # One element of the last head layer's bias: a small change no ReLU can mask.
        init = next(i for i in model.graph.initializer if i.name.endswith("action.4.bias"))
        w = numpy_helper.to_array(init).copy()
        w.flat[0] += 0.05
        init.CopyFrom(numpy_helper.from_array(w, init.name))

    bad = _rewrite(tiny_onnx, tmp_path / "perturbed.onnx", perturb)
    r = cli("parity", tiny_ckpt, bad, "--samples", "3")
    assert r.exit_code == 1, r
    assert "FAIL" in r.stdout


def test_other_input_names_are_an_error(cli, tiny_ckpt, tiny_onnx, tmp_path):
    def rename(model):
        for value in model.graph.input:
            if value.name == "pixel_values":
                value.name = "images"
        for node in model.graph.node:
            for i, name in enumerate(node.input):
                if name == "pixel_values":
                    node.input[i] = "images"

    bad = _rewrite(tiny_onnx, tmp_path / "renamed.onnx", rename)
    r = cli("parity", tiny_ckpt, bad)
    assert r.exit_code not in (0, 1), r
    assert "do not match the policy" in r.stderr and "images" in r.stderr


def test_mismatched_checkpoint_is_an_error(cli, tiny_kosmos_ckpt, tiny_onnx):
    r = cli("parity", tiny_kosmos_ckpt, tiny_onnx)
    assert r.exit_code not in (0, 1), r
    assert "not exported from this checkpoint" in r.stderr


def test_torch_vs_checkpoint_through_the_same_path(tiny_ckpt):
    from vla_export.models.loader import PolicyFromCheckpoint
    from vla_export.verify.parity import parity_check

    result = parity_check(PolicyFromCheckpoint(tiny_ckpt), tiny_ckpt, samples=2, seed=5, batch=2)
    assert result.passed and result.outputs["actions"].max_abs == 0.0


def test_episode_data_source(cli, tiny_ckpt, tiny_onnx, tmp_path):
    from vla_export.data.episodes import write_synthetic_episodes

    write_synthetic_episodes(tmp_path / "eps", 2, frames=6, frame_hw=(48, 64), seed=0)
    r = cli("parity", tiny_ckpt, tiny_onnx, "--samples", "2", "--data", tmp_path / "eps")
    assert r.exit_code == 0, r


def test_compare_output_rules():
    tol = tolerance_for("fp32")
    ref = np.array([[0.5, -0.5], [0.2, -0.3]], dtype=np.float32)
    same = compare_output("actions", ref.astype(np.float64), ref.astype(np.float64) + 1e-6, tol)
    assert same.passed and same.mae_per_dim == pytest.approx([1e-6, 1e-6], rel=1e-6) and same.sign_agreement == [1.0, 1.0]
    flipped = compare_output("actions", ref, ref * np.array([1, -1], dtype=np.float32), tol)
    assert not flipped.passed and flipped.sign_agreement == [1.0, 0.0]
    nan = compare_output("features", ref, np.full_like(ref, np.nan), tol)
    assert not nan.passed and nan.violations == ref.size


def test_tolerances():
    assert tolerance_for("fp16").atol > tolerance_for("fp32").atol
    assert tolerance_for("fp32", atol=0.5, rtol=None).atol == 0.5
    with pytest.raises(ConfigError, match="precision"):
        tolerance_for("fp8")


def test_int8_features_are_judged_by_relative_error_per_row():
    """INT8 intermediate outputs: relative error per frame and cosine, not elementwise atol (README "INT8 parity")."""
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(16, 80)) * np.linspace(0.1, 20, 80)  # a feature with a few large elements
    tol = tolerance_for("int8")
    # INT8 rounding: an absolute error on the scale of the whole vector (1% of its RMS here). Small
    # elements break atol + rtol * |ref|; the feature is fine.
    rms = np.sqrt((ref**2).mean(axis=1, keepdims=True))
    noisy = ref + 0.01 * rms * rng.normal(size=ref.shape)
    elementwise = dataclasses.replace(tol, max_row_rel_error=None)
    assert compare_output("features", ref, noisy, elementwise).violations > 0
    ok = compare_output("features", ref, noisy, tol)
    assert ok.rule == "relative" and ok.passed and ok.max_row_rel < 0.02
    # One frame 10% off: the whole-output cosine (~0.9997) would hide it, the per-row bound does not.
    bad = noisy.copy()
    bad[3] += 0.1 * np.linalg.norm(ref[3]) * rng.normal(size=80) / np.sqrt(80)
    broken = compare_output("features", ref, bad, tol)
    assert broken.cosine > tol.min_cosine and not broken.passed and broken.max_row_rel > 0.05
    # Actions keep the elementwise rule at INT8, and NaN fails the relative rule too.
    assert compare_output("actions", ref[:, :3], noisy[:, :3], tol).rule == "elementwise"
    assert not compare_output("features", ref, np.full_like(ref, np.nan), tol).passed
