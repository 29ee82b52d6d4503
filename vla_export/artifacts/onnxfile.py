"""ONNX files as files: load (with or without weights), external data, I/O signature, op counts,
opset, checker and shape inference.

Below the runners and the exporter, which both read ONNX files. A missing or truncated
``NAME.onnx.data`` otherwise fails deep inside onnx or ONNX Runtime with a native error; one helper
checks it for every reader (the ONNX Runtime runner, the exporter's checks, the quantizer), so they
all refuse it the same way, in one line.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vla_export.errors import ArtifactError
from vla_export.lazy import lazy_import
from vla_export.artifacts.manifest import Manifest, read_manifest


def _model_proto(path: Path):
    onnx = lazy_import("onnx", purpose="reading ONNX models")
    if not path.is_file():
        raise ArtifactError(f"{path}: ONNX file not found")
    try:
        return onnx, onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError, OSError: not an ONNX protobuf
        raise ArtifactError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None


def _structure(source):
    """The ModelProto of ``source``: a path is parsed without its external data, a ModelProto is itself."""
    if isinstance(source, (str, Path)):
        return lazy_import("onnx", purpose="reading ONNX models").load(str(source), load_external_data=False)
    return source


def external_data_extents(path: str | Path) -> dict[str, int]:
    """External data file name -> the bytes its tensors need (the largest offset + length); weights are not loaded."""
    return _extents(_model_proto(Path(path))[1])


def _extents(model) -> dict[str, int]:
    onnx = lazy_import("onnx", purpose="reading ONNX models")
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


def require_external_data(path: str | Path, recorded: Mapping[str, int] | None = None,
                          needed: Mapping[str, int] | None = None) -> list[str]:
    """Refuse an ONNX file whose external data is missing or shorter than its tensors need.

    ``recorded``: file name -> bytes, as a manifest records them; a data file of another size is
    refused too (changed or truncated). ``needed``: the file's :func:`external_data_extents` where
    the caller has them (else the file is read for them). Returns the external data file names.
    """
    path = Path(path)
    needed = external_data_extents(path) if needed is None else needed
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


def tensor_bytes(model) -> int:
    """Bytes of every tensor ``model`` holds (initializers, Constant values, sparse initializers, subgraphs),
    counted without serialising it: ``ModelProto.ByteSize()`` fails on a model over protobuf's 2 GB limit,
    the very case this measures. External tensors count by their recorded length, loaded or not."""
    onnx = lazy_import("onnx", purpose="reading ONNX models")

    def one(t) -> int:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            return int({e.key: e.value for e in t.external_data}.get("length", 0))
        if t.raw_data:
            return len(t.raw_data)
        return (4 * (len(t.float_data) + len(t.int32_data)) + 8 * (len(t.int64_data) + len(t.double_data) + len(t.uint64_data))
                + sum(map(len, t.string_data)))

    def graph(g) -> int:
        total = sum(one(t) for t in g.initializer) + sum(one(s.values) + one(s.indices) for s in g.sparse_initializer)
        for node in g.node:
            for a in node.attribute:
                total += (one(a.t) if a.HasField("t") else 0) + sum(one(t) for t in a.tensors)
                total += (graph(a.g) if a.HasField("g") else 0) + sum(graph(sub) for sub in a.graphs)
        return total

    return graph(model.graph)


def file_tensor_bytes(path: str | Path) -> int:
    """:func:`tensor_bytes` of the ONNX file at ``path``, its weights left on disk."""
    _, model = _model_proto(Path(path))
    return tensor_bytes(model)


def data_file(path: str | Path) -> Path:
    """The single external-data file beside ``path``: ``x.onnx`` -> ``x.onnx.data``."""
    path = Path(path)
    return path.with_name(path.name + ".data")


def check_model(path: str | Path) -> None:
    """onnx.checker and shape inference, both by path so external data (and > 2 GB models) work."""
    onnx = lazy_import("onnx", purpose="checking ONNX models")
    path = Path(path)
    require_external_data(path, recorded_sizes(path))
    try:
        onnx.checker.check_model(str(path), full_check=False)
    except onnx.checker.ValidationError as exc:
        raise ArtifactError(f"{path}: onnx.checker failed: {str(exc).splitlines()[0]}") from None
    fd, inferred = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        onnx.shape_inference.infer_shapes_path(str(path), inferred)
    except Exception as exc:  # onnx raises InferenceError and RuntimeError
        raise ArtifactError(f"{path}: shape inference failed: {str(exc).splitlines()[0]}") from None
    finally:
        os.unlink(inferred)


def io_signature(path) -> dict[str, list[dict[str, Any]]]:
    """Inputs and outputs of an ONNX file (or an in-memory ModelProto): name, shape (ints, or dim names for dynamic axes), dtype."""
    onnx = lazy_import("onnx", purpose="reading ONNX models")
    model = _structure(path)

    def describe(values):
        out = []
        for v in values:
            tt = v.type.tensor_type
            shape = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in tt.shape.dim]
            out.append({"name": v.name, "shape": shape, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name})
        return out

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}


def op_counts(path) -> dict[str, int]:
    """Op type -> nodes of an ONNX file (or an in-memory ModelProto), the most frequent first."""
    counts: dict[str, int] = {}
    for node in _structure(path).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def written_opset(path: str | Path) -> int:
    """The default-domain (ai.onnx) opset an ONNX file declares: what it really holds."""
    onnx = lazy_import("onnx", purpose="reading ONNX models")
    model = onnx.load(str(path), load_external_data=False)
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        raise ArtifactError(f"{path}: declares no ai.onnx opset")
    return int(versions[0])


def recorded_sizes(path: str | Path) -> dict[str, int]:
    """File name -> bytes, as the manifest beside ``path`` records them (empty without one)."""
    manifest = read_manifest(path, required=False)
    return {f.name: f.bytes for f in manifest.files} if manifest else {}


#: Where :func:`load_graph` says a dropped initializer's values are (nowhere: they were not kept).
NOT_LOADED = "<values not loaded>"
#: Initializers up to this many elements keep their values in :func:`load_graph` (shape constants, token ids).
GRAPH_KEEP_ELEMENTS = 4096


def load_graph(path: str | Path):
    """The model without its weights' values: nodes, names, I/O, and every initializer's name, type and dims.

    For reading names and types (trtexec lines, layer rules, I/O): external data is not read, and inline
    weights (a model under 2 GB keeps them in the .onnx) are dropped right after parsing, so copies and
    shape inference made from it do not hold them again. Small initializers keep their values.
    """
    onnx = lazy_import("onnx", purpose="reading ONNX models")
    model = load_onnx(path, load_external_data=False)
    for init in model.graph.initializer:
        elements = 1
        for d in init.dims:
            elements *= d
        if elements > GRAPH_KEEP_ELEMENTS and init.data_location != onnx.TensorProto.EXTERNAL:
            for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
                init.ClearField(field)
            # Marked as external data (never to be read): readers of values skip it as they skip external weights.
            del init.external_data[:]
            entry = init.external_data.add()
            entry.key, entry.value = "location", NOT_LOADED
            init.data_location = onnx.TensorProto.EXTERNAL
    return model


def load_onnx(path: str | Path, *, load_external_data: bool = True):
    """Load an ONNX model; ArtifactError for a missing file, a bad protobuf or missing external data."""
    onnx = lazy_import("onnx", purpose="reading ONNX models")
    path = Path(path)
    require_external_data(path, recorded_sizes(path))
    try:
        return onnx.load(str(path), load_external_data=load_external_data)
    except Exception as exc:  # a short or corrupt external data file
        raise ArtifactError(f"{path}: cannot load its weights ({type(exc).__name__}: {exc})") from None


def has_external_data(model) -> bool:
    return any(i.external_data for i in model.graph.initializer)


def needs_external_data(model, source_external: bool = False) -> bool:
    """True when the model or its source file (``source_external``: :attr:`OnnxFile.external`) keeps weights
    outside, or its protobuf would pass the 2 GB limit.

    Loading a model drops the external marks of its tensors, hence ``source_external``: a quantized model keeps its
    source's layout. The size is counted from the tensors (:func:`~vla_export.artifacts.onnxfile.tensor_bytes`), never
    by ``ModelProto.ByteSize()``, which raises EncodeError on exactly the models over the limit; 64 MB are
    left for the graph itself."""
    return has_external_data(model) or source_external or tensor_bytes(model) > PROTOBUF_LIMIT - (64 << 20)


def save_onnx(model, path: Path, *, external: bool | None = None) -> list[Path]:
    """Save ``model`` to ``path``; weights go to ``data_file(path)`` when over the protobuf limit."""
    onnx = lazy_import("onnx", purpose="writing ONNX models")
    external = needs_external_data(model) if external is None else external
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_file(path).name, size_threshold=1024)
        return [path, data_file(path)]
    onnx.save_model(model, str(path))
    return [path]


PROTOBUF_LIMIT = 2**31 - 1


class OnnxFile:
    """An ONNX file read once for a whole command, handed from step to step instead of its path.

    The protobuf is parsed once; weights in external data stay on disk until :meth:`model` asks for
    them, and are then loaded into the same ModelProto (after the data files are checked against the
    manifest, which is read once too). The file-level facts (its manifest, its external data files
    and their extents) are taken at opening, before any step changes the model: loading weights
    drops their external marks. As Polygraphy's loaders chain over an in-memory model, the steps
    of ``vla-export quantize`` (I/O checks, the transforms, the manifest of the result) read these
    instead of the file. A step that transforms :meth:`model` changes it in place: a step that
    needs the original afterwards takes a :meth:`copy` first.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        _, self._proto = _model_proto(self.path)
        #: External data file name -> bytes its tensors need, as the file declares them.
        self.extents: dict[str, int] = _extents(self._proto)
        #: The manifest beside the file (any kind; None without one).
        self.manifest: Manifest | None = read_manifest(self.path, required=False)
        self._weights = not self.extents

    def require_manifest(self, kind: str = "onnx") -> Manifest:
        """The manifest, which must be there and of ``kind``; else :func:`read_manifest`'s error."""
        if self.manifest is None or self.manifest.kind != kind:
            return read_manifest(self.path, kind=kind)  # raises, naming what is wrong
        return self.manifest

    @property
    def external(self) -> bool:
        """The file keeps its weights in external data files."""
        return bool(self.extents)

    def io(self) -> dict[str, list[dict[str, Any]]]:
        """:func:`io_signature` of the model."""
        return io_signature(self._proto)

    def ops(self) -> dict[str, int]:
        """:func:`op_counts` of the model."""
        return op_counts(self._proto)

    def tensor_bytes(self) -> int:
        """:func:`tensor_bytes` of the model, its external weights counted by their recorded length."""
        return tensor_bytes(self._proto)

    def structure(self):
        """The ModelProto without its external weights; only before :meth:`model` loaded them (so it can be
        serialised, e.g. for shape inference, at any size)."""
        if self._weights and self.external:
            raise RuntimeError(f"{self.path}: its weights are loaded already; take the structure before model()")
        return self._proto

    def model(self):
        """The ModelProto with every weight; external data is checked and loaded on the first call."""
        if self._proto is None:
            raise RuntimeError(f"{self.path}: its model was released; open the file again")
        if not self._weights:
            sizes = {f.name: f.bytes for f in (self.manifest.files if self.manifest else ())}
            require_external_data(self.path, sizes, self.extents)
            external_data_helper = lazy_import("onnx.external_data_helper", purpose="reading ONNX models")
            try:
                external_data_helper.load_external_data_for_model(self._proto, str(self.path.parent))
            except Exception as exc:  # a short or corrupt external data file
                raise ArtifactError(f"{self.path}: cannot load its weights ({type(exc).__name__}: {exc})") from None
            self._weights = True
        return self._proto

    def release(self) -> None:
        """Let go of the model, for a step that has handed it on to a file: protobuf frees a message's memory
        only with the whole message (clearing its weights frees nothing), so this handle must not keep it alive.
        The file-level facts (path, manifest, external data) stay."""
        self._proto = None

    def copy(self) -> "OnnxFile":
        """Another handle on the same file with its own ModelProto (weights loaded as here)."""
        other = object.__new__(OnnxFile)
        other.__dict__.update(self.__dict__)
        other._proto = type(self._proto)()
        other._proto.CopyFrom(self._proto)
        return other


def open_onnx(source: str | Path | OnnxFile) -> OnnxFile:
    """``source`` as an :class:`OnnxFile`: a path is opened (read once), an OnnxFile passes through."""
    return source if isinstance(source, OnnxFile) else OnnxFile(source)
