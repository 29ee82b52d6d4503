"""Fitting (`init --fit`): reproducible from the seed, a policy that has learned the episodes, a training-format
checkpoint that records how it was made, and one-line refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import assert_one_error
from vla_export.data.episodes import ACTION_SCALE, policy_units, write_synthetic_episodes
from vla_export.data.fit import FitOptions, fit_policy, measure, read_episode_set
from vla_export.errors import ConfigError, DataError
from vla_export.models.checkpoint import read_checkpoint
from vla_export.models.config import get_preset
from vla_export.models.loader import PolicyFromCheckpoint
from vla_export.compare.tolerance import DISCRIMINATION, tolerance_for

HW = (48, 64)


@pytest.fixture(scope="module")
def few_episodes(tmp_path_factory):
    out = tmp_path_factory.mktemp("few")
    write_synthetic_episodes(out, 4, seed=0, frames=6, frame_hw=HW)
    return out


def test_same_seed_gives_bit_identical_weights_and_another_seed_does_not(few_episodes):
    cfg = get_preset("tiny")
    a = fit_policy(cfg, few_episodes, FitOptions(steps=4, seed=3))
    b = fit_policy(cfg, few_episodes, FitOptions(steps=4, seed=3))
    c = fit_policy(cfg, few_episodes, FitOptions(steps=4, seed=4))
    sa, sb, sc = a.policy.state_dict(), b.policy.state_dict(), c.policy.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa) and a.losses == b.losses
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.losses[0] != a.losses[-1]  # it did train


def test_fitted_tiny_meets_the_targets_on_held_out_episodes(fitted_tiny):
    """Held-out MAE at most half the untrained policy's; actions spread across windows by >= 10x the INT8 atol."""
    assert fitted_tiny.val.windows >= 40
    assert fitted_tiny.val.mae <= 0.5 * fitted_tiny.untrained_val.mae, (fitted_tiny.val, fitted_tiny.untrained_val)
    assert fitted_tiny.val.spread >= DISCRIMINATION * tolerance_for("int8").atol, fitted_tiny.val
    assert fitted_tiny.untrained_val.spread < DISCRIMINATION * tolerance_for("int8").atol  # why the fixtures exist


def test_fitted_checkpoint_is_in_the_training_format_and_records_how_it_was_made(fitted_tiny, fitted_tiny_ckpt, fit_episodes, held_out_episodes):
    ckpt = read_checkpoint(fitted_tiny_ckpt)  # weights_only
    meta = ckpt.metadata
    assert ckpt.layout and meta["epoch"] == fitted_tiny.epochs >= 1
    assert meta["val_mae"] == pytest.approx(fitted_tiny.val.mae)
    fit = meta["fit"]
    assert fit["action_scale"] == pytest.approx(1.15)
    assert fit["steps"] == 200 and fit["seed"] == 0 and fit["lr"] == 3e-3 and fit["val_mae_on"] == "held-out episodes"
    assert len(fit["episodes"]) == 32 and all(len(e["sha256"]) == 64 for e in fit["episodes"])
    assert fit["loss_curve"]["last"] < fit["loss_curve"]["first"] and fit["untrained_val"]["mae"] > fit["val"]["mae"]
    # loads strictly and computes what was measured
    loaded = PolicyFromCheckpoint(fitted_tiny_ckpt)().policy
    again = measure(loaded, read_episode_set(held_out_episodes, get_preset("tiny")))
    assert again.mae == pytest.approx(fitted_tiny.val.mae, abs=1e-5)


def test_policy_units_divide_by_the_key_and_clip():
    a = np.array([[1.15, -1.15, 0.0], [3.0, 0.0, -0.575]], np.float32)
    np.testing.assert_allclose(policy_units(a, 3), [[1, -1, 0], [1, 0, -0.5]], atol=1e-6)
    assert policy_units(a, 2).shape == (2, 2) and ACTION_SCALE == pytest.approx(1.15)
    with pytest.raises(DataError, match="fewer than the policy's 4"):
        policy_units(a, 4)


def test_bad_options_are_refused_before_any_work():
    for bad in (dict(steps=0), dict(lr=0.0), dict(lr=float("nan")), dict(batch=0)):
        with pytest.raises(ConfigError):
            FitOptions(**bad)


def test_init_fit_command_writes_a_fitted_checkpoint(cli, few_episodes, tmp_path):
    out = tmp_path / "fitted.pt"
    r = cli("init", "--preset", "tiny", "--fit", few_episodes, "--steps", "3", "--seed", "1", "-o", out)
    assert r.exit_code == 0, r
    assert "fitted tiny in" in r.stdout and "untrained" in r.stdout and "no held-out episodes were given" in r.stdout
    assert "fitting tiny: steps" in r.stderr  # progress
    meta = read_checkpoint(out).metadata
    assert meta["fit"]["steps"] == 3 and meta["fit"]["seed"] == 1 and meta["fit"]["val_mae_on"].startswith("the fit episodes")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--steps", "0"), "--steps must be at least 1"),
        (("--preset", "mobile-vla"), "is not fitted here"),
        (("--preset", "nope"), "unknown preset"),
    ],
)
def test_init_fit_refusals(cli, few_episodes, tmp_path, args, needle):
    r = cli("init", "--fit", few_episodes, *args, "-o", tmp_path / "x.pt")
    assert_one_error(r, 2, needle)
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize("option", [("--steps", "5"), ("--val", "somewhere")])
def test_fit_options_without_fit_are_refused(cli, tmp_path, option):
    assert_one_error(cli("init", *option, "-o", tmp_path / "x.pt"), 2, "only acts with --fit")


def test_bad_episodes_are_one_line(cli, tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.h5").write_text("not hdf5")
    assert_one_error(cli("init", "--fit", tmp_path / "bad", "-o", tmp_path / "x.pt"), 2, "x.h5")
    short = write_synthetic_episodes(tmp_path / "short", 1, frames=2, frame_hw=HW)[0]
    assert_one_error(cli("init", "--fit", short, "-o", tmp_path / "x.pt"), 2, "fewer than the window")
    assert_one_error(cli("init", "--fit", tmp_path / "missing", "-o", tmp_path / "x.pt"), 2, "no such episode")
