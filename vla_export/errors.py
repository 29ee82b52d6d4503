"""Typed, user-facing errors.

Every failure a user can cause (a bad file, a missing dependency, a mismatched artifact) is one of
these. The CLI prints the message as a single line and exits non-zero; tracebacks appear only with
``--debug``.
"""

from __future__ import annotations


class VlaExportError(Exception):
    """Base class: the message is complete and meant for the user."""

    exit_code = 2


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


class MissingDependencyError(VlaExportError, ImportError):
    """An optional dependency is not importable; the message names the install command."""
