"""Weight-only INT8: per-channel INT8 weights behind DequantizeLinear, activations left in floating point.

At batch 1 a control step is bound by streaming the weights, so INT8 weights buy almost all of INT8's
speed without any activation error (no calibration data, no activation Q/DQ). The graph takes the form
TensorRT's explicit quantization documents for pre-quantized weights: an INT8 initializer, a
DequantizeLinear with a per-channel scale on the output-channel axis and a zero point of 0
(symmetric, range -127..127), feeding the MatMul/Gemm/Conv that uses it. Weights consumed by anything
else (an embedding Gather, a weight shared with a non-GEMM op) stay float.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vla_export.artifacts.graph import ensure_node_names
from vla_export.artifacts.onnxfile import OnnxFile, needs_external_data, open_onnx, save_onnx
from vla_export.choices import Precision
from vla_export.export.quantize import QuantizeResult, _publish, precision_sensitive_nodes
from vla_export.lazy import lazy_import

WEIGHT_ONLY_OP_TYPES = ("MatMul", "Gemm", "Conv")
#: Symmetric INT8 range of the weights (-128 unused, so the grid is symmetric around 0).
QMAX = 127


def weight_axis(node, rank: int) -> int | None:
    """The output-channel axis of ``node``'s weight (its second input), or None if not a plain weight.

    MatMul ``x @ W`` with W [..., K, N]: the last axis. Gemm ``A @ B'``: B [K, N] (axis 1), or [N, K]
    with transB=1 (axis 0). Conv W [O, I/g, k...]: axis 0.
    """
    if node.op_type == "MatMul":
        return rank - 1 if rank >= 2 else None
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return (0 if trans_b else 1) if rank == 2 else None
    if node.op_type == "Conv":
        return 0 if rank >= 3 else None
    return None


def quantize_weight(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel INT8 along ``axis``: ``(q int8, scale float32 [w.shape[axis]])``; w ≈ q * scale."""
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=reduce) if reduce else np.abs(w)
    scale = (amax / QMAX).astype(np.float32)
    scale[scale == 0] = 1.0  # an all-zero channel: any scale reproduces it exactly
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / scale.reshape(shape)), -QMAX, QMAX).astype(np.int8)
    return q, scale


def quantize_int8_weights(
    onnx_path: str | Path | OnnxFile,
    output: str | Path,
    *,
    op_types: Sequence[str] = WEIGHT_ONLY_OP_TYPES,
    keep_sensitive_fp32: bool = True,
    exclude: Iterable[str] = (),
) -> QuantizeResult:
    """Weight-only INT8 of every MatMul/Gemm/Conv weight (except the policy head by default and
    ``exclude``d nodes); the manifest records the weight bytes before and after. ``onnx_path``: a path, or the
    :class:`OnnxFile` opened for the command (its model is changed in place)."""
    onnx = lazy_import("onnx", purpose="weight-only INT8")
    from onnx import helper, numpy_helper

    start = time.perf_counter()
    source, output = open_onnx(onnx_path), Path(output)
    model = source.model()
    ensure_node_names(model)
    sensitive = precision_sensitive_nodes(model) if keep_sensitive_fp32 else {}
    reasons = {n: r for n, r in sensitive.items() if r == "head"} | {name: "user" for name in exclude}
    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    float_bytes = sum(4 * int(np.prod(i.dims)) for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT)
    chosen: dict[str, int] = {}  # initializer -> axis
    for name, init in inits.items():
        users = consumers.get(name, [])
        if init.data_type != onnx.TensorProto.FLOAT or not users:
            continue
        axes = {weight_axis(n, len(init.dims)) if n.op_type in op_types and list(n.input).index(name) == 1 else None for n in users}
        if len(axes) == 1 and None not in axes and not any(n.name in reasons for n in users):
            chosen[name] = axes.pop()

    saved, int8_bytes, scale_bytes, quantized_nodes = 0, 0, 0, []
    new_inits, dq_nodes = [], []
    for name, axis in chosen.items():
        w = numpy_helper.to_array(inits[name])
        inits[name].ClearField("raw_data")  # replaced below: free the float weight now, not at the end (models over 2 GB)
        inits[name].ClearField("float_data")
        q, scale = quantize_weight(w, axis)
        new_inits += [numpy_helper.from_array(q, f"{name}_int8"), numpy_helper.from_array(scale, f"{name}_scale"),
                      numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), f"{name}_zero_point")]
        # The DequantizeLinear output keeps the weight's name, so every consumer reads it unchanged.
        dq_nodes.append(helper.make_node("DequantizeLinear", [f"{name}_int8", f"{name}_scale", f"{name}_zero_point"], [name],
                                         name=f"{name}_DequantizeLinear", axis=axis))
        int8_bytes += q.nbytes
        scale_bytes += scale.nbytes * 5 // 4  # scale float32 + zero point int8 per channel
        saved += w.nbytes - q.nbytes - scale.nbytes * 5 // 4
        quantized_nodes += [n.name for n in consumers[name]]
    quantized_elements = sum(int(np.prod(inits[n].dims)) for n in chosen)
    weight_elements = sum(int(np.prod(i.dims)) for i in inits.values() if i.data_type == onnx.TensorProto.FLOAT)
    for i in reversed(range(len(model.graph.initializer))):  # in place: copying the kept ones would double them in memory
        if model.graph.initializer[i].name in chosen:
            del model.graph.initializer[i]
    model.graph.initializer.extend(new_inits)
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(dq_nodes + nodes)  # DequantizeLinear of constants first: topological order holds

    weights = {
        "float_bytes_before": float_bytes,
        "int8_bytes": int8_bytes,
        "scale_bytes": scale_bytes,
        "bytes_saved": saved,
        "bytes_after": float_bytes - saved,
        "int8_share_of_weight_elements": quantized_elements / weight_elements if weight_elements else 0.0,
        "quantized_tensors": len(chosen),
        "quantized_nodes": len(quantized_nodes),
    }
    external = needs_external_data(model, source.external)
    options: dict[str, Any] = {
        "mode": "weight-only", "weights": "int8 symmetric per-channel (output axis), zero point 0",
        "activations": "float32 (as exported)", "op_types": list(op_types), "keep_sensitive_fp32": keep_sensitive_fp32,
        "external_data": external, "weight_bytes": weights,
    }
    return _publish(source, output, Precision.INT8, lambda tmp: save_onnx(model, tmp, external=external), reasons, options, start)
