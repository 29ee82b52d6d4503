"""The one place that turns an artifact into what runs it, chosen by its kind.

The kind comes from :func:`vla_export.artifacts.kinds.detect_kind` (the file name) or the
``preset:NAME`` prefix. ``.onnx`` -> :class:`~vla_export.backends.onnxrt.OnnxrtRunner`;
``.engine``/``.plan`` -> the TensorRT runner (imported only then); a checkpoint or a preset ->
:class:`~vla_export.backends.torch_runner.TorchRunner` over a lazy loader (:func:`model_loader`).
Parity, benchmarks, replay, the robot runtime and serve all go through here; the streaming
:class:`~vla_export.runtime.Policy` of a split record is built from these runners by
:func:`vla_export.runtime.select.policy_for_artifact`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vla_export.artifacts.kinds import PRESET_PREFIX, detect_kind, is_kind
from vla_export.backends.base import Runner
from vla_export.errors import ArtifactError
from vla_export.lazy import extra_install, lazy_import

#: The kinds a single runner exists for (a split record is two: see vla_export.runtime.policy_for_artifact).
RUNNER_KINDS = ("onnx", "engine", "checkpoint")
#: Kinds whose runner is a PyTorch model (a checkpoint's weights, or a preset's seeded random ones).
MODEL_KINDS = ("checkpoint", "preset")


def preset_name(artifact: str | Path) -> str | None:
    """``NAME`` for ``preset:NAME``, else None."""
    text = str(artifact)
    return text[len(PRESET_PREFIX):] if text.startswith(PRESET_PREFIX) else None


def artifact_kind(artifact: str | Path, *, allowed: Sequence[str] = RUNNER_KINDS, otherwise: str | None = None) -> str:
    """The kind of ``artifact`` among ``allowed`` ('preset' for ``preset:NAME`` where allowed); for anything
    else ``otherwise`` where given, else an :class:`ArtifactError` (one line, listing the accepted endings)."""
    if "preset" in allowed and preset_name(artifact) is not None:
        return "preset"
    files = tuple(k for k in allowed if k != "preset")
    if otherwise is not None:
        return next((k for k in files if is_kind(artifact, k)), otherwise)
    return detect_kind(artifact, allowed=files)


def is_model_artifact(artifact: str | Path) -> bool:
    """Whether ``artifact`` is a PyTorch model (a checkpoint file or ``preset:NAME``), not an exported one."""
    return artifact_kind(artifact, allowed=MODEL_KINDS, otherwise="") in MODEL_KINDS


def model_loader(artifact: str | Path, *, load: Any = None, device: str = "cpu", seed: int = 0) -> Any:
    """The lazy loader of a checkpoint or preset: calling it gives the policy.

    A checkpoint loads with ``load`` (:class:`~vla_export.models.resolve.LoadOptions`, the CLI's
    ``--config/--rename/--set``); a preset is built with seeded random weights directly on ``device``.
    """
    from vla_export.models.loader import PolicyFromCheckpoint, PresetPolicy

    kind = artifact_kind(artifact, allowed=MODEL_KINDS)
    if kind == "preset":
        from vla_export.models.config import get_preset

        if load is not None and load.given:  # refused, not dropped: a preset has its own config and no file
            from vla_export.errors import ConfigError

            raise ConfigError(f"{artifact}: a preset has its own config; --config, --rename, --set and --trust-checkpoint load a checkpoint")
        return PresetPolicy(get_preset(preset_name(artifact) or ""), device=device, seed=seed)
    if not Path(artifact).exists():
        raise ArtifactError(f"{artifact}: not found")
    return PolicyFromCheckpoint(artifact, options=load)


def runner_for_artifact(
    artifact: str | Path, *, providers: Sequence[str] | None = None, load: Any = None, seed: int = 0,
    allowed: Sequence[str] = RUNNER_KINDS, **opts: Any,
) -> Runner:
    """The runner for ``artifact``, not activated.

    ``providers`` are onnxruntime execution providers for an ONNX file (an engine or a PyTorch model
    runs where its format says, so they do not apply there). ``load`` and ``seed`` say how a checkpoint
    or preset is loaded (:func:`model_loader`); ``opts`` go to the runner (engine options, or
    :class:`~vla_export.backends.torch_runner.TorchRunner`'s). ``allowed`` adds ``preset`` where a
    caller serves presets (benchmarks).
    """
    kind = artifact_kind(artifact, allowed=allowed)
    if kind in MODEL_KINDS:
        from vla_export.backends.torch_runner import TorchRunner

        return TorchRunner(model_loader(artifact, load=load, device=opts.get("device", "cpu"), seed=seed), **opts)
    path = Path(artifact)
    if not path.exists():
        raise ArtifactError(f"{path}: not found")
    if kind == "onnx":
        from vla_export.backends.onnxrt import OnnxrtRunner

        return OnnxrtRunner(path, **({"providers": list(providers)} if providers else {}), **opts)
    trt = lazy_import("vla_export.backends.tensorrt", purpose="running TensorRT engines", install=extra_install("trt"))
    return trt.TrtRunner(path, **opts)
