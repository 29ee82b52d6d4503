"""Saved references (issue 12, part 2): recorded with the checkpoint and torch, checked without either.

The device-side checks run in a subprocess with torch unimportable; a tampered reference, another
policy config and another episode are shown to fail or be refused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.torchfree import cli_without_torch
from vla_export.errors import ArtifactError
from vla_export.artifacts.reference import load_reference, save_reference
from vla_export.verify.reference import playback

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def episode(tmp_path_factory):
    from vla_export.data.episodes import write_synthetic_episodes

    folder = tmp_path_factory.mktemp("episodes")
    paths = write_synthetic_episodes(folder, count=2, frames=6, frame_hw=(96, 160))
    return paths


def _tamper(src: Path, dst: Path, kind: str, scale: float) -> Path:
    ref = load_reference(src, kind)
    records = [(feed, {k: v * scale if k == "actions" else v for k, v in out.items()}) for feed, out in ref.records]
    meta = {k: v for k, v in ref.meta.items() if k not in ("schema", "kind", "samples", "inputs", "outputs")}
    return save_reference(dst, kind, records, meta)


def test_parity_against_a_saved_reference_without_torch(cli, tiny_ckpt, tiny_onnx, tmp_path):
    ref = tmp_path / "ref.npz"
    r = cli("parity", tiny_ckpt, tiny_onnx, "--samples", "3", "--save-reference", ref, "--json", tmp_path / "direct.json")
    assert r.exit_code == 0, r
    saved = load_reference(ref, "parity")
    assert saved.meta["schema"] == "vla-export/parity-reference/1" and saved.meta["samples"] == 3
    assert saved.meta["checkpoint"]["sha256"] and saved.config["name"] == "tiny" and saved.meta["outputs"] == ["actions"]
    assert set(saved.records[0][0]) == {"pixel_values", "input_ids", "attention_mask"}

    out = cli_without_torch("parity", ref, tiny_onnx, "--json", tmp_path / "device.json", cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    direct, device = (json.loads((tmp_path / f).read_text()) for f in ("direct.json", "device.json"))
    assert device["outputs"]["actions"]["max_abs"] == direct["outputs"]["actions"]["max_abs"]  # the same comparison
    assert device["tolerance"] == direct["tolerance"] and device["reference"]["checkpoint_sha256"] == saved.meta["checkpoint"]["sha256"]

    bad = _tamper(ref, tmp_path / "bad.npz", "parity", -1.0)
    assert cli_without_torch("parity", bad, tiny_onnx, cwd=ROOT).returncode == 1  # fails the check

    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(tiny_onnx, other / "tiny.onnx")
    manifest = json.loads(Path(f"{tiny_onnx}.json").read_text())
    manifest["config"]["window"] += 1
    (other / "tiny.onnx.json").write_text(json.dumps(manifest))
    r = cli("parity", ref, other / "tiny.onnx")
    assert r.exit_code == 2 and "made for another policy config" in r.stderr and "window" in r.stderr


def test_reference_files_are_checked(tmp_path):
    with pytest.raises(ArtifactError, match="not found"):
        load_reference(tmp_path / "none.npz", "parity")
    np.savez(tmp_path / "plain.npz", x=np.zeros(2))
    with pytest.raises(ArtifactError, match="without its __meta__ record"):
        load_reference(tmp_path / "plain.npz", "parity")
    rec = [({"features": np.zeros((1, 2, 3), np.float32)}, {"actions": np.zeros((1, 2), np.float32)})]
    save_reference(tmp_path / "r.npz", "replay", rec, {"config": {"name": "tiny"}})
    with pytest.raises(ArtifactError, match="a replay reference, not a parity one"):
        load_reference(tmp_path / "r.npz", "parity")
    played = playback(load_reference(tmp_path / "r.npz", "replay"))
    with played:
        with pytest.raises(ArtifactError, match="not the one the reference was made from"):
            played.infer({"features": np.ones((1, 2, 3), np.float32)})


def test_replay_against_a_saved_reference_without_torch(cli, tiny_ckpt, tiny_split, episode, tmp_path):
    ref = tmp_path / "replay.npz"
    split = tiny_split.manifest_path
    r = cli("replay", tiny_ckpt, split, episode[0], "--save-reference", ref)
    assert r.exit_code == 0, r
    saved = load_reference(ref, "replay")
    assert saved.meta["samples"] == 6 and saved.meta["episode"]["sha256"]

    out = cli_without_torch("replay", ref, split, episode[0], "--json", tmp_path / "device.json", cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    steps = json.loads((tmp_path / "device.json").read_text())["steps"]
    assert len(steps) == 6 and all(s["max_abs_err"] <= 1e-3 for s in steps)

    bad = _tamper(ref, tmp_path / "bad.npz", "replay", 1.5)
    assert cli_without_torch("replay", bad, split, episode[0], cwd=ROOT).returncode == 1
    r = cli("replay", ref, split, episode[1])
    assert r.exit_code == 2 and "was recorded on episode" in r.stderr
