"""Typed, user-facing errors.

Every failure a user can cause (a bad file, a missing dependency, a mismatched artifact) is one of
these. The CLI prints the message as a single line and exits non-zero; tracebacks appear only with
``--debug``.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """The exit codes of every command of both entry points (documented in the README).

    Scripts and CI pipelines branch on these, so they never change meaning.
    """

    OK = 0
    #: The command ran and a check it makes failed: parity, replay, an accuracy budget, a result
    #: below the physical floor (not a valid measurement of the full model).
    CHECK_FAILED = 1
    #: Usage or input the command cannot accept: a bad option, a missing, truncated, foreign or
    #: mismatched file, an output location that cannot be written.
    BAD_INPUT = 2
    #: The environment cannot run the command: a missing optional dependency, no GPU, a runtime
    #: that refuses an engine built elsewhere.
    ENVIRONMENT = 3
    #: An internal error (a bug in vla-export): the message asks for ``--debug``.
    INTERNAL = 4
    #: Interrupted (Ctrl-C), as shells report SIGINT.
    INTERRUPTED = 130
    #: Terminated (SIGTERM: ``timeout``, ``docker stop``, a CI runner's cancel), as shells report it.
    TERMINATED = 143


class VlaExportError(Exception):
    """Base class: the message is complete and meant for the user."""

    exit_code: int = ExitCode.BAD_INPUT


class CheckpointError(VlaExportError):
    """A checkpoint is missing, truncated, foreign or unsafe to unpickle."""


class ArchitectureError(VlaExportError):
    """Weights do not match a known policy architecture (or the given config)."""


class StrictLoadError(ArchitectureError):
    """Missing, unexpected or mis-shaped keys in a strict load."""


class ConfigError(VlaExportError):
    """A config file or preset name is invalid."""


class ArtifactError(VlaExportError):
    """An exported artifact (ONNX, engine, manifest) is missing, broken or mismatched."""


class DataError(VlaExportError):
    """Input data (episodes, calibration sets, frames) is missing or malformed."""


class RunnerError(VlaExportError):
    """A backend runner was used wrongly (inactive, wrong inputs)."""


class EnvironmentProblem(VlaExportError):
    """This machine cannot run the command (no GPU, an engine built for another runtime)."""

    exit_code = ExitCode.ENVIRONMENT


class MissingDependencyError(EnvironmentProblem, ImportError):
    """An optional dependency is not importable; the message names the install command."""


class OutputError(VlaExportError):
    """An output location cannot be written: a read-only folder, no space left, a folder where a file is wanted."""
