"""ONNX Runtime backend: CPU, or CUDA with onnxruntime-gpu; reports the provider that actually runs."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vla_export.choices import RUNNER_QDQ_MODES, QdqMode
from vla_export.backends.base import Runner
from vla_export.artifacts.onnxfile import require_external_data
from vla_export.errors import ArtifactError, RunnerError
from vla_export.lazy import lazy_import

log = logging.getLogger(__name__)

GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
#: How Q/DQ (INT8) graphs are computed. "kernels": onnxruntime fuses DequantizeLinear -> MatMul/Conv
#: into its integer kernels (what a CPU deployment runs; on x86 without VNNI they add an error of their
#: own, e.g. int16 saturation in the AVX2 u8s8 path). "exact": the Q/DQ fusions are off, so every
#: DequantizeLinear is computed in float and the result is the quantized model's own arithmetic
#: (what TensorRT's INT8 GEMMs approximate), the same on every CPU: what accuracy checks must measure.
QDQ_MODES = tuple(m.value for m in RUNNER_QDQ_MODES)
EXACT_QDQ_CONFIG = {"session.disable_quant_qdq": "1"}


def default_providers(available: Sequence[str]) -> list[str]:
    """CUDA first when this onnxruntime has it, then CPU (ORT's own TensorRT provider is opt-in)."""
    return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + ["CPUExecutionProvider"]


class OnnxrtRunner(Runner):
    """Runs an ONNX file with onnxruntime.

    onnxruntime-gpu silently falls back to CPU when the CUDA libraries cannot be loaded; ``describe()``
    names the provider that was requested and the one that actually runs, and a warning is logged.
    """

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None, *, threads: int | None = None,
                 qdq: str = QdqMode.KERNELS):
        super().__init__()
        if qdq not in QDQ_MODES:
            raise RunnerError(f"qdq must be one of {QDQ_MODES}, got {qdq!r}")
        self.path = Path(path)
        self.requested = list(providers) if providers else None
        self.threads = threads
        self.qdq = qdq
        self.session = None
        self.provider = "not active"
        self.name = f"onnxrt:{self.path.name}"

    def _activate(self) -> None:
        ort = lazy_import("onnxruntime", purpose="running ONNX models")
        require_external_data(self.path)
        available = ort.get_available_providers()
        requested = self.requested or default_providers(available)
        unknown = [p for p in requested if p not in available]
        if unknown:
            raise RunnerError(f"{self.path.name}: onnxruntime {ort.__version__} has no {unknown} (available: {available})")
        opts = ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = self.threads
        for key, value in self.session_config().items():
            opts.add_session_config_entry(key, value)
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=requested)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise ArtifactError(f"{self.path}: onnxruntime cannot load it: {str(exc).splitlines()[0]}") from None
        actual = self.session.get_providers()
        self.provider = actual[0]
        self.fallback = requested[0] != actual[0]
        if self.fallback:
            log.warning("%s: requested %s but onnxruntime runs on %s (CUDA libraries missing?)", self.path.name, requested[0], actual[0])
        self._requested_providers = requested
        self._inputs = [i.name for i in self.session.get_inputs()]
        self._outputs = [o.name for o in self.session.get_outputs()]
        self.name = f"onnxrt-{self.provider.replace('ExecutionProvider', '').lower()}"

    def session_config(self) -> dict[str, str]:
        """The onnxruntime session config entries this runner sets (see :data:`QDQ_MODES`)."""
        return dict(EXACT_QDQ_CONFIG) if self.qdq == QdqMode.EXACT else {}

    def _deactivate(self) -> None:
        self.session = None

    def _meta(self):
        self._require_active()
        return self.session

    @property
    def input_names(self) -> Sequence[str]:
        return self._inputs if self.session else ()

    @property
    def output_names(self) -> Sequence[str]:
        return self._outputs if self.session else ()

    @property
    def input_shapes(self) -> dict[str, list[Any]]:
        """Input name -> shape, with dim names (str) for dynamic axes."""
        return {i.name: list(i.shape) for i in self._meta().get_inputs()}

    @property
    def output_shapes(self) -> dict[str, list[Any]]:
        return {o.name: list(o.shape) for o in self._meta().get_outputs()}

    @property
    def device(self) -> str:
        return "cuda" if self.provider in GPU_PROVIDERS else "cpu"

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort  # activated, so importable

        info = super().describe() | {"path": str(self.path), "provider": self.provider, "onnxruntime": ort.__version__,
                                     "qdq_arithmetic": self.qdq}
        if self.session is not None:
            info["requested_providers"] = self._requested_providers
            info["fallback"] = self.fallback
        return info

    def stage(self, feed):
        """Host arrays on the CPU provider; on a GPU provider, device copies bound with IOBinding, so
        ``execute`` (what compute-mode benchmarks time) runs the graph and nothing else."""
        host = {k: np.ascontiguousarray(feed[k]) for k in self.input_names}
        if self.device != "cuda":
            return host
        ort = lazy_import("onnxruntime", purpose="running ONNX models")
        binding = self.session.io_binding()
        values = {k: ort.OrtValue.ortvalue_from_numpy(v, "cuda", 0) for k, v in host.items()}
        for name, value in values.items():
            binding.bind_ortvalue_input(name, value)
        for name in self._outputs:
            binding.bind_output(name, "cuda", 0)
        return _Bound(binding, values)

    def _execute(self, staged):
        if self.session is None:
            raise RunnerError(f"{self.name}: not active")
        try:
            if isinstance(staged, _Bound):
                self.session.run_with_iobinding(staged.binding)
                return staged
            # session.run returns host arrays after the work is done, so synchronize() has nothing to wait for.
            return dict(zip(self._outputs, self.session.run(self._outputs, staged)))
        except Exception as exc:  # onnxruntime's InvalidArgument etc.: wrong shapes or dtypes for this graph
            raise RunnerError(f"{self.path.name}: onnxruntime run failed: {str(exc).splitlines()[0]}") from None

    def synchronize(self) -> None:
        # run_with_iobinding returns once the run is done; outputs bound on the device need no extra wait.
        pass

    def to_host(self, outputs):
        if isinstance(outputs, _Bound):
            return dict(zip(self._outputs, outputs.binding.copy_outputs_to_cpu()))
        return super().to_host(outputs)


@dataclass(frozen=True)
class _Bound:
    """Inputs staged on the device: the IOBinding and the OrtValues it points to (kept alive with it)."""

    binding: Any
    values: dict[str, Any]
