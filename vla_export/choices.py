"""The closed choices of vla-export as ``str`` enums: precision, backend, Q/DQ mode, exporter, calibration method.

One spelling per value, checked where it enters: the CLI's options take these types (Typer turns them into
Click choices, so a bad value fails at parse with the choices listed), and the library compares members, not
string literals. Members are ``str``, so JSON, dict keys and f-strings see the plain value
(``json.dumps(Precision.FP16) == '"fp16"'``). The one mapping from a precision to its torch, NumPy and TensorRT
dtypes, and the one place that accepts torch's spelling (``float16``) for a precision, live here too.
Base layer: imports nothing of vla_export but the errors, and no optional library at import time.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from vla_export.errors import ConfigError


class Choice(str, Enum):
    """A ``str`` enum whose ``str()`` and f-string are its value on every Python (3.10 has no ``StrEnum``)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(m.value for m in cls)


class Precision(Choice):
    """The arithmetic an artifact computes in. ``INT8W`` is weight-only INT8 (activations float)."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"
    INT8W = "int8w"

    @property
    def torch_dtype_name(self) -> str:
        """The name of the ``torch`` dtype a torch runner computes in (INT8 kinds keep float activations)."""
        return _DTYPES[self][0]

    @property
    def numpy_dtype(self) -> Any:
        """The NumPy dtype of tensors at this precision (bf16 has none in NumPy: float32 carries it)."""
        import numpy as np

        return np.dtype(_DTYPES[self][1])

    @property
    def trt_dtype_name(self) -> str:
        """The ``tensorrt.DataType`` member (and builder flag, upper-cased) of this precision."""
        return _DTYPES[self][2]

    @property
    def trt_flag(self) -> str | None:
        """The ``tensorrt.BuilderFlag`` that enables this precision in a weakly typed build (None for FP32)."""
        return _DTYPES[self][3]

    @property
    def compute_dtype_name(self) -> str:
        """The element type the heavy math runs in, as the roofline floor prices it (``vla_export.bench.floor``)."""
        return _DTYPES[self][4]

    def torch_dtype(self) -> Any:
        """The ``torch.dtype`` (imports torch: call it only where torch runs)."""
        import torch

        return getattr(torch, self.torch_dtype_name)

    @property
    def quantized(self) -> bool:
        return self in (Precision.INT8, Precision.INT8W)


#: precision -> (torch dtype name, NumPy dtype name, TensorRT DataType name, TensorRT BuilderFlag name, compute dtype
#: name). INT8 kinds take their inputs in float (torch and NumPy see float32) and run their GEMMs in int8.
_DTYPES: dict[Precision, tuple[str, str, str, str | None, str]] = {
    Precision.FP32: ("float32", "float32", "FLOAT", None, "float32"),
    Precision.FP16: ("float16", "float16", "HALF", "FP16", "float16"),
    Precision.BF16: ("bfloat16", "float32", "BF16", "BF16", "bfloat16"),
    Precision.INT8: ("float32", "float32", "INT8", "INT8", "int8"),
    Precision.INT8W: ("float32", "float32", "INT8", "INT8", "int8"),
}

#: torch's spelling of the float precisions, accepted on input (``--dtype float16``) by :func:`parse_precision`.
TORCH_DTYPE_NAMES: dict[str, Precision] = {"float32": Precision.FP32, "float16": Precision.FP16, "bfloat16": Precision.BF16}

#: The float precisions a torch runner computes in (``--dtype``).
TORCH_PRECISIONS = (Precision.FP32, Precision.FP16, Precision.BF16)

#: The precisions with a default parity tolerance, from the most to the least exact.
TOLERANCE_PRECISIONS = (Precision.FP32, Precision.FP16, Precision.INT8)

#: ``--precision`` of parity and replay: the precisions that pick a default tolerance (a Click choice of those).
ParityPrecision = Choice("ParityPrecision", {p.name: p.value for p in TOLERANCE_PRECISIONS})


def parse_precision(value: str | Precision, *, what: str = "precision") -> Precision:
    """``value`` as a :class:`Precision`, in either vocabulary (``fp16`` or torch's ``float16``); ConfigError otherwise."""
    if isinstance(value, Precision):
        return value
    text = str(value).strip().lower()
    if text in TORCH_DTYPE_NAMES:
        return TORCH_DTYPE_NAMES[text]
    try:
        return Precision(text)
    except ValueError:
        raise ConfigError(f"{what} must be one of {Precision.values() + tuple(TORCH_DTYPE_NAMES)}, got {value!r}") from None


class Backend(Choice):
    """The runtimes a benchmark target or a served model runs on (``vla-bench -b``, ``triton --backend``)."""

    TORCH = "torch"
    ONNXRT = "onnxrt"
    TRT = "trt"


class QdqMode(Choice):
    """How a Q/DQ (INT8) ONNX is computed: ``exact`` (the quantization's own arithmetic), ``kernels``
    (onnxruntime's fused INT8 CPU kernels) or ``both`` (parity only: verdict on exact)."""

    EXACT = "exact"
    KERNELS = "kernels"
    BOTH = "both"


#: The Q/DQ modes one runner (and evaluate) takes: ``both`` is parity running two.
RUNNER_QDQ_MODES = (QdqMode.KERNELS, QdqMode.EXACT)

#: ``--qdq`` of evaluate: one mode, no ``both``.
EvaluateQdq = Choice("EvaluateQdq", {m.name: m.value for m in (QdqMode.EXACT, QdqMode.KERNELS)})


class Exporter(Choice):
    """The torch -> ONNX exporters: ``torch.onnx.export(dynamo=True)`` or the TorchScript fallback."""

    DYNAMO = "dynamo"
    TORCHSCRIPT = "torchscript"


class CalibrationMethod(Choice):
    """INT8 activation calibration (onnxruntime's calibrators)."""

    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"
