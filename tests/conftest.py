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
    from vla_export.models.loader import load_policy

    return export_split(load_policy(tiny_ckpt), tmp_path_factory.mktemp("split") / "tiny")


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

