"""Files other tools read: Polygraphy's JSON inputs and outputs, trtexec's ``--loadInputs`` binaries.

* Inputs for ``polygraphy run --load-inputs``: a JSON list of feed dicts (one per iteration), written
  with Polygraphy's own serializer (``polygraphy.json``: each array an ``np.save`` payload in base64).
* Outputs for ``polygraphy run --load-outputs``: Polygraphy's ``RunResults`` (one runner, one
  ``IterationResult`` per feed), serialized by ``polygraphy.json`` too. The file also carries
  vla-export's record (policy config, checkpoint sha256, the inputs file's name and sha256) under the
  top-level key ``vla_export``: Polygraphy's decoder reads only ``lst`` there and ignores it. That key is
  why the outputs go through ``polygraphy.json.to_json`` and are written here (atomically) rather than
  with ``RunResults.save``, which has no place for it. An inputs file (a list) has no such place: the
  outputs file names it.
* trtexec: one raw little-endian C-order ``.bin`` per input of one sample, and the ``--loadInputs`` and
  ``--shapes`` arguments that load them (trtexec reads a binding's bytes as they are: no header).

Polygraphy is imported only when one of these files is written or read (:data:`POLYGRAPHY_INSTALL`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vla_export import schemas
from vla_export.errors import ArtifactError, ConfigError
from vla_export.fileio import atomic_write, sha256_file
from vla_export.lazy import lazy_import

POLYGRAPHY_INSTALL = "`pip install polygraphy` (NVIDIA's, pure Python; also in `pip install -e '.[trt]'`)"
RECORD_KEY = "vla_export"
SCHEMA = schemas.POLYGRAPHY_REFERENCE
#: The runner name the reference's outputs are saved under (Polygraphy prints it beside its own runners').
RUNNER_NAME = "vla-export-reference"

Records = Sequence[tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]]]


def _modules(purpose: str) -> tuple[Any, Any, Any]:
    """(polygraphy.json, polygraphy.comparator.struct, G_LOGGER), or MissingDependencyError naming the install."""
    pjson = lazy_import("polygraphy.json", purpose=purpose, install=POLYGRAPHY_INSTALL)
    struct = lazy_import("polygraphy.comparator.struct", purpose=purpose, install=POLYGRAPHY_INSTALL)
    logger = lazy_import("polygraphy.logger", purpose=purpose, install=POLYGRAPHY_INSTALL)
    return pjson, struct, logger.G_LOGGER


@contextlib.contextmanager
def _quiet(g_logger: Any) -> Iterator[None]:
    """Polygraphy's logger prints to standard output ("[I] Saving ..."), which may carry ``--json -``."""
    with g_logger.verbosity(g_logger.CRITICAL + 1):
        yield


def check_json_path(path: Path | None, flag: str) -> None:
    """``--save-inputs``/``--save-outputs`` write .json files (Polygraphy's format); refused before any work."""
    if path is not None and path.suffix != ".json":
        raise ConfigError(f"{path}: {flag} writes Polygraphy's JSON format, a .json file (e.g. {path.with_suffix('.json').name})")


def save_polygraphy_inputs(path: str | Path, feeds: Sequence[Mapping[str, np.ndarray]]) -> Path:
    """Write ``feeds`` as Polygraphy's input data (``polygraphy run --load-inputs PATH``), atomically."""
    pjson, _, g_logger = _modules("writing Polygraphy's input data (--save-inputs)")
    if not feeds:
        raise ConfigError("nothing was recorded: the inputs file would be empty")
    with _quiet(g_logger):
        text = pjson.to_json([{k: np.ascontiguousarray(v) for k, v in feed.items()} for feed in feeds])
    return atomic_write(path, lambda tmp: tmp.write_text(text + "\n"))


def save_polygraphy_outputs(path: str | Path, records: Records, meta: Mapping[str, Any], *, inputs_path: str | Path) -> Path:
    """Write the recorded outputs as Polygraphy's ``RunResults`` (``polygraphy run --load-outputs PATH``) with
    vla-export's record (``meta``, which needs ``config``; the inputs file's name and sha256 added)."""
    pjson, struct, g_logger = _modules("writing Polygraphy's outputs (--save-outputs)")
    if not records:
        raise ConfigError("nothing was recorded: the outputs file would be empty")
    if "config" not in meta:
        raise ConfigError("a saved reference needs the policy 'config' in its record")
    path, inputs_path = Path(path), Path(inputs_path)
    iterations = [struct.IterationResult({k: np.ascontiguousarray(v) for k, v in out.items()}, runner_name=RUNNER_NAME)
                  for _, out in records]
    results = struct.RunResults([(RUNNER_NAME, iterations)])
    with _quiet(g_logger):
        data = json.loads(pjson.to_json(results))
    try:
        inputs_name = str(inputs_path.resolve().relative_to(path.resolve().parent))
    except ValueError:  # not under the outputs' folder: the absolute path
        inputs_name = str(inputs_path.resolve())
    data[RECORD_KEY] = {
        "schema": SCHEMA, "kind": "parity", "samples": len(records),
        "inputs": list(records[0][0]), "outputs": list(records[0][1]),
        "inputs_file": inputs_name, "inputs_sha256": sha256_file(inputs_path), **meta,
    }
    text = json.dumps(data, indent=1, default=str) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


@dataclass
class PolygraphyReference:
    """What :func:`load_polygraphy_reference` read: records (feed, outputs) and vla-export's record."""

    path: Path
    meta: dict[str, Any]
    records: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]


def _load(pjson: Any, g_logger: Any, path: Path, what: str) -> Any:
    """Decode ``path`` with Polygraphy's decoder; one ArtifactError for a file it cannot read."""
    exceptions = lazy_import("polygraphy.exception", purpose="reading Polygraphy's files", install=POLYGRAPHY_INSTALL)
    try:
        with _quiet(g_logger):
            return pjson.from_json(path.read_text())
    except (ValueError, KeyError, TypeError, AttributeError, exceptions.PolygraphyException) as exc:
        raise ArtifactError(f"{path}: not readable as Polygraphy {what} ({type(exc).__name__}: {exc}); the file is damaged "
                            "or of another kind") from None


def load_polygraphy_reference(path: str | Path) -> PolygraphyReference:
    """A Polygraphy outputs file written by ``parity --save-outputs`` and the inputs file it names.

    Refused with one :class:`ArtifactError`: an inputs file given instead, a file Polygraphy itself wrote
    (it records no policy config to check the artifact against), a record of another schema, an inputs
    file that is missing or changed since (sha256), and outputs that do not pair with the inputs.
    """
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: saved reference not found (made with `vla-export parity CKPT ARTIFACT --save-inputs "
                            "IN.json --save-outputs OUT.json`)")
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: not readable JSON ({exc}); the file may be truncated or of another kind") from None
    if isinstance(raw, list):
        raise ArtifactError(f"{path}: Polygraphy input data (a list of feeds), not outputs: pass the outputs file "
                            "(--save-outputs), which names its inputs file")
    if not isinstance(raw, dict) or raw.get("polygraphy_class") != "RunResults" or not isinstance(raw.get("lst"), list):
        raise ArtifactError(f"{path}: not a Polygraphy outputs file (RunResults) nor a vla-export reference")
    record = raw.get(RECORD_KEY)
    if not isinstance(record, dict):
        raise ArtifactError(f"{path}: Polygraphy outputs without vla-export's record: they name no policy config to check "
                            "the artifact against; record them with `vla-export parity CKPT ARTIFACT --save-inputs IN.json "
                            "--save-outputs OUT.json`")
    if record.get("schema") != SCHEMA:
        raise ArtifactError(f"{path}: record schema {record.get('schema')!r}, this vla-export reads {SCHEMA!r}")
    problems = [f"no {k!r}" for k in ("config", "inputs_file", "inputs_sha256", "inputs", "outputs") if k not in record]
    if problems:
        raise ArtifactError(f"{path}: a damaged reference, its record is incomplete: {'; '.join(problems)}")
    inputs_path = Path(record["inputs_file"])
    inputs_path = inputs_path if inputs_path.is_absolute() else path.parent / inputs_path
    if not inputs_path.is_file():
        raise ArtifactError(f"{path}: its inputs file {inputs_path} is missing (copy it beside the outputs file)")
    if sha256_file(inputs_path) != record["inputs_sha256"]:
        raise ArtifactError(f"{inputs_path}: not the inputs file {path.name} was recorded on (sha256 differs)")
    pjson, _, g_logger = _modules("reading Polygraphy's files")
    feeds = _load(pjson, g_logger, inputs_path, "input data")
    results = _load(pjson, g_logger, path, "outputs")
    runs = list(results.items()) if hasattr(results, "items") else []
    if len(runs) != 1:
        raise ArtifactError(f"{path}: holds {len(runs)} runners' outputs, a reference holds one")
    _, iterations = runs[0]
    if not isinstance(feeds, list) or len(feeds) != len(iterations):
        raise ArtifactError(f"{path}: {len(iterations)} outputs for {len(feeds) if isinstance(feeds, list) else '?'} inputs in "
                            f"{inputs_path.name}: they do not pair")
    records = []
    for i, (feed, it) in enumerate(zip(feeds, iterations)):
        feed = {k: np.asarray(feed[k]) for k in record["inputs"] if k in feed}
        outputs = {k: np.asarray(it[k]) for k in record["outputs"] if k in it}
        if len(feed) != len(record["inputs"]) or len(outputs) != len(record["outputs"]):
            raise ArtifactError(f"{path}: sample {i} is incomplete (inputs {sorted(feed)}, outputs {sorted(outputs)})")
        records.append((feed, outputs))
    meta = dict(record) | {"inputs_file": str(inputs_path)}
    return PolygraphyReference(path, meta, records)


# --- trtexec ---------------------------------------------------------------------------------------------

def _quote(name: str) -> str:
    return f"'{name}'"


def check_trtexec_dir(folder: str | Path) -> Path:
    """``--save-trtexec-inputs`` writes a new folder (or fills an empty one); refused before any work otherwise."""
    from vla_export.fileio import check_output_path

    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ConfigError(f"{folder}: exists and is not an empty folder; --save-trtexec-inputs writes a new folder")
    check_output_path(folder, folder=True)
    return folder


def save_trtexec_inputs(folder: str | Path, feed: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """One sample's inputs as raw ``NAME.bin`` files in ``folder`` (published as a whole), and the trtexec
    arguments that load them: ``load_inputs`` (``--loadInputs='name':file,...``) and ``shapes``
    (``--shapes='name':1x4x3x224x224,...``, needed by an engine with dynamic axes)."""
    from vla_export.fileio import staging_dir

    folder = check_trtexec_dir(folder)
    files = {}
    with staging_dir(folder) as tmp:
        for name, array in feed.items():
            array = np.ascontiguousarray(array)
            if array.dtype.byteorder == ">":
                array = array.astype(array.dtype.newbyteorder("<"))
            safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
            (tmp / f"{safe}.bin").write_bytes(array.tobytes(order="C"))
            files[name] = {"file": f"{safe}.bin", "shape": list(array.shape), "dtype": str(array.dtype), "bytes": int(array.nbytes)}
        (tmp / "inputs.json").write_text(json.dumps({"schema": schemas.TRTEXEC_INPUTS, "inputs": files}, indent=1) + "\n")
        if folder.exists():
            folder.rmdir()
        tmp.rename(folder)
    load = ",".join(f"{_quote(n)}:{folder / f['file']}" for n, f in files.items())
    shapes = ",".join(f"{_quote(n)}:{'x'.join(map(str, f['shape']))}" for n, f in files.items())
    return {"folder": str(folder), "inputs": files, "load_inputs": f"--loadInputs={load}", "shapes": f"--shapes={shapes}"}
