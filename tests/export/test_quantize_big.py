"""Quantizing a model over protobuf's 2 GB limit, through the real CLI, in every mode.

The model is a synthetic graph of the policy's op kinds (Conv patch embedding, a token-embedding Gather,
LayerNormalization, Q/K/V and attention MatMuls, Softmax, residual Adds, a wide FFN, a Gemm + Tanh head)
whose weights (2.25 GB) are streamed straight into an external data file, so building it costs no
memory. Each ``vla-export quantize`` runs in a child process whose peak RSS is measured (os.wait4).

Marked slow, so not in ``make test``: ``pytest -m slow tests/export/test_quantize_big.py`` took 7 min 45 s on
the 2-core CI-type machine under load (fp16 161 s at 5.19 GB peak RSS, int8-weights 69 s at 5.15 GB, W8A8
158 s at 6.78 GB; about 7 GB written to the temporary folder). ``ModelProto.ByteSize()`` raises EncodeError
over 2 GB with protobuf 7 (the GPU machine's 7.36.2) but not with 6.33 (this venv's): the old code's
``--fp16`` fails here only with protobuf 7 on the path; its outputs without external data fail the layout
checks under either.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vla_export.data.calibration import FORMAT, META_KEY
from vla_export.artifacts.onnxfile import PROTOBUF_LIMIT
from vla_export.artifacts.onnxfile import needs_external_data
from vla_export.artifacts.onnxfile import check_model, file_tensor_bytes, tensor_bytes

pytestmark = pytest.mark.slow

D, VOCAB, FFN, BLOCKS = 256, 300_000, 320_000, 3  # 0.31 GB embedding + 3 blocks x 2 x 0.33 GB FFN weights = 2.27 GB
TOKENS = 8


def _block(rows: int, cols: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((rows, cols)) * 0.02).astype(np.float32)


def write_big_onnx(path: Path) -> int:
    """Write the synthetic model to ``path`` (+ ``path.data``) chunk by chunk; returns its tensor bytes."""
    big: list[TensorProto] = []
    data = path.with_name(path.name + ".data")
    with data.open("wb") as fh:
        ffn = [(f"ffn{b}.{w}.weight", shape, 2 + 2 * b + i) for b in range(BLOCKS) for i, (w, shape) in enumerate((("up", (D, FFN)), ("down", (FFN, D))))]
        for name, shape, seed in [("embed.weight", (VOCAB, D), 1), *ffn]:
            offset = fh.tell()
            rows = 4_000 if shape[0] >= 4_000 else shape[0]
            block = _block(rows, shape[1], seed)
            for start in range(0, shape[0], rows):  # rows repeat every `rows`: random enough, nearly free to make
                fh.write(block[: min(rows, shape[0] - start)].tobytes())
            t = TensorProto(name=name, dims=list(shape), data_type=TensorProto.FLOAT, data_location=TensorProto.EXTERNAL)
            for key, value in (("location", data.name), ("offset", offset), ("length", fh.tell() - offset)):
                t.external_data.add(key=key, value=str(value))
            big.append(t)
    small = {
        "patch.weight": _block(D, 3 * 16 * 16, 4).reshape(D, 3, 16, 16), "patch.bias": np.zeros(D, np.float32),
        "ln1.weight": np.ones(D, np.float32), "ln1.bias": np.zeros(D, np.float32),
        **{f"ln{b}.{k}": (np.ones if k == "weight" else np.zeros)(D, np.float32) for b in range(2, BLOCKS + 2) for k in ("weight", "bias")},
        "attn.q.weight": _block(D, D, 5), "attn.k.weight": _block(D, D, 6), "attn.v.weight": _block(D, D, 7),
        **{f"ffn{b}.up.bias": np.zeros(FFN, np.float32) for b in range(BLOCKS)}, "scale": np.array(D ** -0.5, np.float32),
        "action.fc.weight": _block(2, D, 8), "action.fc.bias": np.zeros(2, np.float32),
    }
    n = helper.make_node
    nodes = [
        n("Conv", ["pixel_values", "patch.weight", "patch.bias"], ["patches"], name="patch", strides=[16, 16]),
        n("ReduceMean", ["patches"], ["image"], name="image_pool", axes=[2, 3], keepdims=0),
        n("Unsqueeze", ["image", "one"], ["image_token"], name="image_token"),
        n("Gather", ["embed.weight", "input_ids"], ["text"], name="embed"),
        n("Add", ["text", "image_token"], ["h"], name="fuse"),
        n("LayerNormalization", ["h", "ln1.weight", "ln1.bias"], ["n1"], name="ln1", axis=-1),
        n("MatMul", ["n1", "attn.q.weight"], ["q"], name="q"),
        n("MatMul", ["n1", "attn.k.weight"], ["k"], name="k"),
        n("MatMul", ["n1", "attn.v.weight"], ["v"], name="v"),
        n("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
        n("MatMul", ["q", "kt"], ["scores"], name="qk"),
        n("Mul", ["scores", "scale"], ["scaled"], name="scale"),
        n("Softmax", ["scaled"], ["probs"], name="softmax", axis=-1),
        n("MatMul", ["probs", "v"], ["attn"], name="pv"),
        n("Add", ["h", "attn"], ["h2"], name="residual1"),
        *[node for b in range(BLOCKS) for node in (  # the text model's FFN blocks, each over a residual
            n("LayerNormalization", [f"h{b + 2}", f"ln{b + 2}.weight", f"ln{b + 2}.bias"], [f"n{b + 2}"], name=f"ln{b + 2}", axis=-1),
            n("MatMul", [f"n{b + 2}", f"ffn{b}.up.weight"], [f"up{b}"], name=f"up{b}"),
            n("Add", [f"up{b}", f"ffn{b}.up.bias"], [f"up_b{b}"], name=f"up_bias{b}"),
            n("Relu", [f"up_b{b}"], [f"act{b}"], name=f"relu{b}"),
            n("MatMul", [f"act{b}", f"ffn{b}.down.weight"], [f"down{b}"], name=f"down{b}"),
            n("Add", [f"h{b + 2}", f"down{b}"], [f"h{b + 3}"], name=f"residual{b + 2}"))],
        n("ReduceMean", [f"h{BLOCKS + 2}"], ["pooled"], name="pool", axes=[1], keepdims=0),
        n("Gemm", ["pooled", "action.fc.weight", "action.fc.bias"], ["raw"], name="action_fc", transB=1),
        n("Tanh", ["raw"], ["actions"], name="tanh"),
    ]
    graph = helper.make_graph(
        nodes, "big_policy",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [1, 3, 32, 32]),
         helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, TOKENS])],
        [helper.make_tensor_value_info("actions", TensorProto.FLOAT, [1, 2])],
        initializer=big + [numpy_helper.from_array(a, k) for k, a in small.items()]
        + [numpy_helper.from_array(np.array([1], np.int64), "one")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))  # weights already external: the protobuf is a few MB
    return tensor_bytes(model)


def run_cli(*args: str) -> tuple[subprocess.CompletedProcess, float, float]:
    """``vla-export ARGS`` in a child process: (result, wall seconds, peak RSS in GB of that child)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "vla_export.cli.main", *args], stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read()), wall, usage.ru_maxrss / 1e6


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("big") / "big.onnx"
    assert write_big_onnx(path) > PROTOBUF_LIMIT
    return path


@pytest.fixture(scope="module")
def calib(big) -> Path:
    rng = np.random.default_rng(0)
    path = big.with_name("calib.npz")
    arrays = {"pixel_values": rng.standard_normal((4, 1, 3, 32, 32)).astype(np.float32),
              "input_ids": rng.integers(0, VOCAB, (4, 1, TOKENS)).astype(np.int64)}
    np.savez(path, **arrays, **{META_KEY: np.array(json.dumps({"format": FORMAT, "samples": 4, "windows": []}))})
    return path


RESULTS: dict[str, dict] = {}


@pytest.mark.parametrize("mode", ["--fp16", "--int8-weights", "--int8"])
def test_quantize_over_2gb(big, calib, mode):
    out = big.with_name(f"big{mode.replace('-', '_')}.onnx")
    extra = ["--calib", str(calib)] if mode == "--int8" else []
    result, wall, peak_gb = run_cli("quantize", str(big), mode, *extra, "-o", str(out), "--json", str(out) + ".report.json")
    RESULTS[mode] = {"seconds": round(wall, 1), "peak_rss_gb": round(peak_gb, 2)}
    print(f"\n{mode}: {wall:.1f} s, peak RSS {peak_gb:.2f} GB")
    assert result.returncode == 0, result.stderr
    report = json.loads(Path(str(out) + ".report.json").read_text())
    assert report["options"]["external_data"] is True
    data = out.with_name(out.name + ".data")
    assert out.stat().st_size < 16 << 20 and data.stat().st_size > 256 << 20  # weights outside the protobuf
    check_model(out)  # onnx.checker and shape inference, by path
    model = onnx.load(str(out), load_external_data=False)
    types = {t.name: t.data_type for t in model.graph.initializer}
    ops = {n.op_type for n in model.graph.node}
    io = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)}
    assert io == {"pixel_values": TensorProto.FLOAT, "input_ids": TensorProto.INT64, "actions": TensorProto.FLOAT}
    if mode == "--fp16":
        assert types["embed.weight"] == types["ffn0.up.weight"] == TensorProto.FLOAT16
        assert "LayerNormalization" in ops and "Cast" in ops
    elif mode == "--int8-weights":
        assert types["ffn0.up.weight_int8"] == types["ffn2.down.weight_int8"] == TensorProto.INT8
        assert types["embed.weight"] == TensorProto.FLOAT  # a Gather weight stays float
        assert "QuantizeLinear" not in ops and "DequantizeLinear" in ops
    else:
        assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
        assert any(t == TensorProto.INT8 and "ffn2.down.weight" in name for name, t in types.items())
    assert peak_gb < 8.0


def test_quantized_fp16_model_runs(big):
    """The FP16 model's types agree everywhere (a missing Cast fails session creation): run it once."""
    import onnxruntime as ort

    out = big.with_name("big__fp16.onnx")
    if not out.exists():
        pytest.skip("the --fp16 case did not run")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    feed = {"pixel_values": np.zeros((1, 3, 32, 32), np.float32), "input_ids": np.arange(TOKENS, dtype=np.int64)[None] * 1000}
    (actions,) = session.run(["actions"], feed)
    assert actions.shape == (1, 2) and np.isfinite(actions).all()


def test_budget_refused_over_2gb(big, calib):
    result, _, _ = run_cli("quantize", str(big), "--int8", "--calib", str(calib), "--max-action-error", "0.1", "-o",
                           str(big.with_name("budget.onnx")))
    assert result.returncode == 2
    assert "over protobuf's 2 GB limit" in result.stderr and "Traceback" not in result.stderr


def test_size_is_counted_without_serialising(big):
    """The weightless structure of a 2.25 GB model counts as 2.25 GB; the count never calls ByteSize()."""
    assert file_tensor_bytes(big) == (VOCAB * D + BLOCKS * 2 * D * FFN) * 4 + sum(
        int(np.prod(t.dims)) * (8 if t.data_type == TensorProto.INT64 else 4)
        for t in onnx.load(str(big), load_external_data=False).graph.initializer if not t.external_data)
    loaded = onnx.load(str(big))
    assert not any(t.external_data for t in loaded.graph.initializer)  # loading drops the external marks
    assert needs_external_data(loaded)
