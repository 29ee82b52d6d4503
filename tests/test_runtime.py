"""The streaming runtime: warm-up rule, ring buffer, parity with the full policy, errors, no-torch import."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.torchfree import NO_TORCH

from vla_export.data.preprocess import preprocess_frame
from vla_export.errors import DataError, RunnerError
from vla_export.runtime import FeatureRing, Policy, window_indices


@pytest.fixture(scope="module")
def frames(tiny_policy):
    from vla_export.data.source import SyntheticSource

    source = SyntheticSource(tiny_policy.cfg, seed=3)
    rng = np.random.default_rng(3)
    return np.stack([source.frame(rng) for _ in range(tiny_policy.cfg.window + 3)])


@pytest.fixture(scope="module")
def tokenizer(tiny_policy):
    from vla_export.data.tokenizer import tokenizer_for

    return tokenizer_for(tiny_policy.cfg)


@pytest.fixture
def streaming(tiny_policy, tokenizer):
    from vla_export.runtime.parts import torch_streaming_policy

    with torch_streaming_policy(tiny_policy, tokenizer=tokenizer) as policy:
        yield policy


def test_window_indices_pad_with_the_first_frame():
    assert window_indices(0, 4) == [0, 0, 0, 0]
    assert window_indices(1, 4) == [0, 0, 0, 1]
    assert window_indices(3, 4) == [0, 1, 2, 3]
    assert window_indices(6, 4) == [3, 4, 5, 6]
    assert window_indices(5, 1) == [5]


def test_ring_keeps_the_last_window_oldest_first():
    ring = FeatureRing(3)
    with pytest.raises(RunnerError, match="empty"):
        ring.array()
    for k in range(5):
        ring.push(np.full(2, k, dtype=np.float32))
        expected = np.array(window_indices(k, 3), dtype=np.float32)
        np.testing.assert_array_equal(ring.array()[:, 0], expected)
    ring.clear()
    ring.push(np.full(2, 9.0))
    np.testing.assert_array_equal(ring.array()[:, 1], [9, 9, 9])


def test_parts_share_and_partition_the_policy_parameters(tiny_policy):
    from vla_export.runtime.parts import split_policy

    backbone, head = split_policy(tiny_policy)
    keys_b, keys_h = set(backbone.state_dict()), set(head.state_dict())
    assert not keys_b & keys_h
    assert keys_b | keys_h == set(tiny_policy.state_dict())
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(backbone) + count(head) == count(tiny_policy)
    assert backbone.kosmos_model is tiny_policy.kosmos_model  # shared, not copied


def test_streaming_actions_equal_the_full_window_policy(streaming, tiny_policy, frames):
    """At every step, including warm-up, the split runtime gives the full policy's action on the padded window."""
    from vla_export.backends.torch_runner import TorchRunner

    cfg = tiny_policy.cfg
    prompt = streaming.prompt_feed("go around the leftmost edge to reach the cup")
    pixels = np.stack([preprocess_frame(f, cfg.image_size) for f in frames])
    streaming.reset("go around the leftmost edge to reach the cup")
    actions, refs = [], []
    with TorchRunner(tiny_policy) as full:
        for k, frame in enumerate(frames):
            actions.append(streaming.step(frame))
            window = pixels[window_indices(k, cfg.window)][None]
            refs.append(full.infer({"pixel_values": window, **prompt})["actions"][0])
    actions, refs = np.stack(actions), np.stack(refs)
    assert actions.shape == (len(frames), cfg.action_dim)
    np.testing.assert_allclose(actions, refs, atol=1e-5, rtol=0)
    # the comparison is not vacuous: actions move with the frames
    assert np.abs(np.diff(actions, axis=0)).max() > 1e-3


def test_reset_starts_a_fresh_window(streaming, frames):
    streaming.reset("go to the cup")
    first = streaming.step(frames[0])
    streaming.step(frames[1])
    streaming.reset("go to the cup")
    np.testing.assert_allclose(streaming.step(frames[0]), first, atol=1e-6)
    assert streaming.steps == 1


def test_latency_of_the_last_step_is_exposed(streaming, frames):
    streaming.reset("go to the cup")
    assert streaming.last_latency_ms is None
    streaming.step(frames[0])
    t = streaming.last_timing
    assert t is not None and t.total_ms > 0 and t.backbone_ms > 0 and t.head_ms > 0
    assert t.total_ms >= t.backbone_ms + t.head_ms
    assert streaming.last_latency_ms == t.total_ms
    assert set(t.to_dict()) == {"preprocess_ms", "backbone_ms", "head_ms", "total_ms"}


def test_step_before_reset_is_a_clear_error(streaming, frames):
    with pytest.raises(RunnerError, match=r"before Policy.reset"):
        streaming.step(frames[0])


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((72, 128, 3), dtype=np.float32), "uint8"),
        (np.zeros((72, 128), dtype=np.uint8), r"\[H, W, 3\]"),
        (np.zeros((3, 72, 128), dtype=np.uint8), r"\[H, W, 3\]"),
        ([[0, 1, 2]], "numpy array"),
    ],
)
def test_a_bad_frame_is_a_clear_error(streaming, bad, message):
    streaming.reset("go to the cup")
    with pytest.raises(DataError, match=message):
        streaming.step(bad)


def test_runners_with_the_wrong_inputs_are_refused(tiny_policy, tokenizer):
    from vla_export.runtime.parts import torch_part_runners

    backbone, head = torch_part_runners(tiny_policy)
    swapped = Policy(head, backbone, tokenizer=tokenizer, window=4, image_size=32)
    with pytest.raises(RunnerError, match="a backbone part takes"):
        with swapped:
            pass
    assert not backbone.is_active and not head.is_active  # a failed activation releases both


def test_runtime_runs_without_torch():
    """Policy, preprocessing and the tokenizer import and step with torch unimportable (numpy runners)."""
    code = NO_TORCH + textwrap.dedent(
        """
        import numpy as np
        from vla_export.backends.base import Runner
        from vla_export.data.tokenizer import tokenizer_for
        from vla_export.models.config import get_preset
        from vla_export.runtime import BACKBONE_INPUTS, HEAD_INPUTS, Policy

        class Mean(Runner):
            name, input_names, output_names = "mean", BACKBONE_INPUTS, ("feature",)
            def _activate(self): pass
            def _execute(self, feed): return {"feature": feed["pixel_values"].mean(axis=(2, 3))}

        class Last(Runner):
            name, input_names, output_names = "last", HEAD_INPUTS, ("actions",)
            def _activate(self): pass
            def _execute(self, feed): return {"actions": feed["features"][:, 0] - feed["features"][:, -1]}

        cfg = get_preset("tiny")
        with Policy(Mean(), Last(), tokenizer=tokenizer_for(cfg), window=3, image_size=cfg.image_size) as policy:
            policy.reset("go to the cup")
            frame = np.zeros((48, 64, 3), np.uint8)
            first = policy.step(frame)
            second = policy.step(frame + 200)
        assert np.all(first == 0) and np.all(second < 0), (first, second)
        assert "torch" not in sys.modules
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_ros2_example_is_valid_python_over_the_public_api():
    """The ROS 2 node is not run here (no rclpy); it must at least compile and use the runtime's API."""
    from pathlib import Path

    source = (Path(__file__).parents[1] / "examples" / "ros2_policy_node.py").read_text()
    compile(source, "ros2_policy_node.py", "exec")
    for used in ("Policy.from_artifacts", ".reset(", ".step(", "last_timing"):
        assert used in source
