"""Manifests: a JSON record written beside every artifact (``NAME.onnx.json``, ``NAME.engine.json``).

Generic on purpose: the ONNX exporter and the TensorRT builder both record where an artifact came
from, what it holds and how it was verified, and both read it back with the same checks (right kind,
listed files present with the recorded sizes).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from vla_export.artifacts.kinds import is_kind
from vla_export.errors import ArtifactError
from vla_export.fileio import atomic_write
from vla_export.system import versions  # noqa: F401 - manifests record them

SCHEMA = "vla-export/manifest/1"


def manifest_path(artifact: str | Path) -> Path:
    """``engines/x.onnx`` -> ``engines/x.onnx.json``."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


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


# --- split records ------------------------------------------------------------------------------
# ``NAME.split.json`` ties the backbone and head of a split export together. It lives here, below
# both the exporter that writes it and the runtime that reads it.

SPLIT_KIND = "split"


def split_paths(prefix: str | Path) -> dict[str, Path]:
    """``out/tiny`` (or ``out/tiny.onnx``) -> the part files and ``out/tiny.split.json``."""
    prefix = Path(prefix)
    if is_kind(prefix, "onnx"):
        prefix = prefix.with_suffix("")
    return {
        "backbone": prefix.with_name(prefix.name + ".backbone.onnx"),
        "head": prefix.with_name(prefix.name + ".head.onnx"),
        "split": prefix.with_name(prefix.name + ".split.json"),
    }


def read_split(path: str | Path) -> dict[str, Any]:
    """The split record at ``path`` (``NAME.split.json``, the prefix ``NAME``, or a folder holding one)."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.split.json"))
        if len(found) != 1:
            raise ArtifactError(f"{path}: expected one *.split.json in the folder, found {len(found)} (run `vla-export onnx --split`)")
        path = found[0]
    elif not is_kind(path, "split"):
        path = split_paths(path)["split"]
    if not path.exists():
        raise ArtifactError(f"{path}: split export not found (write one with `vla-export onnx CKPT --split -o NAME.onnx`)")
    data = read_manifest(path.with_name(path.name[: -len(".json")]), kind=SPLIT_KIND)
    data["_path"] = str(path)
    return data


def recorded_checkpoint(artifact: str | Path, manifest: Mapping[str, Any] | None = None) -> Path | None:
    """The checkpoint ``artifact`` was exported from, as its manifest records it, where that file is found here.

    The manifest stores the path as given at export time (relative to that working folder): it is
    looked up as written, then beside the artifact, and accepted only with the recorded size.
    ``None`` when nothing is recorded or no such file is found.
    """
    if manifest is None:
        try:
            manifest = read_manifest(artifact, required=False)
        except ArtifactError:
            return None
    source = (manifest or {}).get("source")
    if not isinstance(source, Mapping) or not isinstance(source.get("checkpoint"), str):
        return None
    given = Path(source["checkpoint"])
    for candidate in (given, Path(artifact).parent / given.name):
        if candidate.is_file() and (source.get("bytes") is None or candidate.stat().st_size == source["bytes"]):
            return candidate
    return None
