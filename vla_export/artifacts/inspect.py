"""``vla-export inspect`` for every artifact kind: what a file holds, as a plain dict with a schema.

One entry point, :func:`inspect_artifact`, picks the kind with :func:`vla_export.artifacts.detect_kind`
and reports on a checkpoint (via :mod:`vla_export.models.inspect`, the only kind that needs torch),
an ONNX model, a TensorRT engine, a split record, a calibration set or an episode file. Nothing
here imports torch for the other kinds (a Jetson has none), and ONNX files are read without their
weights (``load_external_data=False``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vla_export import schemas
from vla_export.artifacts.graph import (
    component_of_onnx_name,
    has_module_scopes,
    node_module_scopes,
    QDQ_OPS,
    QUANTIZABLE_OPS,
)
from vla_export.artifacts.kinds import detect_kind
from vla_export.artifacts.manifest import manifest_path, read_manifest, read_split
from vla_export.choices import Precision
from vla_export.errors import ArtifactError
from vla_export.fileio import sha256_file
from vla_export.lazy import lazy_import
from vla_export.models.components import COMPONENTS, OTHER

SCHEMA = schemas.INSPECT
LIST_LIMIT = 50  # node names listed in full up to this many; the counts are always complete


def inspect_artifact(path: str | Path, **checkpoint_options: Any) -> dict[str, Any]:
    """Report on ``path`` by its kind; ``checkpoint_options`` go to the checkpoint inspector only."""
    path = Path(path)
    kind = detect_kind(path)
    if kind == "checkpoint":
        from vla_export.models.inspect import inspect_checkpoint  # torch: only for checkpoints

        body = inspect_checkpoint(path, **checkpoint_options)
    else:
        if not path.is_file():
            raise ArtifactError(f"{path}: not found")
        if path.stat().st_size == 0:
            raise ArtifactError(f"{path}: the file is empty (0 bytes), not a valid {kind} file; an interrupted build or copy? make it again")
        from vla_export.data.saved import peek_kind

        if kind == "calibration" and peek_kind(path) in ("parity-reference", "replay-reference"):
            kind = "reference"  # the same suffix: told apart by the file's own record
        body = _INSPECTORS[kind](path)
    return {"schema": SCHEMA, "kind": kind, **body}


def inspect_reference(path: str | Path) -> dict[str, Any]:
    """A saved reference: its kind, samples, inputs and outputs (shapes), config, checkpoint and how it was made."""
    from vla_export.data.saved import peek_kind
    from vla_export.artifacts.reference import load_reference

    kind = (peek_kind(path) or "parity-reference").split("-")[0]  # "parity" or "replay"
    ref = load_reference(path, kind)
    feed, outputs = ref.records[0]
    return {
        "path": str(path),
        "file_size": Path(path).stat().st_size,
        "reference_kind": kind,
        "reference_schema": ref.meta.get("schema"),
        "samples": len(ref.records),
        "inputs": {k: _array_summary(v) for k, v in feed.items()},
        "outputs": {k: _array_summary(v) for k, v in outputs.items()},
        "config": ref.config.get("name"),
        "checkpoint": ref.checkpoint,
        "source": ref.meta.get("source"),
        "episode": ref.meta.get("episode"),
        "made_with": ref.meta.get("made_with"),
        "versions": ref.meta.get("versions"),
    }


# --- ONNX ------------------------------------------------------------------------------------------

def _describe_values(onnx, values) -> list[dict[str, Any]]:
    out = []
    for v in values:
        tt = v.type.tensor_type
        shape = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in tt.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name if tt.elem_type else "unknown"
        out.append({"name": v.name, "shape": shape, "dtype": dtype})
    return out


def _tensor_bytes(onnx, t) -> int:
    """Bytes of an initializer without loading it: the external ``length`` when recorded, else numel x itemsize."""
    for e in t.external_data:
        if e.key == "length":
            return int(e.value)
    numel = int(np.prod(t.dims)) if len(t.dims) else 1
    return numel * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize




def _external_files(onnx, model, folder: Path) -> list[dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for t in model.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        loc = next((e.value for e in t.external_data if e.key == "location"), None)
        if loc and loc not in found:
            f = folder / loc
            found[loc] = {"name": loc, "exists": f.exists(), "bytes": f.stat().st_size if f.exists() else None, "tensors": 0}
        if loc:
            found[loc]["tensors"] += 1
    return list(found.values())


def _precision(model) -> dict[str, Any]:
    """fp32 / fp16 / int8 (Q/DQ): which compute nodes take quantized inputs and which are kept in higher precision."""
    nodes = list(model.graph.node)
    producer = {out: n for n in nodes for out in n.output}
    ops = [n.op_type for n in nodes]
    qdq = {op: ops.count(op) for op in QDQ_OPS}
    quantized, kept = [], []
    for n in nodes:
        if n.op_type not in QUANTIZABLE_OPS:
            continue
        fed_by_dq = any(i in producer and producer[i].op_type == "DequantizeLinear" for i in n.input)
        (quantized if fed_by_dq else kept).append(n.name)
    fp16_inits = sum(1 for t in model.graph.initializer if t.data_type == 10)  # TensorProto.FLOAT16
    casts = ops.count("Cast")
    if qdq["QuantizeLinear"] or qdq["DequantizeLinear"]:
        label = "int8 (Q/DQ)"
    elif fp16_inits:
        label = Precision.FP16
    else:
        label = Precision.FP32
    return {
        "label": label,
        "qdq_nodes": qdq,
        "quantizable_nodes": len(quantized) + len(kept),
        "quantized_nodes": len(quantized),
        "kept_higher_precision_nodes": len(kept) if qdq["DequantizeLinear"] else 0,
        "kept_higher_precision": kept[:LIST_LIMIT] if qdq["DequantizeLinear"] else [],
        "fp16_initializers": fp16_inits,
        "cast_nodes": casts,
    }


def _manifest_check(path: Path, manifest: Mapping[str, Any] | None) -> dict[str, Any]:
    """Does the file (and every file the manifest lists) still match the manifest: sizes, and sha256 where recorded."""
    if manifest is None:
        return {"manifest": None, "matches": None, "problems": ["no manifest beside the file"]}
    problems = []
    for entry in manifest.get("files", []):
        f = path.parent / entry["name"]
        if not f.exists():
            problems.append(f"{entry['name']}: listed but missing")
        elif f.stat().st_size != entry.get("bytes"):
            problems.append(f"{entry['name']}: {f.stat().st_size} bytes, the manifest records {entry.get('bytes')}")
        elif entry.get("sha256") and sha256_file(f) != entry["sha256"]:
            problems.append(f"{entry['name']}: sha256 differs from the manifest's")
    return {"manifest": str(manifest_path(path)), "matches": not problems, "problems": problems}


def _manifest_dict(path: Path) -> dict[str, Any] | None:
    """The manifest beside ``path`` as its JSON (checked by :func:`read_manifest`), ``None`` without one."""
    manifest = read_manifest(path, required=False)
    return manifest.to_dict() if manifest is not None else None


def _manifest_summary(manifest: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if manifest is None:
        return None
    keys = ("kind", "precision", "opset", "exporter", "window", "part", "tensorrt", "tensorrt_flavor", "compute_capabilities", "gpu", "strongly_typed", "flags",
            "builder", "build_seconds", "export_seconds", "source", "quantized_from", "onnx")
    summary = {k: manifest[k] for k in keys if k in manifest}
    if isinstance(manifest.get("config"), dict):
        summary["config"] = manifest["config"].get("name")
    params = manifest.get("parameters")
    if isinstance(params, dict):
        summary["parameters"] = {k: params[k] for k in ("total_parameters", "coverage") if k in params}
    if isinstance(manifest.get("quantization"), dict):
        q = manifest["quantization"]
        summary["quantization"] = {k: q[k] for k in ("precision", "kept_fp32", "options") if k in q}
    parity = manifest.get("parity")
    if isinstance(parity, dict) and parity:
        summary["parity"] = {k: v.get("passed") if isinstance(v, dict) else v for k, v in parity.items()}
    return summary


def inspect_onnx(path: str | Path) -> dict[str, Any]:
    """I/O, opset, op counts, precision, parameter bytes per component, external data, and the manifest check."""
    onnx = lazy_import("onnx", purpose="inspecting ONNX models")
    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others for a foreign or truncated file
        raise ArtifactError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    if not model.graph.node or not model.graph.output:
        raise ArtifactError(f"{path}: not a readable ONNX model (no graph: a foreign or truncated file)")
    ops: dict[str, int] = {}
    for n in model.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    params = {c: 0 for c in (*COMPONENTS, OTHER)}
    nbytes = dict(params)
    dtypes: dict[str, int] = {}
    by_scope = _components_by_consumer(model)
    for t in model.graph.initializer:
        comp = component_of_onnx_name(t.name)
        if comp == OTHER:
            comp = by_scope.get(t.name, OTHER)
        numel = int(np.prod(t.dims)) if len(t.dims) else 1
        params[comp] += numel
        nbytes[comp] += _tensor_bytes(onnx, t)
        dt = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name
        dtypes[dt] = dtypes.get(dt, 0) + _tensor_bytes(onnx, t)
    constants = sum(1 for n in model.graph.node if n.op_type == "Constant")
    manifest = _manifest_dict(path)
    return {
        "path": str(path),
        "file_size": path.stat().st_size,
        "sha256": sha256_file(path),
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "opset": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "inputs": _describe_values(onnx, model.graph.input),
        "outputs": _describe_values(onnx, model.graph.output),
        "nodes": len(model.graph.node),
        "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1])),
        "precision": _precision(model),
        "initializers": len(model.graph.initializer),
        "constant_nodes": constants,
        "component_elements": {k: v for k, v in params.items() if v},
        "component_bytes": {k: v for k, v in nbytes.items() if v},
        "initializer_bytes_by_dtype": dtypes,
        "total_initializer_bytes": sum(nbytes.values()),
        "external_data": _external_files(onnx, model, path.parent),
        "module_scopes": has_module_scopes(model),
        "manifest_summary": _manifest_summary(manifest),
        "manifest_check": _manifest_check(path, manifest),
    }


def _components_by_consumer(model) -> dict[str, str]:
    """Initializer -> component of the module that consumes it, for tensors the exporter renamed
    (constant-folded transposes become ``val_N``); from the dynamo exporter's module scopes."""
    found: dict[str, str] = {}
    for n in model.graph.node:
        scopes = node_module_scopes(n)
        if not scopes:
            continue
        comp = component_of_onnx_name(scopes[-1] + ".")
        if comp == OTHER:
            continue
        for i in n.input:
            found.setdefault(i, comp)
    return found








# --- TensorRT engine -------------------------------------------------------------------------------

def _engine_layers(path: Path, flavor: str = "tensorrt") -> dict[str, Any]:
    """I/O and per-layer information from TensorRT's IEngineInspector, where the engine's TensorRT imports (unverified
    here). TensorRT-RTX engines are not deserialised (that needs a supported GPU): their manifest holds the layers."""
    if flavor == "rtx":
        return {"available": False, "note": "a TensorRT-RTX engine is deserialised only on a GPU it supports; its layers by "
                                            "precision come from the build log recorded in its manifest"}
    try:
        trt = lazy_import("tensorrt", purpose="per-layer engine information")
    except ImportError as exc:
        return {"available": False, "note": str(exc)}
    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise ArtifactError(f"{path}: TensorRT {trt.__version__} cannot deserialize it (another TensorRT version or GPU?)")
    io = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        io.append({"name": name, "mode": str(engine.get_tensor_mode(name)).split(".")[-1],
                   "shape": list(engine.get_tensor_shape(name)), "dtype": str(engine.get_tensor_dtype(name)).split(".")[-1]})
    inspector = engine.create_engine_inspector()
    info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    layers = info.get("Layers", []) if isinstance(info, dict) else []
    return {
        "available": True,
        "tensorrt": trt.__version__,
        "io": io,
        "layers": layers,
        "num_layers": len(layers),
        "note": "layer names only unless the engine was built with detailed profiling verbosity (types, precisions, tactics)",
    }


def inspect_engine(path: str | Path) -> dict[str, Any]:
    """The manifest (TensorRT version, GPU, precision, profiles, source ONNX), I/O and, with TensorRT, the layers."""
    path = Path(path)
    manifest = _manifest_dict(path)
    source = (manifest or {}).get("onnx") or {}
    onnx_path = Path(source["path"]) if source.get("path") else None
    onnx_match = None
    if onnx_path is not None and onnx_path.exists():
        onnx_match = sha256_file(onnx_path) == source.get("sha256")
    io = None
    if onnx_path is not None and onnx_path.exists():
        onnx = lazy_import("onnx", purpose="reading the engine's source ONNX")
        m = onnx.load(str(onnx_path), load_external_data=False)
        io = {"inputs": _describe_values(onnx, m.graph.input), "outputs": _describe_values(onnx, m.graph.output)}
    return {
        "path": str(path),
        "file_size": path.stat().st_size,
        "manifest_summary": _manifest_summary(manifest),
        "manifest_check": _manifest_check(path, manifest),
        "profiles": (manifest or {}).get("profiles"),
        "source_onnx": {"path": str(onnx_path) if onnx_path else None, "exists": bool(onnx_path and onnx_path.exists()),
                        "matches_recorded_sha256": onnx_match},
        "io_from_onnx": io,
        "tensorrt_flavor": (manifest or {}).get("tensorrt_flavor") or "tensorrt",
        "compute_capabilities": (manifest or {}).get("compute_capabilities"),
        "layers_from_build_log": (manifest or {}).get("layers"),
        "build_warnings": (manifest or {}).get("build_warnings"),
        "tensorrt": _engine_layers(path, (manifest or {}).get("tensorrt_flavor") or "tensorrt"),
        "verified": ("the layers by precision were parsed from TensorRT-RTX's build log when the engine was built"
                     if (manifest or {}).get("tensorrt_flavor") == "rtx" else
                     "engine inspection through TensorRT is written against the TensorRT 10 API and unverified here (no TensorRT)"),
    }


# --- split record, calibration set, episode --------------------------------------------------------

def inspect_split(path: str | Path) -> dict[str, Any]:
    """The split record: its parts (present, sizes, their manifests' precision), parameter sums, window, stream check."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: not a readable split record ({exc})") from None
    if not isinstance(record, dict) or record.get("kind") != "split":
        raise ArtifactError(f"{path}: not a vla-export split record (kind {record.get('kind') if isinstance(record, dict) else None!r})")
    record = read_split(path).to_dict()  # schema, config, window and parts checked
    parts = {}
    for part, entry in record.get("parts", {}).items():
        f = path.parent / entry["path"]
        m = _manifest_dict(f) if f.exists() else None
        parts[part] = {
            "path": str(f), "exists": f.exists(), "bytes": f.stat().st_size if f.exists() else None,
            "parameters": entry.get("parameters"), "precision": (m or {}).get("precision", Precision.FP32 if m else None),
            "manifest_check": _manifest_check(f, m) if f.exists() else None,
        }
    cfg = record.get("config") or {}
    return {
        "path": str(path),
        "parts": parts,
        "parameters": record.get("parameters"),
        "window": record.get("window"),
        "warmup": record.get("warmup"),
        "config": cfg.get("name"),
        "source": record.get("source"),
        "stream_check": record.get("stream_check"),
    }


def _array_summary(a: np.ndarray) -> dict[str, Any]:
    info: dict[str, Any] = {"shape": list(a.shape), "dtype": a.dtype.name}
    if a.size and np.issubdtype(a.dtype, np.number):
        info |= {"min": float(a.min()), "max": float(a.max()), "mean": float(a.mean())}
    return info


def inspect_calibration(path: str | Path) -> dict[str, Any]:
    """Samples, per-input shapes/dtypes/ranges and the record of where the samples came from."""
    from vla_export.data.calibration import load_calibration_set

    cal = load_calibration_set(path)
    meta = dict(cal.meta)
    windows: Sequence[Any] = meta.pop("windows", [])
    return {
        "path": str(path),
        "file_size": Path(path).stat().st_size,
        "samples": len(cal),
        "inputs": {k: _array_summary(v) for k, v in cal.arrays.items()},
        "record": meta,
        "windows": len(windows),
        "episodes_used": sorted({w.get("episode") for w in windows if isinstance(w, dict)}),
    }


def inspect_episode(path: str | Path) -> dict[str, Any]:
    """Frames, actions (ranges and key-press events), duration and the instruction the episode maps to."""
    from vla_export.data.episodes import open_episode

    ep = open_episode(path)
    actions = ep.actions()
    events: dict[str, int] = {}
    for e in ep.event_types():
        events[e] = events.get(e, 0) + 1
    return {
        **ep.to_dict(),
        "file_size": Path(path).stat().st_size,
        "actions": _array_summary(actions),
        "action_event_types": events,
        "fps": round(ep.num_frames / ep.total_duration, 3) if ep.total_duration else None,
    }


_INSPECTORS = {
    "onnx": inspect_onnx,
    "engine": inspect_engine,
    "split": inspect_split,
    "calibration": inspect_calibration,
    "reference": inspect_reference,
    "episode": inspect_episode,
}
