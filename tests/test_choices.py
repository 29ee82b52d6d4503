"""Closed choices as enums (vla_export/choices.py): JSON stays plain, one dtype mapping, no precision literal
elsewhere in the package, and a bad value on the command line fails at parse in one line."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import assert_one_error
from vla_export.choices import (TORCH_DTYPE_NAMES, CalibrationMethod, Exporter, ParityPrecision, Precision, QdqMode,
                                parse_precision)
from vla_export.errors import ConfigError, ExitCode

PACKAGE = Path(__file__).resolve().parents[1] / "vla_export"
ENUM_MODULE = PACKAGE / "choices.py"
#: (file, value) pairs where the spelling is not a precision: bench/floor.py keys its byte and peak-rate tables by
#: NumPy element type, and NumPy spells its 8-bit integer "int8".
NOT_A_PRECISION = {("bench/floor.py", "int8")}


# --- str enums: JSON, dict keys and f-strings see the plain value ------------------------------------------

def test_members_serialise_as_their_values():
    assert json.dumps(Precision.FP16) == '"fp16"'
    assert json.dumps({Precision.INT8W: [QdqMode.BOTH, Exporter.DYNAMO, CalibrationMethod.ENTROPY]}) == '{"int8w": ["both", "dynamo", "entropy"]}'
    assert f"--{Precision.INT8}" == "--int8" and str(Precision.FP32) == "fp32" and f"{Precision.FP16:>5}" == " fp16"
    assert {"fp16": 1}[Precision.FP16] == 1 and Precision.FP16 == "fp16"
    assert ParityPrecision.values() == ("fp32", "fp16", "int8") and ParityPrecision.INT8 == Precision.INT8


# --- one mapping from a precision to its dtypes ----------------------------------------------------------------

@pytest.mark.parametrize("precision, torch_name, numpy_dtype, trt_type, trt_flag", [
    (Precision.FP32, "float32", np.float32, "FLOAT", None),
    (Precision.FP16, "float16", np.float16, "HALF", "FP16"),
    (Precision.BF16, "bfloat16", np.float32, "BF16", "BF16"),
    (Precision.INT8, "float32", np.float32, "INT8", "INT8"),
    (Precision.INT8W, "float32", np.float32, "INT8", "INT8"),
])
def test_dtype_mapping(precision, torch_name, numpy_dtype, trt_type, trt_flag):
    from tests.fake_tensorrt import DATA_TYPES

    assert precision.torch_dtype_name == torch_name
    assert precision.numpy_dtype == np.dtype(numpy_dtype)
    assert precision.trt_dtype_name == trt_type and trt_type in DATA_TYPES  # a real tensorrt.DataType member name
    assert precision.trt_flag == trt_flag
    assert set(Precision) == set(p for p in Precision if p.torch_dtype_name)  # every member is mapped


def test_torch_dtypes_are_real():
    torch = pytest.importorskip("torch")
    assert Precision.FP16.torch_dtype() is torch.float16 and Precision.BF16.torch_dtype() is torch.bfloat16
    assert Precision.INT8.torch_dtype() is torch.float32  # INT8 kinds take float inputs


def test_both_vocabularies_are_accepted_on_input_and_nothing_else():
    assert [parse_precision(n) for n in ("float32", "float16", "bfloat16")] == [Precision.FP32, Precision.FP16, Precision.BF16]
    assert [parse_precision(p.value) for p in Precision] == list(Precision)
    assert all(parse_precision(n).torch_dtype_name == n for n in TORCH_DTYPE_NAMES)  # the two directions agree
    with pytest.raises(ConfigError, match="'float8'"):
        parse_precision("float8")


def test_the_torch_and_bench_vocabularies_derive_from_the_enum():
    from vla_export.backends.torch_runner import DTYPES
    from vla_export.bench.targets import DTYPE_ALIASES
    from vla_export.serve.repository import TORCH_DTYPES

    assert DTYPES == TORCH_DTYPES == ("float32", "float16", "bfloat16")
    assert DTYPE_ALIASES == {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


# --- no precision literal outside the enum's module -------------------------------------------------------------

def precision_literals(source: str, names: frozenset[str] = frozenset(Precision.values())) -> list[tuple[int, str]]:
    """(line, value) of each string constant spelling one of ``names`` (a precision), docstrings and f-string text excepted."""
    tree = ast.parse(source)
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                skip.add(id(first.value))
        if isinstance(node, ast.JoinedStr):
            skip.update(id(v) for v in node.values if isinstance(v, ast.Constant))
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in names and id(n) not in skip]


def test_the_scan_finds_values_and_spares_text():
    source = '"""Docstring: fp16."""\ndef f(p):\n    """int8 here is text."""\n    msg = f"--int8 {p}"\n    return p == "fp16" or p in ("int8w",)\n'
    assert precision_literals(source) == [(5, "fp16"), (5, "int8w")]


def test_no_precision_literal_outside_the_enum_module():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == ENUM_MODULE:
            continue
        rel = path.relative_to(PACKAGE).as_posix()
        found += [f"{rel}:{line}: {value!r}" for line, value in precision_literals(path.read_text())
                  if (rel, value) not in NOT_A_PRECISION]
    assert not found, "use vla_export.choices.Precision:\n" + "\n".join(found)


# --- the CLI: enum options fail at parse, in one line, with the choices ----------------------------------------

@pytest.mark.parametrize("args, needles", [
    (("parity", "a.pt", "b.onnx", "--precision", "int8w"), ("--precision", "'int8w'", "'fp32', 'fp16', 'int8'")),
    (("parity", "a.pt", "b.onnx", "--qdq", "fast"), ("--qdq", "'exact', 'kernels', 'both'")),
    (("evaluate", "a.pt", "--qdq", "both"), ("--qdq", "'exact', 'kernels'")),
    (("onnx", "a.pt", "--exporter", "jit"), ("--exporter", "'dynamo', 'torchscript'")),
    (("quantize", "a.onnx", "--int8", "--method", "max"), ("--method", "'minmax', 'entropy', 'percentile'")),
    (("replay", "a.pt", "b.split.json", "c.h5", "--precision", "bf16"), ("--precision", "'fp32', 'fp16', 'int8'")),
])
def test_a_bad_choice_fails_at_parse_in_one_line(cli, args, needles):
    line = assert_one_error(cli(*args), ExitCode.BAD_INPUT, *needles)
    assert "Value error" not in line


@pytest.mark.parametrize("args", [
    ("parity", "a.pt", "b.onnx", "--precision", "int8", "--qdq", "kernels"),
    ("onnx", "a.pt", "--exporter", "torchscript", "--opset", "17"),
    ("quantize", "a.onnx", "--int8", "--method", "entropy"),
])
def test_the_existing_spellings_still_parse(cli, args):
    """Past the parser: the command then stops at the missing input file, not at the choice."""
    line = assert_one_error(cli(*args), ExitCode.BAD_INPUT, "not found")
    assert "is not one of" not in line


# --- the policy's I/O names: data/iospec.py is the one table ------------------------------------------------------

#: Modules that may spell the input names: iospec itself; data/source.py, which iospec builds its dummy inputs on
#: (importing iospec there would be an import cycle); the Triton model template, which runs inside Triton's Python
#: backend without vla_export installed.
IO_NAME_HOLDERS = {"data/iospec.py", "data/source.py", "serve/templates/policy_model.py"}


def test_the_input_names_are_iospecs():
    from vla_export.data import iospec

    assert iospec.INPUT_NAMES == (iospec.PIXEL_VALUES, iospec.INPUT_IDS, iospec.ATTENTION_MASK)
    assert iospec.POLICY.output_names(debug=True) == (iospec.ACTIONS, iospec.FEATURES)
    assert iospec.BACKBONE.output_names() == (iospec.FEATURE,) and iospec.HEAD.input_names == (iospec.FEATURES,)


def test_pixel_values_is_spelt_only_in_iospec():
    assert precision_literals('x = {"pixel_values": 1}', frozenset({"pixel_values"})) == [(1, "pixel_values")]  # the scan sees it
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel not in IO_NAME_HOLDERS:
            found += [f"{rel}:{line}" for line, _ in precision_literals(path.read_text(), frozenset({"pixel_values", "attention_mask"}))]
    assert not found, "use vla_export.data.iospec's names:\n" + "\n".join(found)
