"""Episode replay parity: stream a recorded episode through :class:`Policy`, check every step.

At step k the streaming action is compared with the full policy's action (a reference runner that
takes the whole window, normally PyTorch fp32) on the same frames, padded by the warm-up rule
(:func:`~vla_export.runtime.policy.window_indices`). Errors are kept per step, so drift over an
episode shows. The MAE against the recorded actions is reported for information only: a randomly
initialised or differently trained policy is not expected to match them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vla_export.data.iospec import ACTIONS, PIXEL_VALUES
from vla_export.choices import Precision
from vla_export.backends.base import Runner
from vla_export.data.preprocess import DEFAULT_INSTRUCTION, preprocess_frames
from vla_export.runtime.policy import Policy, window_indices
from vla_export.runtime.select import policy_for_artifact
from vla_export.compare.tolerance import DISCRIMINATION
from vla_export.precision import loosest
from vla_export.progress import reported

DEFAULT_ATOL = 1e-3


@dataclass(frozen=True)
class ReplayStep:
    index: int
    window: list[int]  # the frame indices the head saw
    action: list[float]
    reference: list[float]
    max_abs_err: float
    recorded: list[float]
    latency_ms: float  # the whole step: preprocessing, backbone, head
    model_ms: float  # backbone + head

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ReplayResult:
    """Per-step actions and errors of one episode; ``passed`` when every step is within ``atol``.

    With ``strict``, a replay whose reference actions barely vary across the steps (spread under
    ``DISCRIMINATION * atol``: a streaming runtime returning a constant would pass) fails too.
    """

    episode: dict[str, Any]
    atol: float
    policy: dict[str, Any]
    reference: dict[str, Any]
    steps: list[ReplayStep] = field(default_factory=list)
    strict: bool = False

    @property
    def spread(self) -> float:
        """Std of the reference's actions across the steps, averaged over the dimensions (parity's statistic)."""
        if len(self.steps) < 2:
            return 0.0
        return float(np.asarray([s.reference for s in self.steps]).std(axis=0).mean())

    @property
    def conclusive(self) -> bool:
        return self.spread > DISCRIMINATION * self.atol

    @property
    def max_abs_err(self) -> float:
        return max((s.max_abs_err for s in self.steps), default=0.0)

    @property
    def failed_steps(self) -> list[int]:
        return [s.index for s in self.steps if not s.max_abs_err <= self.atol]  # NaN fails too

    @property
    def passed(self) -> bool:
        return bool(self.steps) and not self.failed_steps and (self.conclusive or not self.strict)

    @property
    def compared_dims(self) -> int:
        """Action dimensions compared with the recording (the policy may output fewer than the file's 3)."""
        if not self.steps:
            return 0
        return min(len(self.steps[0].action), len(self.steps[0].recorded))

    @property
    def mae_vs_recorded(self) -> float | None:
        d = self.compared_dims
        if not d:
            return None
        a = np.array([s.action[:d] for s in self.steps])
        r = np.array([s.recorded[:d] for s in self.steps])
        return float(np.abs(a - r).mean())

    @property
    def median_step_ms(self) -> float | None:
        # the first step includes lazy initialisation in some backends; it is still a real step
        return float(np.median([s.latency_ms for s in self.steps])) if self.steps else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "atol": self.atol,
            "max_abs_err": self.max_abs_err,
            "failed_steps": self.failed_steps,
            "spread": self.spread,
            "conclusive": self.conclusive,
            "discrimination": DISCRIMINATION,
            "strict": self.strict,
            "mae_vs_recorded": self.mae_vs_recorded,
            "mae_dims": self.compared_dims,
            "median_step_ms": self.median_step_ms,
            "episode": self.episode,
            "policy": self.policy,
            "reference": self.reference,
            "steps": [s.to_dict() for s in self.steps],
        }


def replay_frames(
    policy: Policy,
    reference: Runner,
    frames: np.ndarray,
    *,
    instruction: str | None,
    recorded: np.ndarray | None = None,
    atol: float = DEFAULT_ATOL,
    info: dict[str, Any] | None = None,
) -> ReplayResult:
    """Stream uint8 ``frames`` [N, H, W, 3] through the active ``policy``, checking every step.

    ``reference`` is an active runner of the full policy (inputs ``pixel_values`` [1, T, 3, S, S],
    ``input_ids``, ``attention_mask``; output ``actions``); it sees the same frames, window by window,
    padded by the warm-up rule, with the same tokens.
    """
    pixels = preprocess_frames(frames, policy.image_size)
    instruction = DEFAULT_INSTRUCTION if instruction is None else instruction  # episodes that record none
    prompt = policy.prompt_feed(instruction)
    result = ReplayResult(episode=dict(info or {}), atol=atol, policy=policy.describe(), reference=reference.describe())
    policy.reset(instruction)
    for k, frame in enumerate(frames):
        action = policy.step(frame)
        window = window_indices(k, policy.window)
        ref = np.asarray(reference.infer({PIXEL_VALUES: pixels[window][None], **prompt})[ACTIONS][0], dtype=np.float32)
        result.steps.append(
            ReplayStep(
                index=k, window=window, action=action.tolist(), reference=ref.tolist(),
                max_abs_err=float(np.abs(action - ref).max()),
                recorded=[] if recorded is None else np.asarray(recorded[k], dtype=np.float32).tolist(),
                latency_ms=policy.last_timing.total_ms, model_ms=policy.last_timing.backbone_ms + policy.last_timing.head_ms,
            )
        )
    return result


@reported("replaying the episode")
def replay_episode(policy: Policy, reference: Runner, episode: Any, *, atol: float = DEFAULT_ATOL) -> ReplayResult:
    """:func:`replay_frames` over a recorded :class:`~vla_export.data.episodes.Episode`, under its instruction."""
    return replay_frames(
        policy, reference, episode.frames(), instruction=episode.instruction, recorded=episode.actions(), atol=atol,
        info=episode.to_dict(),
    )


def parts_precision(policy: Policy) -> str:
    """The loosest precision the parts' manifests record (ONNX parts without one are fp32)."""
    from vla_export.artifacts.manifest import read_manifest

    found = []
    for runner in (policy.backbone, policy.head):
        path = runner.path
        manifest = read_manifest(path, required=False) if path is not None else None
        found.append((manifest.precision if manifest else None) or Precision.FP32)
    return loosest(found)


def replay_check(
    policy_loader: Any,
    split: Any,
    episode_path: Any,
    *,
    backbone: Any = None,
    head: Any = None,
    precision: str | None = None,
    atol: float | None = None,
    tokenizer_dir: Any = None,
    text_len: int | None = None,
    providers: Any = None,
    wrap_reference: Any = None,
) -> ReplayResult:
    """Replay ``episode_path`` through the split artifacts against the checkpoint's full PyTorch policy.

    The tolerance is ``atol`` or the default absolute tolerance of ``precision`` (default: the loosest
    precision the parts record, fp32 for ONNX parts) from :mod:`vla_export.verify.parity`.
    """
    from vla_export.backends.torch_runner import TorchRunner
    from vla_export.data.episodes import open_episode
    from vla_export.errors import ArtifactError
    from vla_export.models.config import check_same_config
    from vla_export.compare.tolerance import tolerance_for

    episode = open_episode(episode_path)
    loaded = policy_loader()
    policy = policy_for_artifact(
        split, backbone=backbone, head=head, tokenizer_dir=tokenizer_dir, text_len=text_len, providers=providers
    )
    cfg, art = loaded.config, policy.config
    check_same_config(split, art.to_dict(), cfg)  # the split record's config: refuse a mismatched pair first
    mine = (cfg.image_size, cfg.frame_feature_dim, cfg.action_dim)
    theirs = (art.image_size, art.frame_feature_dim, art.action_dim)
    if mine != theirs:
        raise ArtifactError(
            f"{split}: the parts were exported from a policy with (image size, feature width, actions) {theirs}, "
            f"the checkpoint's policy has {mine}"
        )
    torch_ref = TorchRunner(loaded.policy)
    with policy, (wrap_reference(torch_ref) if wrap_reference else torch_ref) as reference:
        tol = atol if atol is not None else tolerance_for(precision or parts_precision(policy)).atol
        result = replay_episode(policy, reference, episode, atol=tol)
    result.reference["checkpoint"] = str(loaded.checkpoint.path)
    return result
