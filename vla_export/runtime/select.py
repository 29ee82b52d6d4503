"""Artifact -> streaming :class:`~vla_export.runtime.policy.Policy`: the one function that builds it.

Replay, evaluate, the streaming benchmark and serve ask here. A split export runs its two parts
(:meth:`Policy.from_artifacts`, each part's runner from
:func:`~vla_export.backends.select.runner_for_artifact`); a checkpoint or ``preset:NAME`` runs its
parts in PyTorch (:func:`~vla_export.runtime.parts.torch_streaming_policy`, imported only then, so a
robot without torch can still ask for a split export's policy).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vla_export.backends.base import Runner
from vla_export.backends.select import is_model_artifact, model_loader, preset_name
from vla_export.errors import ConfigError
from vla_export.runtime.policy import Policy


def policy_for_artifact(
    artifact: str | Path,
    *,
    backbone: str | Path | Runner | None = None,
    head: str | Path | Runner | None = None,
    tokenizer: Any = None,
    tokenizer_dir: str | Path | None = None,
    window: int | None = None,
    text_len: int | None = None,
    providers: Sequence[str] | None = None,
    load: Any = None,
    seed: int = 0,
    runner_opts: dict[str, Any] | None = None,
) -> Policy:
    """The streaming policy of ``artifact``, not activated.

    A split export (``NAME.split.json``, its prefix ``NAME`` or its folder): ``backbone``/``head`` replace a
    part by another artifact (e.g. a TensorRT engine built from it) or by a runner (Triton's backbone model);
    ``providers`` go to ONNX Runtime parts. A checkpoint (loaded with ``load``, the CLI's loading options)
    or ``preset:NAME`` (seeded random weights, ``seed``): its parts in PyTorch with ``runner_opts``
    (:class:`~vla_export.backends.torch_runner.ModuleRunner` options: device, dtype, ...). An option that
    does not apply to the artifact's kind is refused (ConfigError), not dropped.
    """
    if is_model_artifact(artifact):
        given = [flag for flag, value in (("backbone", backbone), ("head", head), ("providers", providers)) if value]
        if given:
            raise ConfigError(f"{artifact}: {', '.join(given)} apply to the parts of a split export, not to a PyTorch model")
        return _torch_policy(artifact, tokenizer=tokenizer, tokenizer_dir=tokenizer_dir, window=window, text_len=text_len, load=load,
                             seed=seed, runner_opts=runner_opts or {})
    if (load is not None and load.given) or runner_opts:
        raise ConfigError(f"{artifact}: loading and PyTorch runner options apply to a checkpoint or preset, not to a split export")
    return Policy.from_artifacts(artifact, backbone=backbone, head=head, tokenizer=tokenizer, tokenizer_dir=tokenizer_dir, window=window,
                                 text_len=text_len, providers=providers)


def _torch_policy(artifact: str | Path, *, tokenizer: Any, tokenizer_dir: Any, window: int | None, text_len: int | None, load: Any,
                  seed: int, runner_opts: dict[str, Any]) -> Policy:
    """A checkpoint's or preset's parts in PyTorch (a preset's random weights take the built-in tokenizer: it fits any vocabulary)."""
    from vla_export.data.tokenizer import BuiltinTokenizer, tokenizer_for
    from vla_export.runtime.parts import torch_streaming_policy

    loaded = model_loader(artifact, load=load, device=str(runner_opts.get("device", "cpu")), seed=seed)()
    cfg = getattr(loaded, "policy", loaded).cfg
    if tokenizer is None:
        tokenizer = BuiltinTokenizer(cfg) if preset_name(artifact) is not None else tokenizer_for(cfg, tokenizer_dir)
    return torch_streaming_policy(loaded, tokenizer=tokenizer, window=window, text_len=text_len, **runner_opts)
