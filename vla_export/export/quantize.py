"""Explicit quantization of an exported ONNX: INT8 Q/DQ (calibrated) and FP16, both runnable on any CPU.

INT8 uses onnxruntime.quantization (static, QDQ format, symmetric per-channel weights and symmetric
activations, as TensorRT requires for explicit quantization); FP16 uses onnxruntime's float16
converter with fp32 inputs and outputs. Both keep the ops that break in low precision out of it:
LayerNorm, Softmax, the attention-mask arithmetic (Kosmos-2 builds masks from the float32 minimum,
which is -inf in FP16) and, for INT8, residual adds. TensorRT builds either result strongly typed.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vla_export.choices import CalibrationMethod, Precision
from vla_export import interrupts
from vla_export.artifacts.graph import ensure_node_names
from vla_export.artifacts.onnxfile import data_file, needs_external_data, OnnxFile, open_onnx, save_onnx
from vla_export.data.calibration import CalibrationSet
from vla_export.errors import ArtifactError, DataError, MissingDependencyError
from vla_export.fileio import staging_dir
from vla_export.lazy import lazy_import
from vla_export.progress import reported

FP16_MAX = 65504.0
#: Op types whose inputs get Q/DQ by default: the backbones' matrix products and patch embeddings carry
#: almost all the compute. The policy head (Gemm, LSTM) stays in float, see :data:`HEAD_WEIGHTS`.
INT8_OP_TYPES = ("MatMul", "Conv")
#: Weights of the policy head (feature projection, LSTM, MLP): about 3% of the parameters, and its errors
#: land directly on the actions (on the tiny preset, INT8 head layers alone triple the action error).
HEAD_WEIGHTS = re.compile(r"(^|\.)(action|rnn|proj)\.")
NORM_OPS = ("LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization", "GroupNormalization")
SOFTMAX_OPS = ("Softmax", "LogSoftmax")
#: The mask closure stops at these ops: past them values are activations again, not mask arithmetic.
MASK_STOP_OPS = (*SOFTMAX_OPS, "MatMul", "Gemm", *NORM_OPS)
CALIBRATION_METHODS = CalibrationMethod.values()
#: Entropy calibration histogram: 1024 bins searched for the 128-bin window of least KL divergence
#: (TensorRT's entropy calibrator uses 2048; the search is quadratic in pure Python, and 1024 keeps tiny
#: under a minute on 2 cores). onnxruntime's quantize_static cannot pass these
#: to its calibrator and uses 128/128, which leaves one candidate window, the full range: its "entropy"
#: is then MinMax byte for byte. So the ranges are computed here and handed over as a calibration cache.
ENTROPY_BINS = 1024
ENTROPY_QUANTIZED_BINS = 128


def _constant_arrays(model) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    arrays = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if not i.external_data}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    arrays[node.output[0]] = numpy_helper.to_array(attr.t)
    return arrays


def _out_of_fp16_range(a: np.ndarray) -> bool:
    return a.dtype.kind == "f" and a.size > 0 and bool(np.nanmax(np.abs(a[np.isfinite(a)]), initial=0) > FP16_MAX)


def precision_sensitive_nodes(model, *, int8: bool = True) -> dict[str, str]:
    """Node name -> reason ("layernorm", "softmax", "mask", and for INT8 "residual-add",
    "attention-matmul", "head") for nodes to keep out of low precision.

    Mask arithmetic is every node downstream of a constant outside the FP16 range, up to (not past)
    the next Softmax, matrix product or normalisation. A residual add is an Add of two activations
    (neither input a constant) that is not mask arithmetic; an attention MatMul multiplies two
    activations (Q.K^T, probabilities.V: per-tensor INT8 on both sides, no per-channel weights to
    help; see benchmarks/quantization.md for what it changed). Head nodes take a policy-head weight.
    """
    consts = _constant_arrays(model)
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    reasons: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type in NORM_OPS:
            reasons[node.name] = "layernorm"
        elif node.op_type in SOFTMAX_OPS:
            reasons[node.name] = "softmax"
    frontier = [n for name, a in consts.items() if _out_of_fp16_range(a) for n in consumers.get(name, [])]
    while frontier:
        node = frontier.pop()
        if node.op_type in MASK_STOP_OPS or reasons.get(node.name) == "mask":
            continue
        reasons[node.name] = "mask"
        frontier += [c for out in node.output for c in consumers.get(out, [])]
    if int8:
        initializers = {i.name for i in model.graph.initializer}
        for node in model.graph.node:
            if node.name in reasons:
                continue
            activations_only = not any(i in consts or i in initializers for i in node.input)
            if node.op_type == "Add" and activations_only:
                reasons[node.name] = "residual-add"
            elif node.op_type == "MatMul" and activations_only:
                reasons[node.name] = "attention-matmul"
            elif any(i in initializers and HEAD_WEIGHTS.search(i) for i in node.input):
                reasons[node.name] = "head"
    return reasons








def _typed_structure(source: OnnxFile):
    """The model's graph with its intermediate tensors typed by ONNX shape inference, run on the graph
    without its weights (they stay on disk), so it works on models over 2 GB; ``infer_shapes`` of the loaded
    model would serialise it whole. Returns the inferred value infos."""
    onnx = lazy_import("onnx", purpose="ONNX shape inference")
    try:
        inferred = onnx.shape_inference.infer_shapes(source.structure())
    except Exception as exc:  # onnx raises InferenceError and RuntimeError
        raise ArtifactError(f"{source.path}: shape inference failed: {str(exc).splitlines()[0]}") from None
    return list(inferred.graph.value_info)


def drop_duplicate_nodes(model) -> int:
    """Remove nodes that repeat an earlier node exactly (same op, inputs, outputs, attributes), and repeated
    value infos; returns how many nodes went.

    onnxruntime 1.30's FP16 converter (1.32's shares one Cast) adds one ``NAME_cast_to_fp32`` Cast per blocked
    consumer of a shared FP16 initializer, all with the same output name: TensorRT's parser then refuses the
    graph ("Output name is not unique"). Found on the full-size ``mobile-vla``, whose random LayerNorm weights the exporter
    stores once. Two different nodes writing one tensor are a broken graph, not a repeat: ArtifactError.
    """
    first: dict[str, Any] = {}
    drop: list[int] = []
    for i, node in enumerate(model.graph.node):
        earlier = next((first[o] for o in node.output if o in first), None)
        if earlier is None:
            first.update({o: node for o in node.output if o})
            continue
        same = (earlier.op_type, earlier.domain, list(earlier.input), list(earlier.output)) == (node.op_type, node.domain, list(node.input), list(node.output))
        if not same or [a.SerializeToString() for a in earlier.attribute] != [a.SerializeToString() for a in node.attribute]:
            raise ArtifactError(f"nodes {earlier.name!r} and {node.name!r} both write {node.output[0]!r}: the converted graph is broken")
        drop.append(i)
    for i in reversed(drop):
        del model.graph.node[i]
    seen: set[str] = set()
    repeats = []
    for i, v in enumerate(model.graph.value_info):
        if v.name in seen:
            repeats.append(i)
        seen.add(v.name)
    for i in reversed(repeats):
        del model.graph.value_info[i]
    return len(drop)


def _subgraph_inputs(node) -> set[str]:
    names: set[str] = set()
    for a in node.attribute:
        for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
            for n in g.node:
                names.update(n.input)
                names |= _subgraph_inputs(n)
    return names


def sort_topologically(model) -> bool:
    """Order the graph's nodes so each comes after the producers of its inputs (outer-scope names used in
    subgraphs count), keeping the existing order wherever it already holds; True if anything moved.

    onnxruntime's FP16 converter appends its Casts at the end of the graph: ONNX Runtime and TensorRT sort
    for themselves, but the ONNX checker (and the ONNX spec) require sorted nodes."""
    import heapq

    nodes = list(model.graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    users: list[list[int]] = [[] for _ in nodes]
    waiting = [0] * len(nodes)
    for i, n in enumerate(nodes):
        for j in {producer[x] for x in set(n.input) | _subgraph_inputs(n) if x in producer} - {i}:
            users[j].append(i)
            waiting[i] += 1
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        raise ArtifactError(f"the converted graph has a cycle through {len(nodes) - len(order)} nodes")
    if order == list(range(len(nodes))):
        return False
    del model.graph.node[:]
    model.graph.node.extend(nodes[i] for i in order)
    return True




def publish_staged(tmpdir: Path, output: Path) -> list[Path]:
    """Move a model staged as ``tmpdir / output.name`` (with its data and manifest) into place: the external
    data files first and the ``.onnx`` last, so a model file never points at data that is not there yet.
    Returns the final paths."""
    produced = sorted(tmpdir.iterdir(), key=lambda p: p.name == output.name)
    if not produced or produced[-1].name != output.name:
        raise ArtifactError(f"{output}: the writer produced no model file")
    final = []
    with interrupts.deferred():  # never after Ctrl-C or SIGTERM, never half
        for p in produced:
            target = output.parent / p.name
            p.replace(target)
            final.append(target)
    return final


@dataclass
class QuantizeResult:
    """What a quantization pass wrote and kept out of low precision."""

    source: str
    output: str
    precision: str
    files: list[str]
    bytes: int
    seconds: float
    kept_fp32: dict[str, int]
    nodes: dict[str, int] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _publish(source: OnnxFile, output: Path, precision: str, write_model: Callable[[Path], Any], reasons: Mapping[str, str],
             options: dict[str, Any], start: float) -> QuantizeResult:
    """Write the model (``write_model(tmp_path)``) and its manifest in a temporary folder beside ``output``,
    then move them into place, the ``.onnx`` last (a file-system error names the output; the folder goes
    in any case). The manifest carries the source's (config, window, ...) with this precision, so
    ``vla-export parity`` applies the right tolerance."""
    with staging_dir(output) as tmpdir:
        tmp = tmpdir / output.name
        write_model(tmp)
        if not tmp.is_file():
            raise ArtifactError(f"{output}: the writer produced no model file")
        written = OnnxFile(tmp)  # the result, read once for its op counts and I/O
        files = [tmp] + ([data_file(tmp)] if data_file(tmp).exists() else [])
        result = QuantizeResult(
            source=str(source.path), output=str(output), precision=precision, files=[str(output.parent / f.name) for f in files],
            bytes=sum(f.stat().st_size for f in files), seconds=round(time.perf_counter() - start, 3),
            kept_fp32=_reason_counts(reasons), nodes=written.ops(), options=options,
        )
        _write_manifest(tmp, files, source, precision, result, written.io())
        publish_staged(tmpdir, output)
    return result


def _write_manifest(tmp: Path, files: Sequence[Path], source: OnnxFile, precision: str, result: QuantizeResult,
                    io: Mapping[str, Any]) -> None:
    """The quantized model's manifest: the source's own fields, with this precision and the quantization."""
    from vla_export.artifacts.manifest import build_manifest, manifest_path, versions, write_manifest
    from vla_export.fileio import sha256_file

    inherited = source.require_manifest("onnx").to_dict() if source.manifest is not None else {}
    keep = {k: v for k, v in inherited.items() if k not in ("schema", "kind", "artifact", "files", "parity", "ops", "io", "versions")}
    data = build_manifest(
        "onnx", tmp, list(files), **keep,
        precision=precision,
        quantized_from={"path": str(source.path), "sha256": sha256_file(source.path)},
        quantization=result.to_dict(),
        io=dict(io), ops=result.nodes, parity={}, versions=versions(),
    )
    write_manifest(tmp, data, path=manifest_path(tmp))


def _reason_counts(reasons: Mapping[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in reasons.values():
        counts[r] = counts.get(r, 0) + 1
    return dict(sorted(counts.items()))


@reported("converting to FP16")
def convert_fp16(onnx_path: str | Path | OnnxFile, output: str | Path, *, keep_sensitive_fp32: bool = True) -> QuantizeResult:
    """FP16 weights and compute, fp32 inputs and outputs; LayerNorm, Softmax and mask arithmetic stay FP32.

    ``onnx_path``: a path, or the :class:`OnnxFile` opened for the command (its model is converted in place)."""
    f16 = lazy_import("onnxruntime.transformers.float16", purpose="FP16 conversion")
    start = time.perf_counter()
    source, output = open_onnx(onnx_path), Path(output)
    value_info = _typed_structure(source)  # before the weights load: the structure alone is inferred
    model = source.model()
    del model.graph.value_info[:]
    model.graph.value_info.extend(value_info)
    ensure_node_names(model)
    reasons = precision_sensitive_nodes(model, int8=False) if keep_sensitive_fp32 else {}
    external = needs_external_data(model, source.external)
    # The converter's own shape inference serialises the whole model (fails over 2 GB): types come from
    # the weightless graph above instead, the same value infos for a model of any size.
    model = f16.convert_float_to_float16(
        model, keep_io_types=True, op_block_list=list(f16.DEFAULT_OP_BLOCK_LIST), node_block_list=sorted(reasons),
        disable_shape_infer=True,
    )
    options = {"keep_sensitive_fp32": keep_sensitive_fp32, "external_data": external,
               "duplicate_casts_removed": drop_duplicate_nodes(model), "nodes_reordered": sort_topologically(model)}
    return _publish(source, output, Precision.FP16, lambda tmp: save_onnx(model, tmp, external=external), reasons, options, start)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a calibration set (made lazily: ORT is optional)."""

    def __init__(self, calib: CalibrationSet):
        self._calib, self._i = calib, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= len(self._calib):
            return None
        self._i += 1
        return self._calib.feed(self._i - 1)

    def rewind(self) -> None:
        self._i = 0


def calibration_reader(calib: CalibrationSet):
    """A ``CalibrationDataReader`` for onnxruntime.quantization yielding the set's feeds in order."""
    q = lazy_import("onnxruntime.quantization", purpose="INT8 quantization")
    return type("CalibrationSetReader", (_Reader, q.CalibrationDataReader), {})(calib)


def _entropy_ranges(model_path: Path, calib: CalibrationSet, op_types: Sequence[str], work: Path, external: bool) -> Path:
    """Entropy (KL) activation ranges with :data:`ENTROPY_BINS` histogram bins, written as the calibration
    cache ``quantize_static`` reads (see :data:`ENTROPY_BINS` for why not through quantize_static)."""
    import inspect

    q = lazy_import("onnxruntime.quantization", purpose="INT8 quantization")
    cal = lazy_import("onnxruntime.quantization.calibrate", purpose="INT8 quantization")
    if "calibration_cache_path" not in inspect.signature(q.quantize_static).parameters:
        raise MissingDependencyError(
            f"--method entropy needs an onnxruntime whose quantize_static takes calibration_cache_path "
            f"(1.32 does; this is {lazy_import('onnxruntime', purpose='INT8 quantization').__version__}): "
            "`pip install -U onnxruntime`, or use --method minmax"
        )
    calibrator = cal.create_calibrator(
        model_path, list(op_types), augmented_model_path=str(work / "augmented.onnx"),
        calibrate_method=q.CalibrationMethod.Entropy, use_external_data_format=external,
        extra_options={"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS, "symmetric": True},
    )
    calibrator.collect_data(calibration_reader(calib))
    cache = work / "entropy-ranges.json"
    cal.save_tensors_data(calibrator.compute_data(), cache)
    return cache


def calibration_record(calib: CalibrationSet) -> dict[str, Any]:
    """What the manifest of a quantized model records about its calibration set: path, sha256, samples
    and the episode frames it holds (parity of the model evaluates on windows disjoint from them)."""
    from vla_export.fileio import sha256_file

    return {"path": str(calib.path), "sha256": sha256_file(calib.path) if Path(calib.path).is_file() else None,
            "samples": len(calib), "frames": calib.frames_used()}


@reported("quantizing to INT8 (calibrating)")
def quantize_int8(
    onnx_path: str | Path | OnnxFile,
    calib: CalibrationSet,
    output: str | Path,
    *,
    per_channel: bool = True,
    method: str = CalibrationMethod.MINMAX,
    op_types: Sequence[str] = INT8_OP_TYPES,
    keep_sensitive_fp32: bool = True,
    exclude: Iterable[str] = (),
) -> QuantizeResult:
    """Static INT8 Q/DQ: symmetric int8 weights (per channel) and activations, calibrated on ``calib``.

    ``onnx_path``: a path, or the :class:`OnnxFile` opened for the command: its model is written for onnxruntime
    and then released (one copy of the weights in memory, not two); pass a :meth:`OnnxFile.copy` to keep it."""
    q = lazy_import("onnxruntime.quantization", purpose="INT8 quantization")
    if method not in CALIBRATION_METHODS:
        raise DataError(f"calibration method must be one of {CALIBRATION_METHODS}, got {method!r}")
    start = time.perf_counter()
    source, output = open_onnx(onnx_path), Path(output)
    model = source.model()
    calib.check_inputs(source.io()["inputs"], source.path)
    ensure_node_names(model)
    reasons = precision_sensitive_nodes(model) if keep_sensitive_fp32 else {}
    reasons.update({name: "user" for name in exclude})
    external = needs_external_data(model, source.external)
    methods = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy, "percentile": q.CalibrationMethod.Percentile}

    options = {
        "per_channel": per_channel, "method": method, "op_types": list(op_types), "calibration": calibration_record(calib),
        "calibration_samples": len(calib), "keep_sensitive_fp32": keep_sensitive_fp32, "external_data": external,
        **({"entropy_bins": ENTROPY_BINS, "entropy_quantized_bins": ENTROPY_QUANTIZED_BINS} if method == CalibrationMethod.ENTROPY else {}),
    }
    with tempfile.TemporaryDirectory(prefix="vla-quant-") as work:
        named = Path(work) / "named.onnx"
        save_onnx(model, named, external=external)
        source.release()
        del model  # onnxruntime reloads it from the file: one copy of the weights in memory, not two

        def write(tmp: Path) -> None:
            cache = {}
            if method == CalibrationMethod.ENTROPY:
                cache["calibration_cache_path"] = _entropy_ranges(named, calib, op_types, Path(work), external)
            q.quantize_static(
                str(named), str(tmp), calibration_reader(calib),
                quant_format=q.QuantFormat.QDQ,
                op_types_to_quantize=list(op_types),
                nodes_to_exclude=sorted(reasons),
                per_channel=per_channel,
                activation_type=q.QuantType.QInt8,
                weight_type=q.QuantType.QInt8,
                calibrate_method=methods[method],
                use_external_data_format=external,
                # Q/DQ on the inputs of the quantized ops only (TensorRT's pattern): a quantized MatMul output
                # would put attention scores on the int8 grid right before the Softmax kept out of INT8.
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                               "OpTypesToExcludeOutputQuantization": list(op_types)},
                **cache,
            )

        return _publish(source, output, Precision.INT8, write, reasons, options, start)


