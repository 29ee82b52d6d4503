"""trtexec's spellings on `vla-export trt`, and trtexec lines read from the graph without its weights (issue 23 item 3)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import assert_one_error

SHAPES = {"pixel_values": ("1x4x3x224x224",) * 3, "input_ids": ("1x1", "1x16", "1x32"), "attention_mask": ("1x1", "1x16", "1x32")}


def _line(r) -> str:
    assert r.exit_code == 0, r
    return next(line for line in r.stdout.splitlines() if line.startswith("trtexec "))


def test_trtexec_spellings_give_the_same_build(cli, tiny_onnx, tmp_path):
    native = ["--fp16", "-o", tmp_path / "t.engine", "--workspace", "1024", "--timing-cache", tmp_path / "tc", "--typing", "auto",
              *[a for n, (lo, mid, hi) in SHAPES.items() for a in ("--shape", f"{n}={lo}:{mid}:{hi}")]]
    spelled = ["--fp16", f"--saveEngine={tmp_path / 't.engine'}", "--memPoolSize=workspace:1G", f"--timingCacheFile={tmp_path / 'tc'}",
               *(f"--{w}Shapes=" + ",".join(f"{n}:{s[i]}" for n, s in SHAPES.items()) for i, w in enumerate(("min", "opt", "max")))]
    a = _line(cli("trt", tiny_onnx, *native, "--print-trtexec"))
    b = _line(cli("trt", tiny_onnx, *spelled, "--print-trtexec"))
    assert a == b and "--memPoolSize=workspace:1024M" in a and "input_ids:1x32" in a


def test_strongly_typed_and_dla_core_spellings(cli, tiny_onnx, tmp_path):
    line = _line(cli("trt", tiny_onnx, "-o", tmp_path / "t.engine", "--stronglyTyped", "--print-trtexec"))
    assert "--stronglyTyped" in line
    line = _line(cli("trt", tiny_onnx, "-o", tmp_path / "t.engine", "--fp16", "--useDLACore", "0", "--print-trtexec"))
    assert "--useDLACore=0" in line and "--allowGPUFallback" in line


@pytest.mark.parametrize("args, says", [
    (("--stronglyTyped", "--typing", "weak"), "contradict"),
    (("--memPoolSize", "workspace:1G", "--workspace", "10"), "set the same limit"),
    (("--memPoolSize", "dlaSRAM:1M"), "only the workspace pool"),
    (("--memPoolSize", "workspace:lots"), "workspace:SIZE[K|M|G]"),
    (("--minShapes", "input_ids:1x1"), "--optShapes, --maxShapes missing"),
    (("--minShapes", "input_ids:1x1", "--optShapes", "input_ids:1x8", "--maxShapes", "attention_mask:1x9"), "name the same inputs"),
    (("--minShapes", "input_ids:1x1", "--optShapes", "input_ids:1x8", "--maxShapes", "input_ids:1x9", "--shape", "input_ids=1x1:1x2:1x3"),
     "given by both"),
    (("--minShapes", "input_ids=1x1", "--optShapes", "input_ids:1x8", "--maxShapes", "input_ids:1x9"), "NAME:DIMS"),
])
def test_contradicting_or_malformed_spellings_are_refused(cli, tiny_onnx, tmp_path, args, says):
    assert_one_error(cli("trt", tiny_onnx, "-o", tmp_path / "t.engine", "--print-trtexec", *args), 2, says)


def test_trtexec_line_reads_names_without_weight_values(tmp_path):
    """The layer rules come from the graph alone: a model with 40 MB of inline weights is held as a few KB."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from vla_export.export.trt import read_onnx_facts
    from vla_export.artifacts.onnxfile import NOT_LOADED, load_graph

    w = numpy_helper.from_array(np.ones((1000, 10000), np.float32), "W")
    shape = numpy_helper.from_array(np.array([1, 10000], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
         helper.make_node("Reshape", ["h", "shape"], ["r"], name="reshape"),
         helper.make_node("LayerNormalization", ["r", "scale"], ["y"], name="ln", axis=-1)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1000])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10000])],
        [w, shape, numpy_helper.from_array(np.ones(10000, np.float32), "scale")])
    path = tmp_path / "big.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    assert path.stat().st_size > 40e6
    model = load_graph(path)
    assert model.ByteSize() < 100_000
    kept = {i.name: i for i in model.graph.initializer}
    assert kept["W"].external_data[0].value == NOT_LOADED and list(kept["W"].dims) == [1000, 10000]
    assert numpy_helper.to_array(kept["shape"]).tolist() == [1, 10000]  # small constants keep their values
    facts = read_onnx_facts(path)
    assert facts.sensitive == {"ln": "layernorm"} and "reshape" not in facts.non_float
