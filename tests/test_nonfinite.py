"""NaN/Inf weights are named at load (inspect, per component) and refused by export; non-finite
outputs fail any comparison with that reason, without numpy warnings."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from vla_export.errors import ExitCode


@pytest.fixture(scope="module")
def nan_ckpt(tiny_ckpt, tmp_path_factory):
    data = torch.load(tiny_ckpt, weights_only=False)
    sd = data["model_state_dict"]
    key = next(k for k in sd if k.startswith("rnn.weight"))
    sd[key] = sd[key].clone()
    sd[key][0, :3] = torch.tensor([float("nan"), float("inf"), float("-inf")])
    path = tmp_path_factory.mktemp("nan") / "nan.pt"
    torch.save(data, path)
    return path


def test_compare_output_nonfinite_is_a_failure_with_its_reason():
    from vla_export.compare.comparator import compare_output
    from vla_export.compare.tolerance import tolerance_for

    ref = np.ones((4, 2), np.float32)
    cand = ref.copy()
    cand[1, 0] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "invalid value encountered" on the way
        o = compare_output("actions", ref, cand, tolerance_for("fp32"))
    assert not o.passed and o.nonfinite == {"reference": 0, "candidate": 1}
    assert o.failure == "non-finite values (NaN/Inf): 1 in the candidate"
    assert np.isfinite([o.max_abs, o.mean_abs, o.p99_abs, o.max_rel, o.cosine]).all()
    assert json.loads(json.dumps(o.to_dict()))["failure"] == o.failure  # strict JSON: no NaN in the report
    clean = compare_output("actions", ref, ref.copy(), tolerance_for("fp32"))
    assert clean.passed and clean.nonfinite is None and clean.failure is None


def test_inspect_reports_nonfinite_per_component(cli, nan_ckpt, tmp_path):
    r = cli("inspect", nan_ckpt, "--json", tmp_path / "r.json")
    assert r.exit_code == ExitCode.BAD_INPUT, r
    assert "but 3 non-finite weights (NaN/Inf): lstm 3" in " ".join(r.stdout.split()), r
    assert "non-finite weights" in r.stderr and "Traceback" not in r.stderr
    assert json.loads((tmp_path / "r.json").read_text())["nonfinite"] == {"lstm": 3}


def test_inspect_of_finite_checkpoint_has_none(cli, tiny_ckpt, tmp_path):
    r = cli("inspect", tiny_ckpt, "--json", tmp_path / "r.json")
    assert r.exit_code == ExitCode.OK and "non-finite" not in r.stdout, r
    assert json.loads((tmp_path / "r.json").read_text())["nonfinite"] == {}


@pytest.mark.parametrize("split", [False, True], ids=["whole", "split"])
def test_export_refuses_nonfinite_weights(cli, nan_ckpt, tmp_path, split):
    r = cli("onnx", nan_ckpt, "-o", tmp_path / "t.onnx", *(["--split"] if split else []))
    assert r.exit_code == ExitCode.BAD_INPUT, r
    errors = [line for line in r.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "3 non-finite weights (NaN/Inf) in lstm 3" in errors[0], r
    assert list(tmp_path.iterdir()) == []


def test_parity_with_nonfinite_reference_fails_with_the_reason(cli, nan_ckpt, tiny_onnx):
    r = cli("parity", nan_ckpt, tiny_onnx, "--samples", "2")
    assert r.exit_code == ExitCode.CHECK_FAILED, r
    out = " ".join(r.stdout.split())
    assert "actions: non-finite values (NaN/Inf): 6 in the reference" in out, r  # 2 samples x 3 action dims
    assert "sign 100" not in out  # no per-dimension agreement beside values that do not exist
    assert "RuntimeWarning" not in r.stderr and "Traceback" not in r.stderr, r
