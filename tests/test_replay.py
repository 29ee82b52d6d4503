"""Episode replay: the ONNX parts streamed step by step against the full-window PyTorch policy."""

from __future__ import annotations

import json

import pytest

from vla_export.errors import ArtifactError, RunnerError


@pytest.fixture(scope="module")
def episode(tmp_path_factory):
    from vla_export.data.episodes import write_synthetic_episodes

    (path,) = write_synthetic_episodes(tmp_path_factory.mktemp("episodes"), count=1, frames=7, frame_hw=(96, 160))
    return path


@pytest.fixture(scope="module")
def other_ckpt(tmp_path_factory):
    """Same architecture as tiny_ckpt, other weights: the artifacts were not exported from it."""
    from vla_export.models.config import get_preset
    from vla_export.models.loader import init_policy, save_training_checkpoint

    return save_training_checkpoint(init_policy(get_preset("tiny"), seed=5), tmp_path_factory.mktemp("other") / "other.pt")


def test_replay_passes_at_every_step(fitted_tiny_split, fitted_tiny_ckpt, episode):
    from vla_export.models.loader import PolicyFromCheckpoint
    from vla_export.runtime.replay import replay_check

    result = replay_check(PolicyFromCheckpoint(fitted_tiny_ckpt), fitted_tiny_split.manifest_path, episode)
    result.strict = True
    assert result.conclusive and result.spread > 0.1  # the fitted policy's actions follow the episode
    assert result.passed and result.atol == 1e-4  # fp32 parts: the fp32 parity tolerance
    assert [s.index for s in result.steps] == list(range(7))
    assert result.steps[0].window == [0, 0, 0, 0] and result.steps[5].window == [2, 3, 4, 5]
    assert result.max_abs_err < 1e-5
    assert result.compared_dims == 3 and result.mae_vs_recorded is not None
    assert all(s.latency_ms >= s.model_ms > 0 for s in result.steps)
    assert result.episode["instruction"] == "go around the leftmost edge to reach the cup"


def test_strict_replay_fails_when_the_reference_barely_varies():
    from vla_export.runtime.replay import ReplayResult, ReplayStep

    def steps(values):
        return [ReplayStep(k, [k], [v, 0.0], [v, 0.0], 0.0, [], 1.0, 1.0) for k, v in enumerate(values)]

    flat = ReplayResult({}, 1e-3, {}, {}, steps([0.5, 0.5001, 0.4999]))
    assert flat.passed and not flat.conclusive  # lenient: passes with a note
    flat.strict = True
    assert not flat.passed and flat.to_dict()["conclusive"] is False
    varied = ReplayResult({}, 1e-3, {}, {}, steps([-0.9, 0.0, 0.9]), strict=True)
    assert varied.conclusive and varied.passed


def test_cli_replay_reports_every_step(cli, tiny_split, tiny_ckpt, episode, tmp_path):
    out = tmp_path / "replay.json"
    result = cli("replay", tiny_ckpt, tiny_split.manifest_path.parent, episode, "--json", out)
    assert result.exit_code == 0, result
    assert "replay: pass" in result.stdout and "MAE vs the recorded actions" in result.stdout
    report = json.loads(out.read_text())
    assert report["passed"] and len(report["steps"]) == 7
    assert {"action", "reference", "max_abs_err", "recorded", "window"} <= set(report["steps"][0])


def test_cli_replay_fails_above_tolerance(cli, tiny_split, tiny_ckpt, episode):
    result = cli("replay", tiny_ckpt, tiny_split.manifest_path, episode, "--atol", "1e-12")
    assert result.exit_code == 1
    assert "FAIL at steps" in result.stdout


def test_replay_against_other_weights_fails(cli, tiny_split, other_ckpt, episode):
    """Artifacts from one checkpoint replayed against another: every step disagrees, exit 1."""
    result = cli("replay", other_ckpt, tiny_split.manifest_path, episode)
    assert result.exit_code == 1
    assert "FAIL at steps [0, 1, 2, 3, 4, 5, 6]" in result.stdout


def test_replay_of_another_architecture_is_refused(tiny_split, tiny_kosmos_ckpt, episode):
    from vla_export.models.loader import PolicyFromCheckpoint
    from vla_export.runtime.replay import replay_check

    with pytest.raises(ArtifactError, match="exported from a policy with"):
        replay_check(PolicyFromCheckpoint(tiny_kosmos_ckpt), tiny_split.manifest_path, episode)


def test_a_whole_policy_onnx_is_not_a_backbone(tiny_split, tiny_ckpt, tiny_onnx, episode):
    from vla_export.models.loader import PolicyFromCheckpoint
    from vla_export.runtime.replay import replay_check

    with pytest.raises(RunnerError, match="exported with --split"):
        replay_check(PolicyFromCheckpoint(tiny_ckpt), tiny_split.manifest_path, episode, backbone=tiny_onnx)


def test_policy_from_artifacts_runs_without_torch(tiny_split, episode):
    """The robot's view: ONNX parts, the shared preprocessing and the built-in tokenizer, torch unimportable."""
    import subprocess
    import sys

    from tests.torchfree import NO_TORCH

    code = NO_TORCH + f"""
from vla_export.data.episodes import open_episode
from vla_export.runtime import Policy

episode = open_episode({str(episode)!r})
with Policy.from_artifacts({str(tiny_split.manifest_path)!r}) as policy:
    policy.reset(episode.instruction)
    actions = [policy.step(frame) for frame in episode.frames()]
assert len(actions) == 7 and actions[0].shape == (3,) and policy.last_latency_ms > 0
assert "torch" not in sys.modules
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
