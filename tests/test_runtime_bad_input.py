"""Policy errors arrive as typed, one-line errors at the right moment: a frame with no pixels at
step(); an instruction that is not a string, or too long for the model, at reset() — not at every step."""

from __future__ import annotations

import numpy as np
import pytest

from vla_export.errors import DataError


@pytest.fixture
def onnx_policy(tiny_split):
    from vla_export.runtime import Policy

    with Policy.from_artifacts(tiny_split.manifest_path) as policy:
        yield policy


def _frame(h=72, w=128):
    return np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("shape", [(0, 0, 3), (0, 5, 3), (5, 0, 3)])
def test_a_frame_without_pixels_is_a_data_error(onnx_policy, shape):
    from vla_export.data.preprocess import preprocess_frame

    onnx_policy.reset("go to the cup")
    with pytest.raises(DataError, match="at least one pixel"):
        onnx_policy.step(np.zeros(shape, dtype=np.uint8))
    with pytest.raises(DataError, match="at least one pixel"):
        preprocess_frame(np.zeros(shape, dtype=np.uint8))
    assert onnx_policy.step(_frame()).shape == (3,)  # the policy is still usable
    assert onnx_policy.step(_frame(1, 1)).shape == (3,)  # one pixel is enough


@pytest.mark.parametrize("instruction", [None, "", "   ", 42, b"go to the cup"])
def test_reset_needs_a_string(onnx_policy, instruction):
    with pytest.raises(DataError, match="needs the instruction as a non-empty string"):
        onnx_policy.reset(instruction)


def test_overlong_instruction_refused_at_reset(onnx_policy):
    limit = onnx_policy.config.max_text_len
    with pytest.raises(DataError, match=rf"tokens with the prompt template, more than the policy's text length of {limit}"):
        onnx_policy.reset("go " * 200)
    with pytest.raises(Exception, match="before Policy.reset"):
        onnx_policy.step(_frame())  # the refused reset did not start an episode
    onnx_policy.reset("go to the cup")
    assert onnx_policy.step(_frame()).shape == (3,)


def test_longest_accepted_instruction_runs(onnx_policy):
    """The limit is the model's: an instruction of exactly max_text_len tokens steps without an error."""
    limit = onnx_policy.config.max_text_len
    words = ["go"]
    while int(onnx_policy.prompt_feed(" ".join(words + ["go"]))["attention_mask"].sum()) <= limit:
        words.append("go")
    onnx_policy.reset(" ".join(words))
    assert int(onnx_policy._prompt["attention_mask"].sum()) <= limit
    assert np.isfinite(onnx_policy.step(_frame())).all()
    over = " ".join(words + ["go"])
    with pytest.raises(DataError, match="more than the policy's text length"):
        onnx_policy.reset(over)
