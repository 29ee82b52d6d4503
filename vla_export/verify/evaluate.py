"""Accuracy on recorded episodes, per artifact: does the exported model still drive like the checkpoint?

Parity compares an artifact with the checkpoint; this compares both with what the robot's operator
did. The checkpoint and every artifact run over the same windows of the same episodes, and each is
scored against the recorded actions, per action dimension: MAE, RMSE, and sign agreement on the
windows where a key was pressed. An artifact's figures are then set against the checkpoint's.

Windows: one per control step of every episode (step k of an episode ends at frame k and holds the
last ``window`` frames, padded at the start by repeating the first frame: the runtime's warm-up rule,
:func:`~vla_export.runtime.policy.window_indices`). The target of step k is the action recorded at
frame k, divided by ``action_scale``. Full-window artifacts (checkpoint, ONNX, engine) get the padded
window; a split export runs through the streaming :class:`~vla_export.runtime.policy.Policy`, one
frame per step, exactly as on the robot.

The gate (``max_mae_increase``) is applied per dimension: an artifact fails when the MAE of any
compared dimension rises by more than the bound over the checkpoint's (on the same windows). The
overall MAE is the mean over dimensions, so its change never exceeds the worst dimension's.

The honesty rule (:func:`discrimination`): an evaluation can tell a broken artifact apart only if a
broken one would score measurably worse. The most harmless way to break is to collapse to one action;
the best any constant can do is the recorded median (per dimension, for MAE). So a dimension
discriminates when the checkpoint beats that constant by a margin the sample resolves (more than
``RESOLUTION_Z`` standard errors of the paired difference) and, with a gate, by more than the gate
(else a collapsed artifact would pass it), on at least ``MIN_WINDOWS`` windows. A dimension whose
recorded actions never change says nothing about following the scene; it is reported as constant and
left out of the verdict. The evaluation is conclusive when at least one dimension discriminates and
none of the others that vary fails to.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vla_export.compare.actions import _finite_or_none, _se, action_metrics, dim_names, discrimination, RESOLUTION_Z
from vla_export.data.iospec import ACTIONS, ATTENTION_MASK, INPUT_IDS, PIXEL_VALUES
from vla_export.choices import Precision, QdqMode, RUNNER_QDQ_MODES
from vla_export import schemas
from vla_export.artifacts.manifest import Manifest, SplitRecord
from vla_export.errors import ArtifactError, ConfigError, DataError
from vla_export.progress import step

log = logging.getLogger(__name__)

SCHEMA = schemas.EVALUATE
#: Artifact kinds evaluate runs (a split export through the streaming runtime).
KINDS = ("onnx", "engine", "checkpoint", "split")


@dataclass(frozen=True)
class EvalWindow:
    """One control step: the episode, the step (= its last frame) and the recorded target."""

    episode: str
    step: int
    instruction: str
    recorded: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"episode": self.episode, "step": self.step, "instruction": self.instruction, "recorded": list(self.recorded)}












@dataclass
class ArtifactScore:
    """One artifact's (or the checkpoint's) predictions over the windows and its figures."""

    label: str
    path: str
    kind: str
    precision: str
    window: int
    runner: dict[str, Any]
    config_check: str
    predictions: np.ndarray  # [N, D] over the compared dimensions
    metrics: dict[str, Any] = field(default_factory=dict)
    change: dict[str, Any] | None = None  # against the checkpoint (None for the checkpoint itself)
    gate: dict[str, Any] | None = None
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.metrics.get("nonfinite", 0) == 0 and (self.gate is None or self.gate["passed"])

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "path": self.path, "kind": self.kind, "precision": self.precision, "window": self.window,
                "runner": self.runner, "config_check": self.config_check, "passed": self.passed, **self.metrics,
                "change": self.change, "gate": self.gate, "seconds": round(self.seconds, 3),
                "actions": [[_finite_or_none(float(v)) for v in row] for row in self.predictions]}


@dataclass
class EvaluateResult:
    checkpoint: dict[str, Any]
    data: dict[str, Any]
    dims: list[str]
    windows: list[EvalWindow]
    scores: list[ArtifactScore]  # the checkpoint first
    discrimination: dict[str, Any]
    max_mae_increase: float | None = None
    strict: bool = False

    @property
    def conclusive(self) -> bool:
        return bool(self.discrimination["conclusive"])

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.scores) and (self.conclusive or not self.strict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "passed": self.passed, "conclusive": self.conclusive, "strict": self.strict,
            "gate": {"max_mae_increase": self.max_mae_increase,
                     "rule": "an artifact fails when the MAE of any compared dimension rises by more than max_mae_increase over the "
                             "checkpoint's on the same windows (the overall MAE, their mean, then cannot rise by more either); "
                             "non-finite actions always fail"},
            "dims": self.dims, "checkpoint": self.checkpoint, "data": self.data, "discrimination": self.discrimination,
            "artifacts": [s.to_dict() for s in self.scores],
            "windows": [w.to_dict() for w in self.windows],
        }


# --- running ------------------------------------------------------------------------------------------

def _prompt(tokenizer, instruction: str) -> dict[str, np.ndarray]:
    """The text inputs [1, L], built as :meth:`Policy.prompt_feed` builds them (the shared template, own length)."""
    from vla_export.data.preprocess import prompt_for

    ids, mask = tokenizer.encode(prompt_for(instruction), None)
    return {INPUT_IDS: np.asarray(ids, dtype=np.int64).reshape(1, -1), ATTENTION_MASK: np.asarray(mask, dtype=np.int64).reshape(1, -1)}


def run_full_window(runner, episodes, *, window: int, image_size: int, tokenizer, dims: int) -> np.ndarray:
    """Actions of an active full-window runner at every step of every episode (warm-up windows padded)."""
    from vla_export.data.preprocess import preprocess_frames
    from vla_export.runtime.policy import window_indices

    out = []
    for ep in episodes:
        pixels = preprocess_frames(ep.frames(), image_size)
        prompt = _prompt(tokenizer, ep.instruction)
        for k in range(ep.num_frames):
            actions = runner.infer({PIXEL_VALUES: pixels[window_indices(k, window)][None], **prompt})[ACTIONS]
            out.append(np.asarray(actions, dtype=np.float32).reshape(-1)[:dims])
    return np.stack(out)


def run_streaming(policy, episodes, *, dims: int) -> np.ndarray:
    """Actions of an active streaming :class:`Policy` at every step of every episode, one frame per step."""
    out = []
    for ep in episodes:
        policy.reset(ep.instruction)
        for frame in ep.frames():
            out.append(policy.step(frame)[:dims])
    return np.stack(out)


@dataclass(frozen=True)
class _Planned:
    path: Path
    kind: str
    precision: str
    config_check: str
    record: Manifest | SplitRecord | None  # the manifest or split record
    loaded: Any = None  # a checkpoint's LoadedPolicy


def _plan(path: Path, config) -> _Planned:
    """Read what the artifact records and refuse one of another config (nothing runs yet)."""
    from vla_export.artifacts.kinds import detect_kind
    from vla_export.artifacts.manifest import read_manifest, read_split
    from vla_export.models.config import check_same_config

    kind = detect_kind(path, allowed=KINDS)
    if not path.exists():
        raise ArtifactError(f"{path}: not found")
    if kind == "split":
        record = read_split(path)
        check = check_same_config(path, record.config, config)
        return _Planned(path, kind, "split", check, record)
    if kind == "checkpoint":
        from vla_export.models.loader import PolicyFromCheckpoint

        other = PolicyFromCheckpoint(path)()
        check = check_same_config(path, other.config, config)
        return _Planned(path, kind, Precision.FP32, check, None, loaded=other)
    manifest = read_manifest(path, required=False)
    check = check_same_config(path, manifest.config if manifest else None, config)
    return _Planned(path, kind, _precision_label(manifest), check, manifest)


def _precision_label(manifest: Manifest | None) -> str:
    """fp32, fp16, int8 (W8A8) or int8w (weight-only INT8, which manifests record as int8 without calibration)."""
    precision = str((manifest.precision if manifest else None) or Precision.FP32)
    options = ((manifest.quantization if manifest else None) or {}).get("options") or {}
    if precision == Precision.INT8 and (options.get("mode") == "weight-only" or ("weights" in options and "calibration" not in options)):
        return Precision.INT8W
    return precision


def _action_scale(given: float | None, metadata: dict[str, Any]) -> tuple[float, str]:
    """The divisor of the recorded actions and where it came from: ``--action-scale``, else the checkpoint's
    ``fit`` record (a policy fitted by ``init --fit`` outputs recorded / ``action_scale``), else 1."""
    if given is not None:
        return given, "given (--action-scale)"
    fit = metadata.get("fit")
    recorded = fit.get("action_scale") if isinstance(fit, dict) else None
    if recorded is not None:
        value = float(recorded)
        if not (math.isfinite(value) and value > 0):
            raise ArtifactError(f"the checkpoint's fit record holds action_scale {recorded!r}, not a number > 0: give --action-scale")
        log.warning("the recorded actions are divided by %g, the action_scale of the checkpoint's fit record "
                    "(init --fit trains on recorded / %g); --action-scale overrides it", value, value)
        return value, "the checkpoint's fit record"
    return 1.0, "default (the checkpoint records none)"


def evaluate(
    policy_loader,
    artifacts: Sequence[str | Path],
    data: Sequence[str | Path],
    *,
    max_mae_increase: float | None = None,
    strict: bool = False,
    action_scale: float | None = None,
    qdq: str = QdqMode.EXACT,
    providers: Sequence[str] | None = None,
    tokenizer_dir: str | Path | None = None,
) -> EvaluateResult:
    """Score the checkpoint (``policy_loader()``) and each artifact on every step of the ``data`` episodes.

    Every artifact's recorded config is checked against the checkpoint's before anything runs (an
    :class:`ArtifactError` names the differing fields). ONNX artifacts run with ``qdq`` arithmetic
    ("exact" by default, as parity does) on ``providers``; a split export runs through the streaming
    runtime; engines need TensorRT.
    """
    from vla_export.backends.select import runner_for_artifact
    from vla_export.backends.torch_runner import TorchRunner
    from vla_export.data.episodes import find_episodes, open_episode
    from vla_export.data.tokenizer import tokenizer_for
    from vla_export.verify.parity import artifact_window
    from vla_export.compare.comparator import check_against_config

    if max_mae_increase is not None and not (math.isfinite(max_mae_increase) and max_mae_increase >= 0):
        raise ConfigError(f"--max-mae-increase must be a finite number >= 0, got {max_mae_increase}")
    if action_scale is not None and not (math.isfinite(action_scale) and action_scale > 0):
        raise ConfigError(f"--action-scale must be a finite number > 0, got {action_scale}")
    if qdq not in RUNNER_QDQ_MODES:
        raise ConfigError(f"--qdq must be exact or kernels, got {qdq!r}")
    episodes = [open_episode(p) for p in find_episodes(list(data))]
    recorded = [ep.actions() for ep in episodes]
    widths = {r.shape[1] for r in recorded}
    if len(widths) != 1:
        raise DataError(f"the episodes record actions of different widths {sorted(widths)}: evaluate them separately")
    loaded = policy_loader()
    cfg = loaded.config
    action_scale, scale_source = _action_scale(action_scale, loaded.checkpoint.metadata)
    planned = [_plan(Path(a), cfg) for a in artifacts]  # every refusal before any work
    n_dims = min(cfg.action_dim, widths.pop())
    names = dim_names(n_dims)
    target = np.concatenate(recorded)[:, :n_dims].astype(np.float64) / action_scale
    windows = [EvalWindow(ep.path.name, k, ep.instruction, tuple(float(v) for v in r[k, :n_dims]))
               for ep, r in zip(episodes, recorded) for k in range(ep.num_frames)]
    tokenizer = tokenizer_for(cfg, tokenizer_dir)

    def full_window(runner) -> tuple[np.ndarray, int]:
        window = artifact_window(runner, cfg.window)
        return run_full_window(runner, episodes, window=window, image_size=cfg.image_size, tokenizer=tokenizer, dims=n_dims), window

    scores: list[ArtifactScore] = []
    start = time.perf_counter()
    with step(f"running the checkpoint over {len(windows)} windows"), TorchRunner(loaded.policy) as ref:
        preds, window = full_window(ref)
        scores.append(ArtifactScore("checkpoint", str(loaded.checkpoint.path), "checkpoint", Precision.FP32, window, ref.describe(),
                                    "the reference", preds, seconds=time.perf_counter() - start))
    for plan in planned:
        start = time.perf_counter()
        with step(f"running {plan.path.name} over {len(windows)} windows"):
            if plan.kind == "split":
                from vla_export.runtime.select import policy_for_artifact
                from vla_export.runtime.replay import parts_precision

                policy = policy_for_artifact(plan.path, tokenizer=tokenizer, providers=providers)
                _check_split(plan.path, policy.config, cfg)
                with policy:
                    preds = run_streaming(policy, episodes, dims=n_dims)
                    precision, window, described = f"split ({parts_precision(policy)})", policy.window, policy.describe()
            else:
                if plan.kind == "checkpoint":
                    runner = TorchRunner(plan.loaded.policy)
                else:
                    opts: dict[str, Any] = {}
                    if plan.kind == "onnx":
                        opts = {"qdq": qdq} | ({"providers": list(providers)} if providers else {})
                    runner = runner_for_artifact(plan.path, **opts)
                with runner:
                    check_against_config(runner, cfg)
                    preds, window = full_window(runner)
                    precision, described = plan.precision, runner.describe()
        scores.append(ArtifactScore(plan.path.name, str(plan.path), plan.kind, precision, window, described, plan.config_check,
                                    preds, seconds=time.perf_counter() - start))
    for s in scores:
        s.metrics = action_metrics(s.predictions, target, names)
    ref_score = scores[0]
    for s in scores[1:]:
        s.change, s.gate = _change(s, ref_score, target, names, max_mae_increase)
    return EvaluateResult(
        checkpoint={"path": str(loaded.checkpoint.path), "config": cfg.name, "action_dim": cfg.action_dim,
                    "recorded_metadata": {k: loaded.checkpoint.metadata[k] for k in ("epoch", "val_mae") if k in loaded.checkpoint.metadata}},
        data={"episodes": [ep.path.name for ep in episodes], "paths": [str(ep.path) for ep in episodes], "windows": len(windows),
              "windowing": "every control step; the first window-1 steps of an episode padded with its first frame (the runtime's warm-up rule)",
              "target": "the action recorded at the step's last frame" + (f", divided by {action_scale:g}" if action_scale != 1 else ""),
              "action_scale": action_scale, "action_scale_source": scale_source, "compared_dims": names,
              "recorded_dims": int(recorded[0].shape[1]), "qdq": qdq},
        dims=names, windows=windows, scores=scores,
        discrimination=discrimination(ref_score.predictions, target, names, max_mae_increase),
        max_mae_increase=max_mae_increase, strict=strict,
    )


def _check_split(path: Path, art, cfg) -> None:
    mine = (cfg.image_size, cfg.frame_feature_dim, cfg.action_dim)
    theirs = (art.image_size, art.frame_feature_dim, art.action_dim)
    if mine != theirs:
        raise ArtifactError(f"{path}: the parts were exported from a policy with (image size, feature width, actions) {theirs}, "
                            f"the checkpoint's policy has {mine}")


def _change(score: ArtifactScore, ref: ArtifactScore, target: np.ndarray, names: Sequence[str], gate: float | None):
    """The artifact's figures minus the checkpoint's, the standard error of each MAE change (paired over
    windows) and, with a gate, which dimensions rise by more than it."""
    change: dict[str, Any] = {}
    for metric in ("mae", "rmse", "sign_agreement"):
        mine, theirs = score.metrics[metric], ref.metrics[metric]
        change[metric] = {k: (None if mine.get(k) is None or theirs.get(k) is None else mine[k] - theirs[k]) for k in theirs}
    se = {}
    for d, name in enumerate(names):
        paired = np.abs(score.predictions[:, d] - target[:, d]) - np.abs(ref.predictions[:, d] - target[:, d])
        se[name] = _finite_or_none(_se(paired)) if np.isfinite(paired).all() else None
    change["mae_se"] = se
    if gate is None:
        return change, None
    rises = change["mae"]
    over = [n for n in names if rises[n] is None or not rises[n] <= gate]  # NaN (non-finite actions) fails
    # Where the rise lies within RESOLUTION_Z standard errors of the gate, these windows do not resolve which side it is on.
    close = [n for n in names if rises[n] is not None and se[n] is not None and abs(rises[n] - gate) <= RESOLUTION_Z * se[n]]
    return change, {"max_mae_increase": gate, "passed": not over, "over": over, "unresolved": close}
