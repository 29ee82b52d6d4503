"""The shared preprocessing: resize + CLIP normalisation, numpy only."""

import numpy as np
import pytest

from vla_export.data.preprocess import CLIP_MEAN, CLIP_STD, _area_average, preprocess_frame, prompt_for
from vla_export.data.source import SyntheticSource
from vla_export.errors import DataError
from vla_export.models.config import get_preset


def test_shape_dtype_and_normalisation():
    frame = np.full((720, 1280, 3), 255, dtype=np.uint8)
    out = preprocess_frame(frame, 224)
    assert out.shape == (3, 224, 224) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0, 0], (1.0 - CLIP_MEAN) / CLIP_STD, rtol=1e-6)


def test_area_average_is_the_block_mean():
    frame = np.random.default_rng(0).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    expected = frame.reshape(240, 3, 256, 5, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(_area_average(frame, 3, 5), expected, rtol=1e-6)


def test_spatial_structure_survives():
    """Left half dark, right half bright stays that way after resizing (no transposes, no flips)."""
    frame = np.zeros((720, 1280, 3), dtype=np.uint8)
    frame[:, 640:] = 200
    out = preprocess_frame(frame, 224)
    assert out[:, :, :100].max() < out[:, :, 124:].min()


@pytest.mark.parametrize(
    "frame, match",
    [
        (np.zeros((720, 1280, 3), dtype=np.float32), "uint8"),
        (np.zeros((720, 1280), dtype=np.uint8), r"\[H, W, 3\]"),
        (np.zeros((3, 720, 1280), dtype=np.uint8), r"\[H, W, 3\]"),
        ([[0]], "numpy array"),
    ],
)
def test_bad_frames(frame, match):
    with pytest.raises(DataError, match=match):
        preprocess_frame(frame)


def test_prompt():
    assert prompt_for("go left") == "<grounding>An image of a robot go left"
    assert prompt_for(None) == "<grounding>An image of a robot go to the cup"


def test_seeded_source_is_deterministic():
    cfg = get_preset("tiny")
    a, b = SyntheticSource(cfg, seed=4, batch=2).sample(7), SyntheticSource(cfg, seed=4, batch=2).sample(7)
    c = SyntheticSource(cfg, seed=5, batch=2).sample(7)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["pixel_values"], c["pixel_values"])
    assert a["pixel_values"].shape == (2, cfg.window, 3, 224, 224)
    assert (a["attention_mask"].sum(1) >= 1).all()


@pytest.mark.parametrize("hw", [(224, 224), (480, 640), (720, 1280), (100, 150), (449, 300)])
def test_tensor_path_is_the_numpy_path(hw):
    """preprocess_tensor (a server's GPU path) on a batch equals preprocess_frame frame by frame, on every
    resize route (identity, area average, upscale, odd sizes); and a one-pixel change is far above the tolerance."""
    torch = pytest.importorskip("torch")
    from vla_export.data.preprocess import preprocess_tensor

    frames = np.random.default_rng(hw[0]).integers(0, 256, (3, *hw, 3), dtype=np.uint8)
    want = np.stack([preprocess_frame(f, 224) for f in frames])
    got = preprocess_tensor(torch.from_numpy(frames), 224).numpy()
    assert got.shape == want.shape == (3, 3, 224, 224) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert np.abs(want[0] - want[1]).max() > 1.0  # the frames differ, so do their pixels
    nudged = frames.copy()
    nudged[0, hw[0] // 2, hw[1] // 2] ^= 0x80
    assert np.abs(preprocess_tensor(torch.from_numpy(nudged), 224).numpy() - want).max() > 1e-3
