"""Manifests: a JSON record written beside every artifact (``NAME.onnx.json``, ``NAME.engine.json``).

Generic on purpose: the ONNX exporter and the TensorRT builder both record where an artifact came
from, what it holds and how it was verified, and both read it back with the same checks (right kind,
listed files present with the recorded sizes). Read back, a manifest is a typed :class:`Manifest`
(and ``NAME.split.json`` a :class:`SplitRecord`): the fields commands act on are typed and checked
when the file is read, everything else rides along in ``extra``, and writing gives the same JSON.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from vla_export.artifacts.kinds import is_kind
from vla_export import schemas
from vla_export.errors import ArtifactError, ConfigError
from vla_export.fileio import atomic_write
from vla_export.models.config import PolicyConfig
from vla_export.system import versions  # noqa: F401 - manifests record them

SCHEMA = schemas.MANIFEST


@dataclass(frozen=True)
class FileEntry:
    """One file a manifest lists: its name (beside the artifact) and size in bytes."""

    name: str
    bytes: int
    sha256: str | None = None  # not written by vla-export today; kept when a file has it

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "bytes": self.bytes} | ({"sha256": self.sha256} if self.sha256 is not None else {})


def _problem(where: Path, what: str) -> ArtifactError:
    return ArtifactError(f"{where}: {what}")


def _check_schema(data: Any, where: Path) -> dict[str, Any]:
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise _problem(where, f"not a vla-export manifest (schema {data.get('schema') if isinstance(data, dict) else None!r}, expected {SCHEMA!r})")
    if not isinstance(data.get("kind"), str):
        raise _problem(where, f"field 'kind' must be a string, got {data.get('kind')!r}")
    return data


def _typed(data: Mapping[str, Any], where: Path, name: str, kind: type, what: str) -> Any:
    """``data[name]`` when absent, null (``None``) or a ``kind`` (a bool is no int); else one error naming the file and field."""
    value = data.get(name)
    if value is None or (isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)):
        return value
    raise _problem(where, f"field {name!r} must be {what}, got {type(value).__name__} {value!r}"[:300])


def _config(data: Mapping[str, Any], where: Path) -> PolicyConfig | None:
    raw = _typed(data, where, "config", dict, "an object (the policy config)")
    if raw is None:
        return None
    try:
        return PolicyConfig.from_dict(raw)
    except ConfigError as exc:
        raise _problem(where, f"field 'config': {exc}") from None


def _files(data: Mapping[str, Any], where: Path) -> tuple[FileEntry, ...]:
    raw = _typed(data, where, "files", list, "a list of {name, bytes}") or []
    out = []
    for entry in raw:
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get("bytes"), int)):
            raise _problem(where, f"field 'files' must list {{name, bytes}} objects, got {entry!r}"[:300])
        out.append(FileEntry(entry["name"], entry["bytes"], entry.get("sha256")))
    return tuple(out)


def _plain(value: Any) -> Any:
    """A value as JSON holds it (tuples become lists), for comparisons and equal round trips."""
    return json.loads(json.dumps(value, default=str))


@dataclass(frozen=True)
class Manifest:
    """A manifest, typed: what commands act on as fields, the rest in ``extra`` (kept, never dropped).

    ``path`` is the artifact it describes (not stored in the file). A field that is ``None`` was not
    recorded, or recorded as null: :meth:`to_dict` writes the keys the file had, in its order.
    """

    path: Path
    kind: str
    artifact: str
    files: tuple[FileEntry, ...] = ()
    config: PolicyConfig | None = None
    precision: str | None = None
    window: int | None = None
    io: Mapping[str, Any] | None = None
    part: str | None = None
    source: Mapping[str, Any] | None = None
    quantization: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    keys: tuple[str, ...] = ()  # the file's keys in order (null fields stay null, absent ones absent)

    TYPED = ("kind", "artifact", "files", "config", "precision", "window", "io", "part", "source", "quantization")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], artifact: str | Path, *, where: str | Path | None = None) -> Manifest:
        """Check and type ``data`` (a manifest's JSON) for ``artifact``; errors name ``where`` (the manifest file)."""
        where = Path(where) if where is not None else manifest_path(artifact)
        data = _check_schema(_plain(data), where)
        return cls(
            path=Path(artifact),
            kind=data["kind"],
            artifact=_typed(data, where, "artifact", str, "a file name") or Path(artifact).name,
            files=_files(data, where),
            config=_config(data, where),
            precision=_typed(data, where, "precision", str, "a string (fp32, fp16, int8)"),
            window=_typed(data, where, "window", int, "an integer"),
            io=_typed(data, where, "io", dict, "an object ({inputs, outputs})"),
            part=_typed(data, where, "part", str, "a string (backbone, head)"),
            source=_typed(data, where, "source", dict, "an object"),
            quantization=_typed(data, where, "quantization", dict, "an object"),
            extra=MappingProxyType({k: v for k, v in data.items() if k not in cls.TYPED and k != "schema"}),
            keys=tuple(k for k in data if k != "schema"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The manifest's JSON: schema first, then the keys in the order read (new ones after)."""
        typed = {name: getattr(self, name) for name in self.TYPED}
        typed["files"] = [f.to_dict() for f in self.files]
        typed["config"] = _plain(self.config.to_dict()) if self.config is not None else None
        order = list(self.keys) + [k for k in (*self.TYPED, *self.extra) if k not in self.keys]
        out: dict[str, Any] = {"schema": SCHEMA}
        for key in order:
            if key in typed:
                if typed[key] is not None or key in self.keys or key in ("kind", "artifact", "files"):
                    out[key] = dict(typed[key]) if isinstance(typed[key], MappingProxyType) else typed[key]
            elif key in self.extra:
                out[key] = self.extra[key]
        return out

    def replace(self, **changes: Any) -> Manifest:
        """A copy with fields changed; a key of no typed field goes to (or replaces one in) ``extra``."""
        extra = {k: v for k, v in changes.items() if k not in self.TYPED and k not in ("path", "extra", "keys")}
        typed = {k: v for k, v in changes.items() if k not in extra}
        if extra:
            typed["extra"] = MappingProxyType({**self.extra, **extra})
        return dataclasses.replace(self, **typed)

    @property
    def manifest_path(self) -> Path:
        return manifest_path(self.path)

    def require_config(self) -> PolicyConfig:
        """The recorded policy config; an :class:`ArtifactError` naming the file when there is none."""
        if self.config is None:
            raise _problem(self.manifest_path, "the manifest records no policy 'config' (was it written by `vla-export onnx`?)")
        return self.config


def manifest_path(artifact: str | Path) -> Path:
    """``engines/x.onnx`` -> ``engines/x.onnx.json``."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def file_entry(path: str | Path) -> FileEntry:
    path = Path(path)
    return FileEntry(path.name, path.stat().st_size)


def build_manifest(kind: str, artifact: str | Path, files: Iterable[str | Path], **fields: Any) -> Manifest:
    """A manifest: kind, the artifact's file name, its files with sizes, then ``fields`` (in this order
    in the file). ``config`` may be given as a :class:`PolicyConfig` or its dict; either is checked."""
    artifact = Path(artifact)
    if isinstance(fields.get("config"), PolicyConfig):
        fields["config"] = fields["config"].to_dict()
    data = {"schema": SCHEMA, "kind": kind, "artifact": artifact.name, "files": [file_entry(f).to_dict() for f in files], **fields}
    return Manifest.from_dict(data, artifact)


def write_manifest(artifact: str | Path, manifest: Manifest | SplitRecord, *, path: str | Path | None = None) -> Path:
    """Write ``manifest`` atomically to ``path`` (default: :func:`manifest_path` of ``artifact``)."""
    text = json.dumps(manifest.to_dict(), indent=2, default=str) + "\n"
    return atomic_write(path or manifest_path(artifact), lambda tmp: tmp.write_text(text))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: not a readable manifest ({exc})") from None


def read_manifest(artifact: str | Path, *, kind: str | None = None, required: bool = True) -> Manifest | None:
    """The manifest beside ``artifact``; ``None`` when absent and not ``required``.

    Raises :class:`ArtifactError` (one line naming the file and the field) for a missing (when
    required), unreadable, foreign or damaged manifest, or one of another ``kind``.
    """
    path = manifest_path(artifact)
    if not path.exists():
        if required:
            raise ArtifactError(f"{path}: manifest not found (was {Path(artifact).name} written by vla-export?)")
        return None
    data = _check_schema(_read_json(path), path)
    if kind is not None and data.get("kind") != kind:
        raise ArtifactError(f"{path}: manifest of kind {data.get('kind')!r}, expected {kind!r}")
    return Manifest.from_dict(data, artifact, where=path)


def validate_files(artifact: str | Path, manifest: Manifest) -> None:
    """Every file the manifest lists exists beside ``artifact`` with the recorded size."""
    folder = Path(artifact).parent
    for entry in manifest.files:
        f = folder / entry.name
        if not f.exists():
            raise ArtifactError(f"{f}: listed in {manifest_path(artifact).name} but missing")
        if f.stat().st_size != entry.bytes:
            raise ArtifactError(f"{f}: {f.stat().st_size} bytes, the manifest records {entry.bytes} (changed or truncated)")


# --- split records ------------------------------------------------------------------------------
# ``NAME.split.json`` ties the backbone and head of a split export together. It lives here, below
# both the exporter that writes it and the runtime that reads it.

SPLIT_KIND = "split"
PARTS = ("backbone", "head")


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


@dataclass(frozen=True)
class SplitRecord:
    """``NAME.split.json``, typed: the policy config, window and the parts as paths beside the record.

    ``parts`` are resolved against the record's folder; ``part_fields`` keeps what else each part's entry
    records (its parameter count), ``extra`` the record's other keys.
    """

    path: Path
    config: PolicyConfig
    window: int
    parts: Mapping[str, Path]
    precision: str | None = None
    part_fields: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    keys: tuple[str, ...] = ()

    TYPED = ("kind", "parts", "window", "config", "precision")

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def stem(self) -> str:
        """``out/tiny.split.json`` -> ``tiny``."""
        return self.path.name[: -len(".split.json")]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: str | Path) -> SplitRecord:
        """Check and type ``data`` (the JSON of the split record at ``path``)."""
        path = Path(path)
        data = _check_schema(_plain(data), path)
        if data["kind"] != SPLIT_KIND:
            raise _problem(path, f"manifest of kind {data['kind']!r}, expected {SPLIT_KIND!r}")
        for name in ("config", "window", "parts"):
            if data.get(name) is None:
                raise _problem(path, f"the split record has no {name!r} (rewrite it with `vla-export onnx CKPT --split`)")
        config = _config(data, path)
        window = _typed(data, path, "window", int, "an integer")
        raw = _typed(data, path, "parts", dict, "an object {backbone, head}")
        parts: dict[str, Path] = {}
        fields: dict[str, Mapping[str, Any]] = {}
        for part in PARTS:
            entry = raw.get(part)
            if not (isinstance(entry, dict) and isinstance(entry.get("path"), str)):
                raise _problem(path, f"field 'parts' must give the {part} part's path, got {entry!r}"[:300])
            parts[part] = path.parent / entry["path"]
            fields[part] = MappingProxyType({k: v for k, v in entry.items() if k != "path"})
        for part in raw:
            if part not in PARTS:
                raise _problem(path, f"field 'parts' names an unknown part {part!r} (expected {', '.join(PARTS)})")
        return cls(
            path=path, config=config, window=window, parts=MappingProxyType(parts),
            precision=_typed(data, path, "precision", str, "a string (fp32, fp16, int8)"),
            part_fields=MappingProxyType(fields),
            extra=MappingProxyType({k: v for k, v in data.items() if k not in cls.TYPED and k != "schema"}),
            keys=tuple(k for k in data if k != "schema"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The record's JSON; part paths relative to the record's folder, as written."""
        typed: dict[str, Any] = {
            "kind": SPLIT_KIND,
            "parts": {part: {"path": _relative(p, self.folder), **self.part_fields.get(part, {})} for part, p in self.parts.items()},
            "window": self.window,
            "config": _plain(self.config.to_dict()),
            "precision": self.precision,
        }
        order = list(self.keys) + [k for k in (*self.TYPED, *self.extra) if k not in self.keys]
        out: dict[str, Any] = {"schema": SCHEMA}
        for key in order:
            if key in typed:
                if typed[key] is not None or key in self.keys:
                    out[key] = typed[key]
            elif key in self.extra:
                out[key] = self.extra[key]
        return out


def _relative(path: Path, folder: Path) -> str:
    """``path`` as written in a record in ``folder``: relative to it (the bare name for a file beside it)."""
    return os.path.relpath(path, folder) if Path(path).is_absolute() == Path(folder).is_absolute() else str(path)


def read_split(path: str | Path) -> SplitRecord:
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
    return SplitRecord.from_dict(_read_json(path), path)


def recorded_checkpoint(artifact: str | Path, manifest: Manifest | None = None) -> Path | None:
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
    source = manifest.source if manifest is not None else None
    if not isinstance(source, Mapping) or not isinstance(source.get("checkpoint"), str):
        return None
    given = Path(source["checkpoint"])
    for candidate in (given, Path(artifact).parent / given.name):
        if candidate.is_file() and (source.get("bytes") is None or candidate.stat().st_size == source["bytes"]):
            return candidate
    return None
