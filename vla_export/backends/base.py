"""The runner interface every backend implements (after Polygraphy's BaseRunner).

A runner is activated once (load weights, create sessions or contexts), then ``infer`` maps a
feed of host numpy arrays to host numpy outputs. Benchmarks need the pieces separately, so the
same work is also exposed as ``stage`` (host -> device), ``execute`` (enqueue, may be
asynchronous), ``synchronize`` and ``to_host``. ``infer`` is exactly their composition.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from vla_export.data.preprocess import preprocess_frames
from vla_export.errors import RunnerError


class Runner(abc.ABC):
    """Base class. Subclasses implement ``_activate``, ``_deactivate`` and ``_execute``."""

    #: A short label for reports, e.g. "torch-cpu-fp32" or "onnxrt-CPUExecutionProvider".
    name: str = "runner"
    #: The artifact file this runner runs (ONNX, engine), None for an in-memory module.
    path: Path | None = None
    #: The policy config this runner computes, where the runner knows it (a checkpoint's); else None.
    config: Any = None
    #: Shapes of the inputs and outputs as the artifact declares them (ints, or names of dynamic
    #: axes); empty where the artifact does not say (some are known only after activation).
    input_shapes: Mapping[str, Sequence[Any]] = MappingProxyType({})
    output_shapes: Mapping[str, Sequence[Any]] = MappingProxyType({})

    def __init__(self) -> None:
        self.is_active = False

    # --- lifecycle ---
    def activate(self) -> Runner:
        if self.is_active:
            raise RunnerError(f"{self.name}: already active")
        self._activate()
        self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            try:
                self._deactivate()
            finally:
                self.is_active = False

    def __enter__(self) -> Runner:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    # --- metadata ---
    @property
    @abc.abstractmethod
    def input_names(self) -> Sequence[str]: ...

    @property
    @abc.abstractmethod
    def output_names(self) -> Sequence[str]: ...

    @property
    def device(self) -> str:
        """'cpu' or 'cuda': where ``execute`` runs (decides how benchmarks synchronise)."""
        return "cpu"

    @property
    def precision(self) -> str | None:
        """The element type the weights compute in (``float32``, ``float16``, ``bfloat16``, ``int8``),
        where the runner knows it; None where only the artifact's graph can say (an ONNX file)."""
        return None

    def describe(self) -> dict[str, Any]:
        """What actually ran (provider, precision, device), for reports and manifests."""
        return {"name": self.name, "device": self.device, "precision": self.precision}

    # --- inference ---
    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Host numpy inputs -> host numpy outputs, synchronously."""
        self._require_active()
        self._check_feed(feed)
        outputs = self.execute(self.stage(feed))
        self.synchronize()
        return self.to_host(outputs)

    def preprocess(self, frames: Sequence[np.ndarray], image_size: int) -> Any:
        """Raw uint8 camera frames -> this runner's ``pixel_values`` input, by the shared preprocessing
        (:mod:`vla_export.data.preprocess`). Default: NumPy on the CPU; a GPU runner may run the same
        math on its device and return a device tensor that its ``stage`` takes as it is."""
        return preprocess_frames(frames, image_size)

    def stage(self, feed: Mapping[str, np.ndarray]) -> Any:
        """Copy inputs to where ``execute`` reads them. Default: nothing to do."""
        return dict(feed)

    def execute(self, staged: Any) -> Any:
        """Run on staged inputs; may return before the device finishes (call ``synchronize``)."""
        self._require_active()
        return self._execute(staged)

    def synchronize(self) -> None:
        """Wait for all work enqueued by ``execute``. Default: CPU work is already done."""

    def to_host(self, outputs: Any) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in outputs.items()}

    # --- for subclasses ---
    @abc.abstractmethod
    def _activate(self) -> None: ...

    def _deactivate(self) -> None:
        pass

    @abc.abstractmethod
    def _execute(self, staged: Any) -> Any: ...

    def _require_active(self) -> None:
        if not self.is_active:
            raise RunnerError(f"{self.name}: call activate() (or use it as a context manager) before inference")

    def _check_feed(self, feed: Mapping[str, np.ndarray]) -> None:
        missing = [n for n in self.input_names if n not in feed]
        extra = [n for n in feed if n not in self.input_names]
        if missing or extra:
            raise RunnerError(
                f"{self.name}: inputs do not match: missing {missing or 'none'}, unexpected {extra or 'none'} "
                f"(expects {list(self.input_names)})"
            )
