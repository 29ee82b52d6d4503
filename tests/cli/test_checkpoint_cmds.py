"""`vla-export init` / `inspect` as a user runs them: exit codes, one-line errors, JSON."""

import datetime
import json

import pytest
import torch


def test_init_then_inspect_json(cli, tmp_path):
    ckpt = tmp_path / "t.pt"
    r = cli("init", "--preset", "tiny-kosmos", "-o", ckpt, "--seed", "3")
    assert r.exit_code == 0, r
    r = cli("inspect", ckpt, "--json", tmp_path / "r.json")
    assert r.exit_code == 0, r
    assert "loadable (strict)" in r.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["loadable"] is True
    assert report["total_params"] == sum(report["components"].values()) == 212_258
    assert report["components"]["clip_vision"] == 0 and report["components"]["lstm"] > 0
    assert report["matched_preset"] == "tiny-kosmos"
    assert report["layout"] == "mobile-vla-training" and report["metadata"]["epoch"] == 0
    assert report["optimizer_state_bytes"] > 0


def test_inspect_load_reports_time_and_rss(cli, tiny_ckpt, tmp_path):
    r = cli("inspect", tiny_ckpt, "--load", "--json", tmp_path / "r.json")
    assert r.exit_code == 0, r
    load = json.loads((tmp_path / "r.json").read_text())["load"]
    assert load["seconds"] > 0 and load["peak_rss_bytes"] > 0 and load["params_loaded"] == 324_979


def test_init_is_atomic_and_deterministic(cli, tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    assert cli("init", "-o", a, "--seed", "5").exit_code == 0
    assert cli("init", "-o", b, "--seed", "5").exit_code == 0
    sa = torch.load(a, weights_only=False)["model_state_dict"]
    sb = torch.load(b, weights_only=False)["model_state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "b.pt"]  # no temp files left


def _one_error_line(r, *fragments):
    assert r.exit_code != 0, r
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    joined = " ".join(lines)
    assert joined.startswith("error: "), r
    assert "Traceback" not in r.stderr + r.stdout
    for f in fragments:
        assert f in joined, (f, joined)


def test_missing_file(cli, tmp_path):
    _one_error_line(cli("inspect", tmp_path / "nope.pt"), "nope.pt", "not found")


def test_truncated_file(cli, tiny_ckpt, tmp_path):
    path = tmp_path / "cut.pt"
    path.write_bytes(tiny_ckpt.read_bytes()[:5000])
    _one_error_line(cli("inspect", path), "cut.pt", "truncated or corrupt")


def test_foreign_file(cli, tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07\x12\x04onnx-ish bytes")
    _one_error_line(cli("inspect", path), "model.onnx", "not a readable ONNX model")


def test_unknown_architecture(cli, tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3), "fc.weight": torch.zeros(10, 8)}, path)
    r = cli("inspect", path)
    _one_error_line(r, "resnet.pt", "not a Kosmos-2 policy")
    assert "conv1.weight" not in r.stderr or "prefixes" in r.stderr


def test_strict_failure_exits_nonzero(cli, tiny_ckpt, tmp_path):
    sd = torch.load(tiny_ckpt, weights_only=False)["model_state_dict"]
    del sd["action.2.weight"]
    path = tmp_path / "broken.pt"
    torch.save({"model_state_dict": sd}, path)
    r = cli("inspect", path, "--config", _write_config(tmp_path))
    _one_error_line(r, "broken.pt", "1 missing (action_head: action.2.weight)")
    assert "NOT loadable" in r.stdout


def _write_config(tmp_path):
    from vla_export.models.config import get_preset

    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(get_preset("tiny").to_dict()))
    return path


def test_trust_gate(cli, tiny_ckpt, tmp_path):
    sd = torch.load(tiny_ckpt, weights_only=False)["model_state_dict"]
    path = tmp_path / "sets.pt"
    torch.save({"model_state_dict": sd, "saved_at": datetime.datetime(2026, 1, 1)}, path)  # not on the allow-list
    _one_error_line(cli("inspect", path), "sets.pt", "datetime", "--trust-checkpoint")
    r = cli("inspect", path, "--trust-checkpoint")
    assert r.exit_code == 0, r
    assert "weights_only=False" in r.stderr  # the warning


def test_rename_option(cli, tiny_ckpt, tmp_path):
    sd = torch.load(tiny_ckpt, weights_only=False)["model_state_dict"]
    path = tmp_path / "bb.pt"
    torch.save({"state_dict": {k.replace("rnn.", "temporal.lstm.", 1): v for k, v in sd.items()}}, path)
    assert cli("inspect", path).exit_code != 0
    assert cli("inspect", path, "--rename", "temporal.lstm.=rnn.").exit_code == 0


def test_debug_shows_traceback(cli, tmp_path):
    r = cli("inspect", tmp_path / "nope.pt", "--debug")  # --debug changes what is printed, never the exit code
    assert r.exit_code == 2 and "Traceback" in r.stderr and "CheckpointError" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: ")


def test_bad_preset(cli, tmp_path):
    _one_error_line(cli("init", "--preset", "gigantic", "-o", tmp_path / "x.pt"), "unknown preset 'gigantic'")
    assert not (tmp_path / "x.pt").exists()
