"""Argument checks every command makes before its heavy imports and its work.

A missing input or an output location that cannot be written is found in milliseconds, not after
torch has been imported and a checkpoint loaded (seconds) or a model exported (minutes).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from vla_export.artifacts.kinds import is_kind, strip_kind_suffix
from vla_export.errors import ArtifactError, CheckpointError, ConfigError, DataError, VlaExportError
from vla_export.fileio import check_output_path

_ERRORS: dict[str, type[VlaExportError]] = {"checkpoint": CheckpointError, "config": ConfigError, "data": DataError}


def input_file(path: Path | None, what: str = "file") -> Path | None:
    """``path`` must be an existing file (``None``, an option not given, passes)."""
    if path is None:
        return None
    error = _ERRORS.get(what, ArtifactError)
    if not path.exists():
        raise error(f"{path}: {what} not found")
    if path.is_dir():
        raise error(f"{path}: is a folder, not a {what} file")
    if what == "ONNX" and is_kind(path, "split"):
        from vla_export.artifacts.manifest import split_paths

        parts = split_paths(path.with_name(strip_kind_suffix(path, ("split",))))
        raise error(f"{path}: the record of a split export, not an ONNX model: give one part at a time "
                    f"({parts['backbone']} or {parts['head']})")
    return path


def input_paths(paths: Iterable[Path] | None, what: str = "data") -> None:
    """Each path must exist (a file or a folder of files)."""
    for path in paths or ():
        if not path.exists():
            raise _ERRORS.get(what, ArtifactError)(f"{path}: {what} not found")


def input_dir(path: Path | None, what: str) -> Path | None:
    if path is not None and not path.is_dir():
        raise ConfigError(f"{path}: {what} folder not found")
    return path


def output_file(*paths: Path | None) -> None:
    """Each given output file location can be written (see :func:`vla_export.fileio.check_output_path`),
    and no two of one command's outputs name the same file (one would silently replace the other)."""
    seen: dict[str, Path] = {}
    for path in paths:
        if path is None:
            continue
        key = "-" if str(path) == "-" else str(Path(path).expanduser().resolve())
        if key in seen:
            where = "standard output (-)" if key == "-" else f"{path}"
            raise ConfigError(f"{where}: named for two outputs of this command (e.g. --json and --junit); give each its own file")
        seen[key] = path
        if str(path) != "-":  # "-": standard output
            check_output_path(path)


def artifact_output(artifact: Path | None, *others: Path | None) -> None:
    """:func:`output_file` for an artifact and the command's other outputs, its manifest (``NAME.json``
    beside it, written with it) counted as one of them: ``-o X.onnx --json X.onnx.json`` is refused."""
    output_file(artifact, *others)
    if artifact is None:
        return
    from vla_export.artifacts.manifest import manifest_path

    beside = manifest_path(Path(artifact)).expanduser().resolve()
    for other in others:
        if other is not None and str(other) != "-" and Path(other).expanduser().resolve() == beside:
            raise ConfigError(f"{other}: is where {artifact}'s manifest is written; give the report another file")


def output_dir(path: Path) -> None:
    check_output_path(path, folder=True)


def checkpoint_or_preset(artifact: str, prefix: str = "preset:") -> None:
    """A vla-bench artifact: ``preset:NAME``, or a file that exists."""
    if not artifact.startswith(prefix):
        input_file(Path(artifact), "artifact")


def at_least(minimum: int, **values: int | None) -> None:
    """Each given count is at least ``minimum`` (``None``, not given, passes): 0 never silently means "default".

    Keyword names are the options, ``text_len`` -> ``--text-len``.
    """
    for name, value in values.items():
        if value is not None and value < minimum:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least {minimum}, got {value}")


def frame_size(text: str, flag: str) -> tuple[int, int]:
    """``HxW`` (e.g. 480x640) as two positive ints; one ConfigError naming ``flag`` otherwise."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ConfigError(f"{flag} takes HEIGHTxWIDTH with both at least 1 (e.g. 480x640), got {text!r}")
    return int(parts[0]), int(parts[1])
