"""The ``.npz`` files vla-export writes: calibration sets and saved references, told apart by their record.

Both hold arrays plus a JSON record under ``__meta__`` (a calibration set as a string, a reference as
UTF-8 bytes). :func:`read_npz` is the one reader: a truncated or foreign file, a record that is not
JSON, or a file of the other kind is one error saying what the file is and what was expected.
NumPy only.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from vla_export import schemas
from vla_export.errors import VlaExportError

META_KEY = "__meta__"
CALIBRATION_FORMAT = schemas.CALIBRATION
#: kind -> (what it is called, how it is made)
KINDS = {
    "calibration": ("a calibration set", "`vla-export calib`"),
    "parity-reference": ("a saved parity reference", "`vla-export parity CKPT ARTIFACT --save-reference REF.npz`"),
    "replay-reference": ("a saved replay reference", "`vla-export replay CKPT SPLIT EPISODE --save-reference REF.npz`"),
}


def npz_kind(meta: dict[str, Any] | None) -> str | None:
    """``calibration``, ``parity-reference``, ``replay-reference``, or None for a record of neither."""
    if not isinstance(meta, dict):
        return None
    if meta.get("format") == CALIBRATION_FORMAT:
        return "calibration"
    if meta.get("kind") in ("parity", "replay") and "-reference/" in str(meta.get("schema", "")):
        return f"{meta['kind']}-reference"
    return None


def describe_kind(kind: str | None) -> str:
    return KINDS[kind][0] if kind in KINDS else "not a file vla-export writes"


def peek_kind(path: str | Path) -> str | None:
    """The kind the record of ``path`` names, reading only the record; None when it cannot be read (then
    :func:`read_npz` says why)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            raw = data[META_KEY]
        return npz_kind(json.loads(raw.tobytes().decode("utf-8") if raw.dtype == np.uint8 else str(raw)))
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError, TypeError, UnicodeDecodeError):
        return None


def read_npz(path: str | Path, want: str, error: type[VlaExportError]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and the record of ``path``, which must be of kind ``want`` (a key of :data:`KINDS`).

    ``error`` (the caller's error type) for a missing, truncated or foreign file, a record that cannot be
    read, and a file of another kind (the message says which kind it is, and how the wanted one is made).
    """
    path = Path(path)
    what, made_by = KINDS[want]
    if not path.exists():
        raise error(f"{path}: {what[2:]} not found (made with {made_by})")
    if path.is_dir():
        raise error(f"{path}: is a folder, not {what} (.npz)")
    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise ValueError("a single array, not an .npz archive")
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise error(f"{path}: not readable as {what} ({exc}); the file may be truncated or of another kind") from None
    if META_KEY not in arrays:
        raise error(f"{path}: not a vla-export {what[2:]} (an .npz without its {META_KEY} record); {what[2:]} is made with {made_by}")
    raw = arrays.pop(META_KEY)
    try:
        text = raw.tobytes().decode("utf-8") if raw.dtype == np.uint8 else str(raw)
        meta = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise error(f"{path}: its {META_KEY} record is not readable JSON ({exc}); the file is damaged") from None
    kind = npz_kind(meta)
    if kind != want:
        raise error(f"{path}: {describe_kind(kind)}, not {what} ({what[2:]} is made with {made_by})")
    return arrays, meta
