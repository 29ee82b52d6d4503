"""An ONNX file's external data, checked before any runtime or loader reads it.

A missing or truncated ``NAME.onnx.data`` otherwise fails deep inside onnx or ONNX Runtime with a
native error. One helper for every reader (the ONNX Runtime runner, the exporter's checks, the
quantizer), so they all refuse it the same way, in one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from vla_export.errors import ArtifactError
from vla_export.lazy import lazy_import


def _model_proto(path: Path):
    onnx = lazy_import("onnx", purpose="reading ONNX models")
    if not path.is_file():
        raise ArtifactError(f"{path}: ONNX file not found")
    try:
        return onnx, onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError, OSError: not an ONNX protobuf
        raise ArtifactError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None


def external_data_extents(path: str | Path) -> dict[str, int]:
    """External data file name -> the bytes its tensors need (the largest offset + length); weights are not loaded."""
    onnx, model = _model_proto(Path(path))
    needed: dict[str, int] = {}
    for t in model.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location")
        if loc:
            end = int(info.get("offset", 0)) + int(info.get("length", 0))
            needed[loc] = max(needed.get(loc, 0), end)
    return needed


def external_data_files(path: str | Path) -> list[str]:
    """Locations of the external data files an ONNX file refers to."""
    return list(external_data_extents(path))


def require_external_data(path: str | Path, recorded: Mapping[str, int] | None = None) -> list[str]:
    """Refuse an ONNX file whose external data is missing or shorter than its tensors need.

    ``recorded``: file name -> bytes, as a manifest records them; a data file of another size is
    refused too (changed or truncated). Returns the external data file names.
    """
    path = Path(path)
    needed = external_data_extents(path)
    for loc, need in needed.items():
        f = path.parent / loc
        if not f.is_file():
            raise ArtifactError(f"{path}: its external data file {f} is missing; copy it beside the model")
        size = f.stat().st_size
        want = (recorded or {}).get(Path(loc).name)
        if want is not None and size != want:
            raise ArtifactError(f"{f}: {size} bytes, the manifest records {want} (truncated or changed): copy it again or re-export")
        if size < need:
            raise ArtifactError(f"{f}: {size} bytes, the model's weights need {need} (truncated): copy it again or re-export")
    return list(needed)
