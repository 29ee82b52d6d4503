"""Saved references: PyTorch outputs recorded on the workstation, checked against on the robot without torch.

The checkpoint (7 GB) and torch stay on the workstation. There, ``vla-export parity CKPT ARTIFACT
--save-reference ref.npz`` (and ``replay ... --save-reference``) records every input the reference
runner was fed and every output it gave, with the policy config and the checkpoint's sha256. On the
device, ``vla-export parity ref.npz ENGINE`` replays those recordings through :class:`PlaybackRunner`
in place of the PyTorch runner, so the comparison is the same code (:func:`vla_export.verify.parity.compare_runners`,
:func:`vla_export.runtime.replay.replay_episode`) with the same metrics and tolerances.

A reference is refused when its config differs from the artifact's manifest, when it is of the other
kind (parity vs replay), when its schema is unknown, or when the inputs it is asked for are not the
inputs it was made from. NumPy only: no torch import here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vla_export.artifacts.reference import SavedReference, load_reference, save_reference
from vla_export.choices import Precision, QdqMode
from vla_export.data.iospec import FEATURES
from vla_export.backends.base import Runner
from vla_export.artifacts.manifest import Manifest, read_manifest
from vla_export.errors import ArtifactError, ConfigError
from vla_export.models.config import PolicyConfig

log = logging.getLogger(__name__)

#: Float inputs may differ this much from the recorded ones (preprocessing on another CPU); integers must match.
INPUT_ATOL = 1e-5


class RecordingRunner(Runner):
    """Wraps a runner and records every feed and output (the workstation side)."""

    def __init__(self, inner: Runner):
        super().__init__()
        self.inner = inner
        self.name = inner.name
        self.records: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = []

    @property
    def input_names(self) -> Sequence[str]:
        return self.inner.input_names

    @property
    def output_names(self) -> Sequence[str]:
        return self.inner.output_names

    @property
    def device(self) -> str:
        return self.inner.device

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def _activate(self) -> None:
        if not self.inner.is_active:
            self.inner.activate()
        cfg = self.inner.config  # a TorchRunner's PolicyConfig
        self.config = cfg.to_dict() if cfg is not None else None

    def _deactivate(self) -> None:
        self.inner.deactivate()

    def _execute(self, staged: Any) -> Any:
        feed = {k: np.array(v, copy=True) for k, v in staged.items()}
        out = self.inner.infer(feed)
        self.records.append((feed, {k: np.array(v, copy=True) for k, v in out.items()}))
        return out


class PlaybackRunner(Runner):
    """Gives the recorded outputs, call by call, after checking each feed is the recorded one (the device side)."""

    def __init__(self, records: Sequence[tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]]], *, describe: Mapping[str, Any],
                 source: str | Path, input_atol: float = INPUT_ATOL):
        super().__init__()
        if not records:
            raise ArtifactError(f"{source}: the reference holds no samples")
        self.records, self.source, self.input_atol = list(records), Path(source), input_atol
        self.name = f"reference:{self.source.name}"
        self._describe = dict(describe)
        self._next = 0

    @property
    def input_names(self) -> Sequence[str]:
        return tuple(self.records[0][0])

    @property
    def output_names(self) -> Sequence[str]:
        return tuple(self.records[0][1])

    @property
    def device(self) -> str:
        return "saved"

    def describe(self) -> dict[str, Any]:
        return dict(self._describe) | {"name": self.name, "reference_file": str(self.source)}

    def _activate(self) -> None:
        self._next = 0

    def _execute(self, staged: Any) -> Any:
        if self._next >= len(self.records):
            raise ArtifactError(f"{self.source}: asked for sample {self._next + 1}, the reference holds {len(self.records)}")
        feed, outputs = self.records[self._next]
        for name, want in feed.items():
            got = np.asarray(staged[name])
            same = got.shape == want.shape and (
                np.allclose(got, want, rtol=0, atol=self.input_atol) if np.issubdtype(want.dtype, np.floating) else np.array_equal(got, want)
            )
            if not same:
                raise ArtifactError(
                    f"{self.source}: input '{name}' of sample {self._next} is not the one the reference was made from "
                    f"(shape {got.shape} vs {want.shape}): another episode, window or prompt?"
                )
        self._next += 1
        return {k: v.copy() for k, v in outputs.items()}


def playback(reference: SavedReference) -> PlaybackRunner:
    """A runner that plays ``reference``'s recorded outputs back for its recorded inputs."""
    return PlaybackRunner(reference.records, describe=reference.meta.get("reference_runner", {}), source=reference.path)

def check_reference_path(path: str | Path) -> Path:
    """Where ``--save-reference`` writes: an .npz, refused before any work (the load and the comparison take minutes)."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ConfigError(f"{path}: --save-reference writes an .npz file (e.g. {path.with_suffix('.npz').name})")
    return path


def check_config(reference: SavedReference, config: PolicyConfig | Mapping[str, Any] | None, what: str | Path) -> None:
    """Refuse a reference made for another policy config than ``what``'s (its manifest's ``config``)."""
    if config is None:
        log.warning("%s: no policy config recorded beside it; the reference's config (%s) cannot be checked", what,
                    reference.config.get("name"))
        return
    config = config.to_dict() if isinstance(config, PolicyConfig) else config
    config = json.loads(json.dumps(dict(config), default=str))  # tuples -> lists, as the file holds them
    keys = sorted(set(config) | set(reference.config))
    differ = [k for k in keys if config.get(k) != reference.config.get(k)]
    if differ:
        shown = ", ".join(f"{k}: reference {reference.config.get(k)!r}, artifact {config.get(k)!r}" for k in differ[:5])
        raise ArtifactError(f"{reference.path} was made for another policy config than {what} ({shown})")


def checkpoint_record(checkpoint_path: str | Path) -> dict[str, Any]:
    from vla_export.fileio import sha256_file

    return {"path": str(checkpoint_path), "sha256": sha256_file(checkpoint_path)}


def versions_record() -> dict[str, str | None]:
    from vla_export.artifacts.manifest import versions

    return versions(("vla-export", "torch", "transformers", "numpy"))


# --- the workflows: record on the workstation, check on the device -------------------------------------

def _meta(recorder: RecordingRunner, checkpoint: Any, **extra: Any) -> dict[str, Any]:
    if recorder.config is None:
        raise ConfigError("the reference runner recorded no policy config")
    record = checkpoint if isinstance(checkpoint, dict) else checkpoint_record(checkpoint)
    return {"config": recorder.config, "checkpoint": record, "reference_runner": recorder.describe(),
            "versions": versions_record()} | extra


def parity_with_saved_reference(policy_loader: Any, artifact: str | Path, save_to: str | Path | None = None, *,
                                save_inputs: str | Path | None = None, save_outputs: str | Path | None = None,
                                save_trtexec: str | Path | None = None, run: Any = None, config: Any = None,
                                checkpoint: Any = None, **parity_kwargs: Any):
    """:func:`vla_export.verify.parity.parity_check` (or ``run``, called like it) that also saves what the reference
    runner was fed and gave: ``save_to`` (.npz), ``save_inputs``/``save_outputs`` (Polygraphy's JSON) and
    ``save_trtexec`` (raw inputs of the first sample for trtexec). What was written goes in
    ``result.candidate['saved']`` (with the trtexec arguments that load the raw inputs).

    ``config``/``checkpoint`` name the reference's config and source when its runner does not know them (an
    artifact as the reference, :func:`vla_export.verify.pair.parity_artifacts`)."""
    from vla_export.verify.parity import parity_check

    recorders: list[RecordingRunner] = []

    def wrap(runner: Runner) -> RecordingRunner:
        recorders.append(RecordingRunner(runner))
        return recorders[-1]

    result = (run or parity_check)(policy_loader, artifact, wrap_reference=wrap, **parity_kwargs)
    recorder = recorders[0]
    if recorder.config is None and config is not None:
        recorder.config = config
    data = parity_kwargs.get("data")
    meta = _meta(recorder, checkpoint if checkpoint is not None else result.reference["checkpoint"],
                 made_with={"artifact": str(artifact), "passed": result.passed},
                 source=f"episodes {data}" if data else f"synthetic (seed {parity_kwargs.get('seed', 0)})")
    saved: dict[str, Any] = {}
    if save_to is not None:
        saved["reference"] = str(save_reference(save_to, "parity", recorder.records, meta))
    if save_inputs is not None:
        from vla_export.data.interop import save_polygraphy_inputs, save_polygraphy_outputs

        saved["inputs"] = str(save_polygraphy_inputs(save_inputs, [feed for feed, _ in recorder.records]))
        if save_outputs is not None:
            saved["outputs"] = str(save_polygraphy_outputs(save_outputs, recorder.records, meta, inputs_path=save_inputs))
    if save_trtexec is not None:
        from vla_export.data.interop import save_trtexec_inputs

        saved["trtexec"] = save_trtexec_inputs(save_trtexec, recorder.records[0][0])
    result.candidate["saved"] = saved
    return result


def parity_against_reference(reference_path: str | Path, artifact: str | Path, *, precision: str | None = None,
                             tolerance: Any = None, runner_opts: Mapping[str, Any] | None = None, qdq: str = QdqMode.EXACT,
                             strict: bool = False, output_tolerances: Mapping[str, Any] | None = None,
                             manifest: Manifest | None = None):
    """The artifact against a saved parity reference: the same comparison as ``parity CKPT ARTIFACT``, no torch.

    ``qdq``, ``strict`` and ``manifest`` as in :func:`~vla_export.verify.parity.parity_check` ("both": the verdict on
    exact, onnxruntime's fused kernels measured on the same saved inputs beside it)."""
    from vla_export.backends.select import runner_for_artifact
    from vla_export.verify.parity import candidate_options
    from vla_export.compare.comparator import check_against_config, compare_runners
    from vla_export.compare.tolerance import tolerance_for

    ref = load_reference(reference_path, "parity")
    manifest = manifest if manifest is not None else read_manifest(artifact, required=False)
    check_config(ref, manifest.config if manifest else None, artifact)
    precision = precision or (manifest.precision if manifest else None) or Precision.FP32
    tol = tolerance or tolerance_for(precision)
    opts, is_onnx = candidate_options(artifact, qdq, runner_opts)
    feeds = [feed for feed, _ in ref.records]
    with runner_for_artifact(artifact, **opts) as cand, playback(ref) as played:
        check_against_config(cand, PolicyConfig.from_dict(ref.config))
        if FEATURES in ref.meta["outputs"] and FEATURES not in cand.output_names:
            log.warning("%s has features, %s does not: comparing actions only", reference_path, artifact)
        result = compare_runners(played, cand, feeds, precision=precision, tolerance=tol, output_tolerances=output_tolerances)
    if qdq == QdqMode.BOTH and is_onnx:
        with runner_for_artifact(artifact, **(opts | {"qdq": QdqMode.KERNELS})) as kernels, playback(ref) as played:
            other = compare_runners(played, kernels, feeds, precision=precision, tolerance=tol, output_tolerances=output_tolerances)
        result.also_measured["qdq_kernels"] = {
            "note": "onnxruntime's fused int8 kernels on this CPU; not used for the verdict",
            "passed": other.passed, "outputs": {k: v.to_dict() for k, v in other.outputs.items()},
        }
    result.strict = strict
    result.reference["checkpoint"] = ref.checkpoint.get("path")
    result.reference["checkpoint_sha256"] = ref.checkpoint.get("sha256")
    result.candidate["artifact"] = str(artifact)
    result.candidate["data"] = f"saved reference {reference_path} ({ref.meta.get('source')})"
    return result


def replay_with_saved_reference(policy_loader: Any, split: Any, episode_path: str | Path, save_to: str | Path, **replay_kwargs: Any):
    """:func:`vla_export.runtime.replay.replay_check` that also saves the full-window PyTorch actions per step."""
    from vla_export.fileio import sha256_file
    from vla_export.runtime.replay import replay_check

    recorders: list[RecordingRunner] = []

    def wrap(runner: Runner) -> RecordingRunner:
        recorders.append(RecordingRunner(runner))
        return recorders[-1]

    result = replay_check(policy_loader, split, episode_path, wrap_reference=wrap, **replay_kwargs)
    save_reference(save_to, "replay", recorders[0].records, _meta(
        recorders[0], result.reference["checkpoint"],
        episode={"path": str(episode_path), "sha256": sha256_file(episode_path), "name": result.episode.get("name")},
        made_with={"split": str(split), "passed": result.passed},
    ))
    return result


def replay_against_reference(reference_path: str | Path, split: Any, episode_path: str | Path, *, backbone: Any = None,
                             head: Any = None, precision: str | None = None, atol: float | None = None,
                             tokenizer_dir: Any = None, text_len: int | None = None, providers: Any = None):
    """Replay ``episode_path`` through the split artifacts against the per-step actions of a saved replay reference."""
    from vla_export.data.episodes import open_episode
    from vla_export.fileio import sha256_file
    from vla_export.compare.tolerance import tolerance_for
    from vla_export.runtime.select import policy_for_artifact
    from vla_export.runtime.replay import parts_precision, replay_episode

    ref = load_reference(reference_path, "replay")
    recorded = ref.meta.get("episode") or {}
    if recorded.get("sha256") and recorded["sha256"] != sha256_file(episode_path):
        raise ArtifactError(f"{reference_path} was recorded on episode {recorded.get('path')}, not on {episode_path} (sha256 differs)")
    episode = open_episode(episode_path)
    policy = policy_for_artifact(split, backbone=backbone, head=head, tokenizer_dir=tokenizer_dir, text_len=text_len, providers=providers)
    check_config(ref, policy.config, split)
    with policy, playback(ref) as played:
        tol = atol if atol is not None else tolerance_for(precision or parts_precision(policy)).atol
        result = replay_episode(policy, played, episode, atol=tol)
    result.reference["checkpoint"] = ref.checkpoint.get("path")
    result.reference["checkpoint_sha256"] = ref.checkpoint.get("sha256")
    return result
