"""Manifests: a JSON record written beside every artifact (``NAME.onnx.json``, ``NAME.engine.json``).

Generic on purpose: the ONNX exporter and the TensorRT builder both record where an artifact came
from, what it holds and how it was verified, and both read it back with the same checks (right kind,
listed files present with the recorded sizes).
"""

from __future__ import annotations

import json
import platform
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from vla_export.errors import ArtifactError
from vla_export.fileio import atomic_write

SCHEMA = "vla-export/manifest/1"
DEFAULT_PACKAGES = ("vla-export", "torch", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript", "onnxslim", "numpy")


def manifest_path(artifact: str | Path) -> Path:
    """``engines/x.onnx`` -> ``engines/x.onnx.json``."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def versions(packages: Iterable[str] = DEFAULT_PACKAGES) -> dict[str, str]:
    """Installed versions of ``packages`` (absent ones are left out) and the Python version.

    Read from package metadata, so nothing heavy is imported.
    """
    found = {"python": platform.python_version()}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def file_entry(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    return {"name": path.name, "bytes": path.stat().st_size}


def build_manifest(kind: str, artifact: str | Path, files: Iterable[str | Path], **fields: Any) -> dict[str, Any]:
    """A manifest dict: schema, kind, the artifact's file name, its files with sizes, then ``fields``."""
    return {"schema": SCHEMA, "kind": kind, "artifact": Path(artifact).name, "files": [file_entry(f) for f in files], **fields}


def write_manifest(artifact: str | Path, manifest: Mapping[str, Any], *, path: str | Path | None = None) -> Path:
    """Write ``manifest`` atomically to ``path`` (default: :func:`manifest_path` of ``artifact``)."""
    text = json.dumps(manifest, indent=2, default=str) + "\n"
    return atomic_write(path or manifest_path(artifact), lambda tmp: tmp.write_text(text))


def read_manifest(artifact: str | Path, *, kind: str | None = None, required: bool = True) -> dict[str, Any] | None:
    """The manifest beside ``artifact``; ``None`` when absent and not ``required``.

    Raises :class:`ArtifactError` for a missing (when required), unreadable or foreign manifest, or one
    of another ``kind``.
    """
    path = manifest_path(artifact)
    if not path.exists():
        if required:
            raise ArtifactError(f"{path}: manifest not found (was {Path(artifact).name} written by vla-export?)")
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: not a readable manifest ({exc})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ArtifactError(f"{path}: not a vla-export manifest (schema {data.get('schema') if isinstance(data, dict) else None!r}, expected {SCHEMA!r})")
    if kind is not None and data.get("kind") != kind:
        raise ArtifactError(f"{path}: manifest of kind {data.get('kind')!r}, expected {kind!r}")
    return data


def validate_files(artifact: str | Path, manifest: Mapping[str, Any]) -> None:
    """Every file the manifest lists exists beside ``artifact`` with the recorded size."""
    folder = Path(artifact).parent
    for entry in manifest.get("files", []):
        f = folder / entry["name"]
        if not f.exists():
            raise ArtifactError(f"{f}: listed in {manifest_path(artifact).name} but missing")
        if f.stat().st_size != entry["bytes"]:
            raise ArtifactError(f"{f}: {f.stat().st_size} bytes, the manifest records {entry['bytes']} (changed or truncated)")
