"""Saved references on disk: the ``.npz`` a workstation writes (``--save-reference``) and reads back, checked.

The format and its reader live below the tools so ``inspect`` and verify read it the same way; playing a reference
back as a runner (:class:`~vla_export.verify.reference.PlaybackRunner`) is verify's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from vla_export import schemas
from vla_export.errors import ArtifactError, ConfigError
from vla_export.fileio import atomic_write


SCHEMAS = {"parity": schemas.PARITY_REFERENCE, "replay": schemas.REPLAY_REFERENCE}


META_KEY = "__meta__"


@dataclass
class SavedReference:
    """A reference file's records and its metadata (``meta['schema']``, config, checkpoint, ...)."""

    path: Path
    meta: dict[str, Any]
    records: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def config(self) -> dict[str, Any]:
        return self.meta["config"]

    @property
    def checkpoint(self) -> dict[str, Any]:
        """The checkpoint the reference was made from (path, sha256), ``{}`` when not recorded."""
        return dict(self.meta.get("checkpoint") or {})



def save_reference(path: str | Path, kind: str, records: Sequence[tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]]],
                   meta: Mapping[str, Any]) -> Path:
    """Write ``records`` (feed, outputs) and ``meta`` (needs ``config``) to ``path`` (.npz), atomically."""
    if kind not in SCHEMAS:
        raise ConfigError(f"reference kind must be one of {sorted(SCHEMAS)}, got {kind!r}")
    if not records:
        raise ConfigError("nothing was recorded: the reference would be empty")
    if "config" not in meta:
        raise ConfigError("a reference needs the policy config")
    arrays: dict[str, np.ndarray] = {}
    for i, (feed, outputs) in enumerate(records):
        arrays |= {f"in/{i}/{k}": np.asarray(v) for k, v in feed.items()}
        arrays |= {f"out/{i}/{k}": np.asarray(v) for k, v in outputs.items()}
    full = {"schema": SCHEMAS[kind], "kind": kind, "samples": len(records),
            "inputs": list(records[0][0]), "outputs": list(records[0][1])} | dict(meta)
    arrays[META_KEY] = np.frombuffer(json.dumps(full, default=str).encode(), dtype=np.uint8)
    path = Path(path)
    if path.suffix != ".npz":
        raise ConfigError(f"{path}: a reference is an .npz file")

    def write(tmp: Path) -> None:
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        tmp.write_bytes(buf.getvalue())

    return atomic_write(path, write)


def load_reference(path: str | Path, kind: str) -> SavedReference:
    """Read a reference of ``kind`` ('parity' or 'replay'); one ArtifactError, saying what is wrong, for anything else.

    A ``.json`` parity reference is Polygraphy's outputs file written by ``parity --save-outputs`` (with the
    inputs file it names; see :mod:`vla_export.data.interop`)."""
    from vla_export.data.saved import read_npz

    path = Path(path)
    if kind not in SCHEMAS:
        raise ConfigError(f"reference kind must be one of {sorted(SCHEMAS)}, got {kind!r}")
    if path.suffix == ".json":
        if kind != "parity":
            raise ArtifactError(f"{path}: a {kind} reference is an .npz (`{kind} ... --save-reference REF.npz`); Polygraphy's "
                                "JSON files hold parity references")
        from vla_export.data.interop import load_polygraphy_reference

        loaded = load_polygraphy_reference(path)
        return SavedReference(loaded.path, loaded.meta, loaded.records)
    try:
        arrays, meta = read_npz(path, f"{kind}-reference", ArtifactError)
    except ArtifactError as exc:
        other = "replay" if kind == "parity" else "parity"
        if f"saved {other} reference, not" in str(exc):  # the historical wording, kept for scripts
            raise ArtifactError(f"{path}: a {other} reference, not a {kind} one") from None
        raise
    schema = meta.get("schema")
    if schema not in SCHEMAS.values():
        raise ArtifactError(f"{path}: unknown reference schema {schema!r} (this vla-export reads {sorted(SCHEMAS.values())})")
    problems = []
    samples = meta.get("samples")
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        problems.append(f"'samples' is {samples!r}, not a count")
    for key in ("inputs", "outputs"):
        names = meta.get(key)
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            problems.append(f"'{key}' is {names!r}, not a list of tensor names")
    if not isinstance(meta.get("config"), dict):
        problems.append("no policy 'config'")
    if not isinstance(meta.get("checkpoint", {}), dict):
        problems.append("its 'checkpoint' record is not a record")
    if problems:
        raise ArtifactError(f"{path}: a damaged {kind} reference, its record is incomplete: {'; '.join(problems)}")
    records = []
    for i in range(samples):
        try:
            feed = {k: arrays[f"in/{i}/{k}"] for k in meta["inputs"]}
            outputs = {k: arrays[f"out/{i}/{k}"] for k in meta["outputs"]}
        except KeyError as exc:
            raise ArtifactError(f"{path}: sample {i} is incomplete ({exc})") from None
        records.append((feed, outputs))
    return SavedReference(path, meta, records)
