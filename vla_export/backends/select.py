"""One place that turns an artifact path into the runner for it, chosen by suffix.

``.onnx`` -> :class:`~vla_export.backends.onnxrt.OnnxrtRunner`; ``.engine``/``.plan`` -> the TensorRT
runner (imported only then); a checkpoint -> :class:`~vla_export.backends.torch_runner.TorchRunner`
over a lazy strict loader. Parity, benchmarks and the robot runtime all go through here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vla_export.artifacts.kinds import detect_kind
from vla_export.backends.base import Runner
from vla_export.errors import ArtifactError
from vla_export.lazy import extra_install, lazy_import


def artifact_kind(path: str | Path) -> str:
    """'onnx', 'engine' or 'checkpoint' (the kinds a runner exists for); :class:`ArtifactError` for anything else."""
    return detect_kind(path, allowed=("onnx", "engine", "checkpoint"))


def runner_for_artifact(path: str | Path, **opts: Any) -> Runner:
    """The runner for ``path``. ``opts`` go to the runner: ``providers`` (ONNX), engine options, or
    TorchRunner options plus ``config``/``renames``/``trust`` for the checkpoint loader.
    """
    path = Path(path)
    kind = artifact_kind(path)
    if not path.exists():
        raise ArtifactError(f"{path}: not found")
    if kind == "onnx":
        from vla_export.backends.onnxrt import OnnxrtRunner

        return OnnxrtRunner(path, **opts)
    if kind == "engine":
        trt = lazy_import("vla_export.backends.tensorrt", purpose="running TensorRT engines", install=extra_install("trt"))
        return trt.TrtRunner(path, **opts)
    from vla_export.backends.torch_runner import TorchRunner
    from vla_export.models.loader import PolicyFromCheckpoint

    loader_keys = ("config", "renames", "trust")
    loader = PolicyFromCheckpoint(path, **{k: opts.pop(k) for k in loader_keys if k in opts})
    return TorchRunner(loader, **opts)
