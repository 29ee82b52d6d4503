"""Fitting a preset's policy on recorded episodes: a policy that has learned something, made on CPU.

A randomly initialised policy hardly looks at its inputs, so a parity check against it cannot tell a
broken artifact (one that returns a constant action) from a good one. Fitting trains the policy to
reproduce the recorded actions of episodes (``vla-export episodes`` writes synthetic ones whose actions
follow the scene), through exactly what inference uses: the episode reader, the one preprocessing
path and the tokenised run-time prompt (:class:`~vla_export.data.episodes.EpisodeSource`).

Targets are the recorded actions in policy units (:func:`~vla_export.data.episodes.policy_units`: one
key press is 1.0). Unlike Mobile VLA, whose pretrained backbones stayed frozen, the whole policy is
trained except the two patch-embedding convolutions (frozen: their weight gradients were the largest
cost of a step): a random backbone's features do not tell the scenes apart. The loss is the mean
squared error of the action head applied to the LSTM output at every step of the window (inference
reads the last one). Same seed, same episodes, same thread count: bit-identical weights.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vla_export.data.episodes import ACTION_SCALE, EpisodeSource, policy_units
from vla_export.data.preprocess import preprocess_frames
from vla_export.errors import ConfigError
from vla_export.models.config import PolicyConfig
from vla_export.progress import step

#: Progress is reported in this many chunks of steps.
PROGRESS_CHUNKS = 5


@dataclass(frozen=True)
class FitOptions:
    """How a policy is fitted; every value is recorded in the checkpoint."""

    steps: int = 200
    seed: int = 0
    lr: float = 3e-3
    batch: int = 8  # windows per step
    threads: int = 1  # torch CPU threads while fitting (the result is bit-identical only for the same count)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"--steps must be at least 1, got {self.steps}")
        if self.batch < 1 or self.threads < 1:
            raise ConfigError("the batch and the thread count must be at least 1")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"the learning rate must be a positive number, got {self.lr}")


@dataclass
class EpisodeSet:
    """Every episode of a set preprocessed once: pixels [F, 3, S, S], the prompt, targets [F, action_dim]."""

    source: EpisodeSource
    pixels: list[np.ndarray]
    prompts: list[tuple[np.ndarray, np.ndarray]]
    targets: list[np.ndarray]

    @property
    def windows(self) -> list[tuple[int, int]]:
        """(episode index, first frame) of every window of the policy's length."""
        t = self.source.T
        return [(e, s) for e, px in enumerate(self.pixels) for s in range(px.shape[0] - t + 1)]

    def describe(self) -> list[dict[str, Any]]:
        return [{"path": str(ep.path), "sha256": _sha256(ep.path), "frames": ep.num_frames, "instruction": ep.instruction}
                for ep in self.source.episodes]


def read_episode_set(paths: Sequence[str | Path] | str | Path, config: PolicyConfig) -> EpisodeSet:
    """Read and preprocess every episode under ``paths`` as inference does (DataError for a bad one)."""
    with step("reading and preprocessing the episodes"):
        source = EpisodeSource(paths, config)
        pixels, prompts, targets = [], [], []
        for ep in source.episodes:
            pixels.append(preprocess_frames(ep.frames(), config.image_size))
            prompts.append(source.prompt(ep.instruction))
            targets.append(policy_units(ep.actions(), config.action_dim))
    return EpisodeSet(source, pixels, prompts, targets)


@dataclass
class ActionAccuracy:
    """A policy's actions over every window of an episode set, against the recorded ones (policy units)."""

    windows: int
    mae: float
    mae_per_dim: list[float]
    #: Std of the policy's actions across the windows, averaged over the dimensions: the statistic
    #: parity compares with 10x atol to decide whether a comparison can tell a broken artifact apart.
    spread: float

    def to_dict(self) -> dict[str, Any]:
        return {"windows": self.windows, "mae": self.mae, "mae_per_dim": self.mae_per_dim, "spread": self.spread}


def window_actions(policy, data: EpisodeSet) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, recorded) actions [windows, action_dim] for the last frame of every window.

    Each frame's features are computed once per episode (the policy encodes frames independently)
    and the head runs over every window of them: what ``policy(window)`` computes, window by window.
    """
    import torch

    t = data.source.T
    predicted, recorded = [], []
    with torch.no_grad():
        for px, (ids, mask), y in zip(data.pixels, data.prompts, data.targets):
            n = px.shape[0]
            feats = policy.encode_frames(torch.from_numpy(px), torch.from_numpy(ids).expand(n, -1), torch.from_numpy(mask).expand(n, -1))
            wins = torch.stack([feats[s : s + t] for s in range(n - t + 1)])
            predicted.append(policy.head(wins).numpy())
            recorded.append(y[t - 1 :])
    return np.concatenate(predicted), np.concatenate(recorded)


def measure(policy, data: EpisodeSet) -> ActionAccuracy:
    pred, rec = window_actions(policy, data)
    err = np.abs(pred - rec)
    spread = float(pred.std(axis=0).mean()) if len(pred) > 1 else 0.0
    return ActionAccuracy(len(pred), float(err.mean()), [float(v) for v in err.mean(axis=0)], spread)


@dataclass
class FitResult:
    policy: Any  # MobileVLAPolicy, in eval mode
    config: PolicyConfig
    options: FitOptions
    seconds: float
    losses: list[float]
    train: ActionAccuracy
    untrained_train: ActionAccuracy
    val: ActionAccuracy | None = None
    untrained_val: ActionAccuracy | None = None
    episodes: list[dict[str, Any]] = field(default_factory=list)
    val_episodes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def val_mae(self) -> float:
        """The held-out MAE when validation episodes were given, else the MAE on the fit episodes."""
        return (self.val or self.train).mae

    @property
    def epochs(self) -> int:
        windows = self.train.windows
        return max(1, round(self.options.steps * self.options.batch / max(windows, 1)))

    def record(self) -> dict[str, Any]:
        """How the checkpoint was made: stored in it under ``fit``."""
        import torch

        o = self.options
        losses = self.losses
        every = max(1, len(losses) // 10)
        return {
            "preset": self.config.name,
            "episodes": self.episodes,
            "val_episodes": self.val_episodes,
            "val_mae_on": "held-out episodes" if self.val else "the fit episodes (no held-out episodes given)",
            "steps": o.steps, "seed": o.seed, "lr": o.lr, "batch": o.batch, "threads": o.threads, "optimizer": "AdamW",
            "loss": "MSE of every window step's action, policy units",
            "action_units": f"recorded actions / {ACTION_SCALE} clipped to [-1, 1]",
            "action_scale": ACTION_SCALE,  # evaluate --action-scale: compare with recorded / this
            "frozen": ["patch embeddings"],
            "loss_curve": {"first": losses[0], "last": losses[-1], "min": min(losses),
                           "last_10pct_mean": float(np.mean(losses[-max(1, len(losses) // 10):])),
                           "every": every, "points": losses[::every]},
            "seconds": round(self.seconds, 2),
            "train": self.train.to_dict(), "untrained_train": self.untrained_train.to_dict(),
            "val": self.val.to_dict() if self.val else None,
            "untrained_val": self.untrained_val.to_dict() if self.untrained_val else None,
            "torch": str(torch.__version__),
        }


def fit_policy(config: PolicyConfig, episodes: Sequence[str | Path] | str | Path, options: FitOptions = FitOptions(),
               val_episodes: Sequence[str | Path] | str | Path | None = None) -> FitResult:
    """Train ``config``'s policy (initialised from ``options.seed``) on ``episodes``; see the module doc."""
    import torch

    from vla_export.models.loader import init_policy

    data = read_episode_set(episodes, config)
    val = read_episode_set(val_episodes, config) if val_episodes is not None else None
    threads = torch.get_num_threads()
    torch.set_num_threads(options.threads)
    try:
        start = time.perf_counter()
        policy = init_policy(config, seed=options.seed)
        with step("measuring the untrained policy"):
            untrained_train = measure(policy, data)
            untrained_val = measure(policy, val) if val else None
        losses = _train(policy, data, options)
        policy.eval()
        seconds = time.perf_counter() - start
        with step("measuring the fitted policy"):
            train = measure(policy, data)
            val_acc = measure(policy, val) if val else None
    finally:
        torch.set_num_threads(threads)
    return FitResult(policy, config, options, seconds, losses, train, untrained_train, val_acc, untrained_val,
                     data.describe(), val.describe() if val else [])


def _frozen(policy) -> list:
    """The patch-embedding convolutions' parameters (Kosmos-2 vision tower and CLIP)."""
    return [p for name, p in policy.named_parameters() if "patch_embedding" in name]


def _train(policy, data: EpisodeSet, options: FitOptions) -> list[float]:
    import torch

    frozen = {id(p) for p in _frozen(policy)}
    params = [p for p in policy.parameters() if id(p) not in frozen]
    for p in policy.parameters():
        p.requires_grad_(id(p) not in frozen)
    torch.manual_seed(options.seed)
    opt = torch.optim.AdamW(params, lr=options.lr, weight_decay=0.0)
    rng = np.random.default_rng([options.seed, 20])
    windows = data.windows
    t = data.source.T
    pixels = [torch.from_numpy(px) for px in data.pixels]
    prompts = [(torch.from_numpy(i), torch.from_numpy(m)) for i, m in data.prompts]
    targets = [torch.from_numpy(y) for y in data.targets]
    losses: list[float] = []
    policy.train()
    chunk = max(1, math.ceil(options.steps / PROGRESS_CHUNKS))
    for first in range(0, options.steps, chunk):
        last = min(options.steps, first + chunk)
        with step(f"fitting {policy.cfg.name}: steps {first + 1}-{last} of {options.steps}"
                  + (f" (loss {losses[-1]:.4f})" if losses else "")):
            for _ in range(first, last):
                picks = [windows[int(i)] for i in rng.integers(len(windows), size=options.batch)]
                px = torch.cat([pixels[e][s : s + t] for e, s in picks])
                ids = torch.stack([prompts[e][0] for e, _ in picks]).repeat_interleave(t, dim=0)
                mask = torch.stack([prompts[e][1] for e, _ in picks]).repeat_interleave(t, dim=0)
                y = torch.stack([targets[e][s : s + t] for e, s in picks])
                feats = policy.encode_frames(px, ids, mask).reshape(len(picks), t, -1)
                out, _ = policy.rnn(feats)
                loss = torch.nn.functional.mse_loss(policy.action(out), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
    for p in policy.parameters():
        p.requires_grad_(True)
    return losses


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
