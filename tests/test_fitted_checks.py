"""Every check in `make demo` can fail: against the fitted policy each is conclusive and passes, and each fails
on a broken artifact (its action output replaced by the reference's mean) that a random policy lets through."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.broken_artifacts import constant_actions
from vla_export.data.calibration import make_calibration_set
from vla_export.data.episodes import EpisodeSource, open_episode
from vla_export.export.quantize import convert_fp16, quantize_int8
from vla_export.export.weight_only import quantize_int8_weights
from vla_export.models.config import get_preset
from vla_export.models.loader import PolicyFromCheckpoint
from vla_export.verify.parity import parity_check

SAMPLES = 24


def _mean_action(ckpt, data) -> np.ndarray:
    """The reference's mean action over the parity windows: the best constant a broken artifact could return."""
    from vla_export.models.loader import PolicyFromCheckpoint
    import torch

    policy = PolicyFromCheckpoint(ckpt)().policy
    src = EpisodeSource(data, get_preset("tiny"))
    with torch.no_grad():
        acts = [policy(**{k: torch.from_numpy(v) for k, v in src.sample(i).items()}).numpy()[0] for i in range(SAMPLES)]
    return np.mean(acts, axis=0)


@pytest.fixture(scope="module")
def fitted_int8w(fitted_tiny_onnx, tmp_path_factory):
    return Path(quantize_int8_weights(fitted_tiny_onnx, tmp_path_factory.mktemp("fw") / "tiny.int8w.onnx").output)


@pytest.fixture(scope="module")
def random_int8(tiny_onnx, fit_episodes, tmp_path_factory):
    root = tmp_path_factory.mktemp("random-int8")
    calib = make_calibration_set(fit_episodes, get_preset("tiny"), root / "calib.npz", count=8)
    return Path(quantize_int8(tiny_onnx, calib, root / "tiny.int8.onnx").output)


@pytest.mark.parametrize("which", ["onnx", "int8", "int8w", "fp16"])
def test_fitted_parity_is_conclusive_and_passes_strict(which, fitted_tiny_ckpt, fitted_tiny_onnx, fitted_tiny_int8, fitted_int8w,
                                                        held_out_episodes, tmp_path):
    artifact = {"onnx": fitted_tiny_onnx, "int8": fitted_tiny_int8, "int8w": fitted_int8w}.get(which)
    if which == "fp16":
        artifact = convert_fp16(fitted_tiny_onnx, tmp_path / "tiny.fp16.onnx").output
    result = parity_check(PolicyFromCheckpoint(fitted_tiny_ckpt), artifact, samples=SAMPLES, data=held_out_episodes, strict=True)
    assert result.conclusive and result.passed, result.summary()


@pytest.mark.parametrize("which", ["onnx", "int8", "int8w"])
def test_a_constant_action_artifact_fails_against_the_fitted_policy(which, fitted_tiny_ckpt, fitted_tiny_onnx, fitted_tiny_int8,
                                                                     fitted_int8w, held_out_episodes, tmp_path):
    src = {"onnx": fitted_tiny_onnx, "int8": fitted_tiny_int8, "int8w": fitted_int8w}[which]
    broken = constant_actions(src, tmp_path / src.name, _mean_action(fitted_tiny_ckpt, held_out_episodes))
    for strict in (False, True):
        result = parity_check(PolicyFromCheckpoint(fitted_tiny_ckpt), broken, samples=SAMPLES, data=held_out_episodes, strict=strict)
        assert result.conclusive and not result.passed and not result.outputs["actions"].passed, result.summary()


def test_the_same_constant_int8_artifact_passes_against_a_random_policy_as_inconclusive(tiny_ckpt, random_int8, held_out_episodes, tmp_path):
    """Why the fixtures are fitted: with random weights the broken INT8 artifact's actions are within atol."""
    honest = parity_check(PolicyFromCheckpoint(tiny_ckpt), random_int8, samples=SAMPLES, data=held_out_episodes)
    assert not honest.conclusive and "actions" in honest.undiscriminating
    broken = constant_actions(random_int8, tmp_path / "tiny.int8.onnx", _mean_action(tiny_ckpt, held_out_episodes))
    lenient = parity_check(PolicyFromCheckpoint(tiny_ckpt), broken, samples=SAMPLES, data=held_out_episodes)
    assert lenient.outputs["actions"].passed and lenient.passed and not lenient.conclusive  # let through
    strict = parity_check(PolicyFromCheckpoint(tiny_ckpt), broken, samples=SAMPLES, data=held_out_episodes, strict=True)
    assert not strict.passed and strict.outputs["actions"].passed  # failed only as inconclusive


def test_cli_parity_strict_exit_codes(cli, fitted_tiny_ckpt, fitted_tiny_int8, tiny_ckpt, random_int8, held_out_episodes, tmp_path):
    ok = cli("parity", fitted_tiny_ckpt, fitted_tiny_int8, "--samples", SAMPLES, "--data", held_out_episodes, "--strict")
    assert ok.exit_code == 0 and "parity: pass" in ok.stdout, ok
    broken = constant_actions(fitted_tiny_int8, tmp_path / "c.int8.onnx", _mean_action(fitted_tiny_ckpt, held_out_episodes))
    bad = cli("parity", fitted_tiny_ckpt, broken, "--samples", SAMPLES, "--data", held_out_episodes, "--strict")
    assert bad.exit_code == 1, bad
    rnd = cli("parity", tiny_ckpt, random_int8, "--samples", SAMPLES, "--data", held_out_episodes, "--strict")
    assert rnd.exit_code == 1 and "inconclusive" in rnd.stdout + rnd.stderr, rnd


def test_replay_of_the_fitted_split_is_conclusive_and_a_constant_head_fails(cli, fitted_tiny_ckpt, fitted_tiny_split, held_out_episodes, tmp_path):
    import shutil

    episode = sorted(held_out_episodes.glob("*.h5"))[0]
    folder = tmp_path / "split"
    shutil.copytree(fitted_tiny_split.manifest_path.parent, folder)
    ok = cli("replay", fitted_tiny_ckpt, folder, episode, "--strict")
    assert ok.exit_code == 0 and "replay: pass" in ok.stdout, ok
    head = next(folder.glob("*.head.onnx"))
    mean = np.array(open_episode(episode).actions().mean(axis=0) / 1.15, dtype=np.float32)
    constant_actions(head, head.with_suffix(".tmp.onnx"), mean).replace(head)
    bad = cli("replay", fitted_tiny_ckpt, folder, episode, "--strict")
    assert bad.exit_code == 1 and "FAIL" in bad.stdout, bad


def test_evaluate_reads_the_fit_records_action_scale(fitted_tiny_ckpt, fitted_tiny_onnx, held_out_episodes, tmp_path):
    """`evaluate` of a fitted checkpoint compares with recorded / the fit record's action_scale, says so, and is
    conclusive on the held-out episodes; a constant-action ONNX fails its MAE gate there."""
    from vla_export.data.episodes import ACTION_SCALE
    from vla_export.models.loader import PolicyFromCheckpoint
    from vla_export.verify.evaluate import evaluate

    broken = constant_actions(fitted_tiny_onnx, tmp_path / "const.onnx", _mean_action(fitted_tiny_ckpt, held_out_episodes))
    result = evaluate(PolicyFromCheckpoint(fitted_tiny_ckpt), [fitted_tiny_onnx, broken], [held_out_episodes],
                      max_mae_increase=0.05, strict=True).to_dict()
    assert result["data"]["action_scale"] == ACTION_SCALE and result["data"]["action_scale_source"] == "the checkpoint's fit record"
    assert result["conclusive"]
    onnx, const = result["artifacts"][1:]
    assert onnx["passed"] and not const["passed"]
