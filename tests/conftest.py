"""Shared fixtures: tiny checkpoints made once per session, and a CLI runner."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_policy():
    from vla_export.models.config import get_preset
    from vla_export.models.loader import init_policy

    return init_policy(get_preset("tiny"), seed=0)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, tiny_policy) -> Path:
    """A tiny policy in the Mobile VLA training format (the same file `vla-export init` writes)."""
    from vla_export.models.loader import save_training_checkpoint

    return save_training_checkpoint(tiny_policy, tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="session")
def tiny_kosmos_ckpt(tmp_path_factory) -> Path:
    from vla_export.models.config import get_preset
    from vla_export.models.loader import init_policy, save_training_checkpoint

    policy = init_policy(get_preset("tiny-kosmos"), seed=1)
    return save_training_checkpoint(policy, tmp_path_factory.mktemp("ckpt") / "tiny-kosmos.pt")


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory, tiny_ckpt) -> Path:
    """`tiny_ckpt` exported once per session (dynamo, opset 18, output `actions`), verified, with its manifest.

    Read-only: copy it before modifying it.
    """
    from vla_export.export.onnx import OnnxExportOptions, OnnxFromPolicy
    from vla_export.models.loader import PolicyFromCheckpoint

    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    OnnxFromPolicy(PolicyFromCheckpoint(tiny_ckpt), path, OnnxExportOptions(parity_samples=1))()
    return path


@pytest.fixture(scope="session")
def tiny_split(tmp_path_factory, tiny_ckpt):
    """`tiny_ckpt` split-exported once per session: the SplitExportResult (parts, manifests, NAME.split.json).

    Read-only: copy the files before modifying them.
    """
    from vla_export.export.split import export_split
    from vla_export.models.loader import PolicyFromCheckpoint

    return export_split(PolicyFromCheckpoint(tiny_ckpt)(), tmp_path_factory.mktemp("split") / "tiny")


# --- fitted policies: checks whose reference varies enough to fail on a wrong answer ----------------------
# A random tiny policy hardly looks at its inputs (its actions spread by ~0.01 across windows), so an INT8
# check (atol 0.05) against it cannot tell a constant action from a right one. Use these fixtures wherever
# a check must be able to fail: parity (INT8, weight-only, FP16), replay, streaming/serving equality, budgets.

FIT_HW = (180, 320)


@pytest.fixture(scope="session")
def fit_episodes(tmp_path_factory) -> Path:
    """32 synthetic episodes (seed 0, 18 frames, 180x320): what the fitted fixtures are trained and calibrated on."""
    from vla_export.data.episodes import write_synthetic_episodes

    out = tmp_path_factory.mktemp("fit-episodes")
    write_synthetic_episodes(out, 32, seed=0, frames=18, frame_hw=FIT_HW)
    return out


@pytest.fixture(scope="session")
def held_out_episodes(tmp_path_factory) -> Path:
    """4 synthetic episodes of another seed (1): never trained or calibrated on; pass as parity's ``data``."""
    from vla_export.data.episodes import write_synthetic_episodes

    out = tmp_path_factory.mktemp("held-out")
    write_synthetic_episodes(out, 4, seed=1, frames=18, frame_hw=FIT_HW)
    return out


@pytest.fixture(scope="session")
def fitted_tiny(fit_episodes, held_out_episodes):
    """The tiny policy fitted once per session (`init --fit` defaults: 200 steps, seed 0; ~45 s on 2 cores): a FitResult."""
    from vla_export.data.fit import FitOptions, fit_policy
    from vla_export.models.config import get_preset

    return fit_policy(get_preset("tiny"), fit_episodes, FitOptions(), val_episodes=held_out_episodes)


@pytest.fixture(scope="session")
def fitted_tiny_ckpt(tmp_path_factory, fitted_tiny) -> Path:
    """`fitted_tiny` in the Mobile VLA training format, as `vla-export init --fit` writes it (val_mae, fit record)."""
    from vla_export.models.loader import save_training_checkpoint

    return save_training_checkpoint(fitted_tiny.policy, tmp_path_factory.mktemp("fitted") / "tiny.pt", epoch=fitted_tiny.epochs,
                                    val_mae=fitted_tiny.val_mae, extra={"fit": fitted_tiny.record()})


@pytest.fixture(scope="session")
def fitted_tiny_onnx(tmp_path_factory, fitted_tiny_ckpt) -> Path:
    """`fitted_tiny_ckpt` exported once per session with the per-frame ``features`` output. Read-only."""
    from vla_export.export.onnx import OnnxExportOptions, OnnxFromPolicy
    from vla_export.models.loader import PolicyFromCheckpoint

    path = tmp_path_factory.mktemp("fitted-onnx") / "tiny.onnx"
    OnnxFromPolicy(PolicyFromCheckpoint(fitted_tiny_ckpt), path, OnnxExportOptions(parity_samples=1, debug_outputs=True))()
    return path


@pytest.fixture(scope="session")
def fitted_tiny_calib(tmp_path_factory, fit_episodes):
    """A calibration set of 32 windows of the fit episodes (as `make demo`; with 8, W8A8 of the fitted tiny misses atol)."""
    from vla_export.data.calibration import make_calibration_set
    from vla_export.models.config import get_preset

    return make_calibration_set(fit_episodes, get_preset("tiny"), tmp_path_factory.mktemp("fitted-calib") / "tiny.npz", count=32)


@pytest.fixture(scope="session")
def fitted_tiny_int8(tmp_path_factory, fitted_tiny_onnx, fitted_tiny_calib) -> Path:
    """`fitted_tiny_onnx` quantized to INT8 Q/DQ (W8A8) with `fitted_tiny_calib`. Read-only."""
    from vla_export.export.quantize import quantize_int8

    return Path(quantize_int8(fitted_tiny_onnx, fitted_tiny_calib, tmp_path_factory.mktemp("fitted-int8") / "tiny.int8.onnx").output)


@pytest.fixture(scope="session")
def fitted_tiny_split(tmp_path_factory, fitted_tiny_ckpt):
    """`fitted_tiny_ckpt` split-exported (backbone + head) once per session: the SplitExportResult. Read-only."""
    from vla_export.export.split import export_split
    from vla_export.models.loader import PolicyFromCheckpoint

    return export_split(PolicyFromCheckpoint(fitted_tiny_ckpt)(), tmp_path_factory.mktemp("fitted-split") / "tiny")


class CliResult:
    def __init__(self, code: int, out: str, err: str):
        self.exit_code, self.stdout, self.stderr = code, out, err

    def __repr__(self) -> str:
        return f"CliResult(exit={self.exit_code}, stdout={self.stdout[-2000:]!r}, stderr={self.stderr[-2000:]!r})"


@pytest.fixture
def cli(capsys):
    """Run `vla-export ARGS` (or `vla-bench` with app='bench') in-process, the way the console script does."""
    from vla_export.cli import common

    def run(*args: str, app: str = "main") -> CliResult:
        if app == "bench":
            from vla_export.cli.bench import app as typer_app
        else:
            from vla_export.cli.main import app as typer_app
        capsys.readouterr()
        # Rich consoles were created at import; point them at the captured streams.
        import sys

        common.console.file = sys.stdout
        common.err_console.file = sys.stderr
        try:
            code = common.run_app(typer_app, [str(a) for a in args])
        finally:
            # Back to "whatever sys.stdout/stderr is": the captured streams close after this test, and a
            # later session fixture that logs (through the CLI's log handler) must not write to them.
            common.console.file = common.err_console.file = None
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def error_lines(stderr: str) -> list[str]:
    """The ``error:`` lines of a command's standard error (informational lines, such as the loaded
    model's summary and finished steps, may come before them)."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def assert_one_error(r, code: int, *needles: str) -> str:
    """The command failed with ``code`` and ended in exactly one ``error:`` line naming ``needles``, no traceback."""
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.exit_code == code, r
    assert len(error_lines(r.stderr)) == 1 and lines and lines[-1].startswith("error: "), r
    assert all(n in lines[-1] for n in needles), r
    assert "Traceback" not in r.stderr + r.stdout, r
    return lines[-1]

