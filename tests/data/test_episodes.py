"""Episode files: the recorded layout, validation errors, instructions and the seeded source."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from vla_export.data.episodes import (
    ACTION_KEY,
    EpisodeSource,
    instruction_for,
    open_episode,
    write_synthetic_episodes,
)
from vla_export.data.preprocess import preprocess_frames
from vla_export.data.iospec import INPUT_NAMES
from vla_export.errors import DataError
from vla_export.models.config import get_preset

HW = (48, 64)


@pytest.fixture(scope="module")
def episode_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("episodes")
    write_synthetic_episodes(out, 3, seed=0, frames=10, frame_hw=HW)
    return out


def test_synthetic_episode_has_the_recorded_layout(episode_dir):
    path = sorted(episode_dir.glob("*.h5"))[0]
    with h5py.File(path) as f:
        assert f["images"].dtype == np.uint8 and f["images"].shape == (10, *HW, 3)
        assert f["images"].compression == "gzip"
        assert f["actions"].dtype == np.float32 and f["actions"].shape == (10, 3)
        assert f.attrs["num_frames"] == 10 and f.attrs["action_chunk_size"] == 8
        assert f.attrs["episode_name"] == path.stem
    ep = open_episode(path)
    actions = ep.actions()
    assert set(np.unique(np.abs(actions))) <= {0.0, np.float32(ACTION_KEY)}
    assert np.abs(actions).sum() > 0
    assert ep.event_types()[0] == "episode_start" and len(ep.event_types()) == 10
    frames = ep.frames()
    assert frames.shape == (10, *HW, 3)
    assert 0 < np.abs(np.diff(frames.astype(np.int16), axis=0)).mean() < 40  # moving, but smooth


def test_synthetic_episodes_are_seeded(tmp_path):
    a = write_synthetic_episodes(tmp_path / "a", 1, seed=3, frames=4, frame_hw=HW)[0]
    b = write_synthetic_episodes(tmp_path / "b", 1, seed=3, frames=4, frame_hw=HW)[0]
    np.testing.assert_array_equal(open_episode(a).frames(), open_episode(b).frames())


@pytest.mark.parametrize(
    ("name", "instruction"),
    [
        ("episode_20250808_1box_vert_left", "go around the leftmost edge to reach the cup"),
        ("episode_2box_hori_right_x", "go around the rightmost edge to reach the cup"),
        ("episode_20250808_free", "go to the cup"),
    ],
)
def test_instruction_follows_the_scenario(name, instruction):
    assert instruction_for(name) == instruction


def test_source_samples_are_seeded_and_match_the_runtime_preprocessing(episode_dir):
    cfg = get_preset("tiny")
    src = EpisodeSource(episode_dir, cfg, seed=1)
    x = src.sample(5)
    assert tuple(x) == INPUT_NAMES
    assert x["pixel_values"].shape == (1, cfg.window, 3, cfg.image_size, cfg.image_size)
    assert x["input_ids"].shape == x["attention_mask"].shape == (1, src.L)
    for k in x:
        np.testing.assert_array_equal(x[k], EpisodeSource(episode_dir, cfg, seed=1).sample(5)[k])
    (ref,) = src.locate(5)
    expected = preprocess_frames(open_episode(ref.episode).frames(ref.frames), cfg.image_size)
    np.testing.assert_array_equal(x["pixel_values"][0], expected)
    assert list(ref.frames) == list(range(ref.frames[0], ref.frames[0] + cfg.window))
    ids, _ = src.tokenizer.encode(f"<grounding>An image of a robot {ref.instruction}", src.L)
    np.testing.assert_array_equal(x["input_ids"][0], ids)
    assert not all(np.array_equal(x["pixel_values"], src.sample(i)["pixel_values"]) for i in range(1, 4))


def test_source_batch_window_and_text_len(episode_dir):
    src = EpisodeSource(episode_dir, get_preset("tiny"), batch=2, window=2, text_len=24)
    x = src.sample(0)
    assert x["pixel_values"].shape[:2] == (2, 2) and x["input_ids"].shape == (2, 24)


def test_window_longer_than_episode_is_an_error(episode_dir):
    with pytest.raises(DataError, match="fewer than the window of 12"):
        EpisodeSource(episode_dir, get_preset("tiny"), window=12)


def test_missing_truncated_and_foreign_files_are_clear_errors(tmp_path, episode_dir):
    with pytest.raises(DataError, match="no such episode"):
        EpisodeSource(tmp_path / "nope", get_preset("tiny"))
    with pytest.raises(DataError, match="no episode files"):
        EpisodeSource(tmp_path, get_preset("tiny"))
    src = sorted(episode_dir.glob("*.h5"))[0]
    truncated = tmp_path / "trunc.h5"
    truncated.write_bytes(src.read_bytes()[: src.stat().st_size // 3])
    with pytest.raises(DataError, match="trunc.h5"):
        open_episode(truncated).frames()
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["data"] = np.zeros(3)
    with pytest.raises(DataError, match="not a Mobile VLA episode: missing images"):
        open_episode(foreign)
    text = tmp_path / "text.h5"
    text.write_text("hello")
    with pytest.raises(DataError, match="not a readable HDF5 episode"):
        open_episode(text)
