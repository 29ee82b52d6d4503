"""Calibration sets: seeded windows of episode frames, the runtime preprocessing, checks against the ONNX."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vla_export.data.calibration import META_KEY, load_calibration_set, make_calibration_set
from vla_export.data.episodes import EpisodeSource, write_synthetic_episodes
from vla_export.errors import DataError
from vla_export.artifacts.onnxfile import io_signature
from vla_export.models.config import get_preset


@pytest.fixture(scope="module")
def episode_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("calib-episodes")
    write_synthetic_episodes(out, 2, seed=0, frames=8, frame_hw=(48, 64))
    return out


@pytest.fixture(scope="module")
def calib_path(episode_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "tiny.npz"
    make_calibration_set(episode_dir, get_preset("tiny"), path, count=3, seed=5)
    return path


def test_set_holds_exactly_the_episode_source_feeds(calib_path, episode_dir):
    cfg = get_preset("tiny")
    calib = load_calibration_set(calib_path)
    assert len(calib) == 3
    source = EpisodeSource(episode_dir, cfg, seed=5)
    for i, feed in enumerate(calib):
        expected = source.sample(i)
        assert feed.keys() == expected.keys()
        for k in feed:
            np.testing.assert_array_equal(feed[k], expected[k])
    meta = calib.meta
    assert meta["samples"] == 3 and meta["window"] == cfg.window and meta["tokenizer"] == "builtin"
    assert [w["frames"] for w in meta["windows"]] == [list(r.frames) for i in range(3) for r in source.locate(i)]


def test_set_fits_the_tiny_onnx(calib_path, tiny_onnx):
    load_calibration_set(calib_path).check_inputs(io_signature(tiny_onnx)["inputs"], tiny_onnx)


def test_mismatched_window_names_and_dtypes_are_refused(episode_dir, calib_path, tmp_path, tiny_onnx):
    inputs = io_signature(tiny_onnx)["inputs"]
    short = make_calibration_set(episode_dir, get_preset("tiny"), tmp_path / "w2.npz", count=1, window=2)
    with pytest.raises(DataError, match=r"'pixel_values' has shape \[1, 2, 3, 224, 224\].*--window"):
        short.check_inputs(inputs, tiny_onnx)
    renamed = [dict(i, name="pixels" if i["name"] == "pixel_values" else i["name"]) for i in inputs]
    with pytest.raises(DataError, match="do not match the inputs"):
        short.check_inputs(renamed, tiny_onnx)
    int32 = [dict(i, dtype="int32") if i["name"] == "input_ids" else i for i in inputs]
    with pytest.raises(DataError, match="'input_ids' is int64"):
        load_calibration_set(calib_path).check_inputs(int32, tiny_onnx)


def test_empty_missing_truncated_and_foreign_sets_are_refused(episode_dir, calib_path, tmp_path):
    with pytest.raises(DataError, match="at least one sample"):
        make_calibration_set(episode_dir, get_preset("tiny"), tmp_path / "none.npz", count=0)
    assert not (tmp_path / "none.npz").exists()
    with pytest.raises(DataError, match="not found"):
        load_calibration_set(tmp_path / "missing.npz")
    empty = tmp_path / "empty.npz"
    meta = {"format": "vla-export/calibration/1"}
    np.savez(empty, pixel_values=np.zeros((0, 1, 4, 3, 224, 224), np.float32), **{META_KEY: np.array(json.dumps(meta))})
    with pytest.raises(DataError, match="empty"):
        load_calibration_set(empty)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, x=np.zeros(3))
    with pytest.raises(DataError, match="not a vla-export calibration set"):
        load_calibration_set(foreign)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(calib_path.read_bytes()[:4096])
    with pytest.raises(DataError, match="truncated"):
        load_calibration_set(truncated)


def test_calib_command_checks_against_the_onnx(cli, episode_dir, tiny_onnx, tmp_path):
    out = tmp_path / "calibration" / "c.npz"
    r = cli("calib", episode_dir, "--onnx", tiny_onnx, "-o", out, "--samples", "2")
    assert r.exit_code == 0, r
    assert len(load_calibration_set(out)) == 2
    r = cli("calib", episode_dir, "--onnx", tiny_onnx, "-o", tmp_path / "w.npz", "--samples", "1", "--window", "2")
    assert r.exit_code == 2 and "--window" in r.stderr
    r = cli("calib", episode_dir, "--preset", "tiny", "--onnx", tiny_onnx, "-o", tmp_path / "x.npz")
    assert r.exit_code == 2 and "exactly one of" in r.stderr


def test_episodes_command_writes_the_recorded_format(cli, tmp_path):
    r = cli("episodes", "-o", tmp_path, "--count", "2", "--frames", "3", "--size", "24x32")
    assert r.exit_code == 0, r
    files = sorted(tmp_path.glob("*.h5"))
    assert len(files) == 2 and "leftmost" in r.stdout


def test_evaluation_windows_can_be_held_out_from_the_calibration_frames(calib_path, episode_dir):
    calib = load_calibration_set(calib_path)
    used = calib.frames_used()
    assert used and sum(len(f) for f in used.values()) >= 4  # 3 windows of 4 frames, maybe overlapping
    # Same seed, no exclusion: the evaluation draws exactly the calibration windows.
    same = EpisodeSource(episode_dir, get_preset("tiny"), seed=5)
    assert [list(r.frames) for i in range(3) for r in same.locate(i)] == [w["frames"] for w in calib.meta["windows"]]
    # Three windows of 4 over two 8-frame episodes leave no disjoint window; hold out the first one only.
    first = calib.meta["windows"][0]
    excluded = {first["episode"].rsplit("/", 1)[-1]: first["frames"]}
    held = EpisodeSource(episode_dir, get_preset("tiny"), seed=5, exclude_frames=excluded)
    assert held.allowed_windows
    for i in range(10):
        for ref in held.locate(i):
            assert not set(ref.frames) & set(excluded.get(ref.episode.rsplit("/", 1)[-1], []))
    with pytest.raises(DataError, match="disjoint from the excluded"):
        EpisodeSource(episode_dir, get_preset("tiny"), exclude_frames=used).locate(0)
    everything = {e.path.name: list(range(e.num_frames)) for e in same.episodes}
    with pytest.raises(DataError, match="disjoint from the excluded"):
        EpisodeSource(episode_dir, get_preset("tiny"), exclude_frames=everything).locate(0)
