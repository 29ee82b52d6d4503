"""Checkpoint -> policy: build the model for a config and load weights strictly, without a second copy.

The model skeleton is built on the meta device (no memory), the checkpoint's tensors (memory-mapped
where the format allows) are assigned into it, and only the few non-persistent buffers are
materialised afterwards. Nothing ever falls back to random weights.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vla_export.errors import ArchitectureError, StrictLoadError
from vla_export.fileio import atomic_write
from vla_export.models.checkpoint import Checkpoint, read_checkpoint
from vla_export.models.components import COMPONENTS, OTHER, group_by_component
from vla_export.models.config import PolicyConfig
from vla_export.models.infer import InferredConfig, infer_config
from vla_export.progress import reported
from vla_export.models.resolve import LoadOptions, RECORD_KEY, ResolvedModel, record_for_checkpoint, resolve_model

SHOW_PER_GROUP = 3
log = logging.getLogger("vla_export")


@dataclass
class KeyCheck:
    """The verdict of comparing a state dict with a model: empty lists mean a strict load succeeds."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # key, checkpoint shape, model shape

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        parts = []
        for label, keys in (("missing", self.missing), ("unexpected", self.unexpected)):
            if keys:
                parts.append(f"{len(keys)} {label} ({_grouped(keys)})")
        if self.mismatched:
            shown = "; ".join(f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in self.mismatched[:SHOW_PER_GROUP])
            more = f"; +{len(self.mismatched) - SHOW_PER_GROUP} more" if len(self.mismatched) > SHOW_PER_GROUP else ""
            parts.append(f"{len(self.mismatched)} mis-shaped ({shown}{more})")
        return ", ".join(parts) if parts else "all keys match"

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "missing": self.missing,
            "unexpected": self.unexpected,
            "mismatched": [{"key": k, "checkpoint": list(a), "model": list(b)} for k, a, b in self.mismatched],
        }


def _grouped(keys: Sequence[str]) -> str:
    groups = group_by_component(keys)
    order = [c for c in (*COMPONENTS, OTHER) if c in groups]
    out = []
    for comp in order:
        ks = groups[comp]
        more = f", +{len(ks) - SHOW_PER_GROUP} more" if len(ks) > SHOW_PER_GROUP else ""
        out.append(f"{comp}: {', '.join(ks[:SHOW_PER_GROUP])}{more}")
    return "; ".join(out)


def build_policy(cfg: PolicyConfig, *, device: str = "cpu", attn_implementation: str = "sdpa"):
    """A policy for ``cfg``. On ``device='meta'`` it holds no memory (for shape checks and assign-loading)."""
    import torch

    from vla_export.models.policy import MobileVLAPolicy

    with torch.device(device):
        policy = MobileVLAPolicy(cfg, attn_implementation=attn_implementation)
    return policy.eval()


def check_keys(model_shapes: Mapping[str, tuple], ckpt: Mapping[str, Any]) -> KeyCheck:
    result = KeyCheck()
    for key, shape in model_shapes.items():
        if key not in ckpt:
            result.missing.append(key)
        elif tuple(ckpt[key].shape) != tuple(shape):
            result.mismatched.append((key, tuple(ckpt[key].shape), tuple(shape)))
    result.unexpected = [k for k in ckpt if k not in model_shapes]
    return result


def _materialize_buffers(policy) -> None:
    """Recreate the non-persistent buffers a meta-built model leaves behind (position tables, prefix ids)."""
    import torch

    from vla_export.models.policy import MobileVLAPolicy, prefix_ids

    for module in policy.modules():
        for name, buf in list(module._buffers.items()):
            if buf is None or buf.device.type != "meta":
                continue
            if name == "weights" and hasattr(module, "make_weights"):  # Kosmos-2 sinusoidal positions
                del module._buffers["weights"]
                module.make_weights(buf.shape[0], module.embedding_dim, module.padding_idx)
            elif name == "position_ids":
                module._buffers[name] = torch.arange(buf.shape[-1]).expand(buf.shape).clone()
            elif name == "prefix_ids" and isinstance(module, MobileVLAPolicy):
                module._buffers[name] = prefix_ids(module.cfg)
            else:
                raise ArchitectureError(f"internal: cannot materialise buffer {name!r} of {type(module).__name__}")


@dataclass
class LoadedPolicy:
    policy: Any  # MobileVLAPolicy
    config: PolicyConfig
    checkpoint: Checkpoint
    resolved: ResolvedModel | None = None  # how the config was obtained (None for policies not loaded from a file)


def resolve_config(state_dict: Mapping[str, Any], config: PolicyConfig | None) -> tuple[PolicyConfig, InferredConfig | None]:
    if config is not None:
        return config, None
    inferred = infer_config(state_dict)
    return inferred.config, inferred


class PolicyFromCheckpoint:
    """The one way to load a checkpoint: a lazy loader that, when called, strictly loads the policy.

    ``PolicyFromCheckpoint(path, options=load)()`` loads now; commands that check their inputs first
    pass the loader itself and call it when the policy is needed (as Polygraphy's loaders do).
    ``checkpoint`` is a path or an already read :class:`Checkpoint`; ``options`` (the CLI's shared
    loading options ``--config/--rename/--set/--trust-checkpoint``) say how it is resolved; ``dtype``
    is the floating-point type the weights are loaded in.
    """

    def __init__(self, checkpoint: Checkpoint | str | Path, *, options: LoadOptions | None = None, dtype: str = "float32"):
        self.checkpoint = checkpoint
        self.path = checkpoint.path if isinstance(checkpoint, Checkpoint) else Path(checkpoint)
        self.options = options or LoadOptions()
        self.dtype = dtype

    def __call__(self) -> LoadedPolicy:
        return _load_policy(self.checkpoint, self.options, self.dtype)


@reported("loading the checkpoint")
def _load_policy(checkpoint: Checkpoint | str | Path, options: LoadOptions, dtype: str) -> LoadedPolicy:
    """Strictly load a policy; raise :class:`StrictLoadError` listing any key problem.

    The resolved model is logged as one line, and every unconfirmed guess that changes outputs as a warning.
    """
    import torch

    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else read_checkpoint(checkpoint, trust=options.trust)
    resolved, sd = resolve_model(ckpt, options)
    log.info("%s", resolved.summary_line())
    for line in resolved.warning_lines():
        log.warning("%s", line)
    cfg = resolved.config
    policy = build_policy(cfg, device="meta")
    check = check_keys({k: tuple(v.shape) for k, v in policy.state_dict().items()}, sd)
    if not check.ok:
        raise StrictLoadError(f"{ckpt.path}: strict load failed for config '{cfg.name}': {check.summary()}")
    target = getattr(torch, dtype)
    sd = {k: (v if v.dtype == target or not v.is_floating_point() else v.to(target)) for k, v in sd.items()}
    policy.load_state_dict(sd, strict=True, assign=True)
    _materialize_buffers(policy)
    return LoadedPolicy(policy.eval(), cfg, ckpt, resolved)


# --- writing ---------------------------------------------------------------------------------------

def init_policy(cfg: PolicyConfig, seed: int = 0):
    """A randomly initialised policy whose actions clearly depend on its inputs.

    transformers' default init (std 0.02) makes the backbone features tiny, so the head would output
    almost a constant; the LSTM and head are re-drawn with a larger spread so tests and parity have
    outputs that vary across inputs by far more than any tolerance.
    """
    import torch

    torch.manual_seed(seed)
    policy = build_policy(cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in (policy.proj, policy.rnn, policy.action):
            if module is None:
                continue
            for name, param in module.named_parameters():
                # uniform with variance gain^2 / fan_in; a gain of 2 keeps tanh mostly unsaturated
                scale = 2.0 * (3.0 / param.shape[-1]) ** 0.5 if param.dim() > 1 else 0.1
                param.copy_((torch.rand(param.shape, generator=gen) * 2 - 1) * scale)
    return policy.eval()


def trainable_parameters(policy) -> list:
    """The parameters Mobile VLA trains (the backbones are frozen): projection, LSTM and head."""
    params = []
    for module in (policy.proj, policy.rnn, policy.action):
        if module is not None:
            params += list(module.parameters())
    return params


def save_training_checkpoint(policy, path: str | Path, *, epoch: int = 0, val_mae: float = 0.0, args: Any = None,
                             extra: dict[str, Any] | None = None) -> Path:
    """Write ``policy`` in the Mobile VLA training format, atomically (temp file, then rename).

    ``extra`` adds top-level entries (plain values: a fitted checkpoint records how it was made under ``fit``)."""
    import argparse

    import torch

    path = Path(path)
    if args is None:
        args = argparse.Namespace(data_path="data/episodes", batch_size=4, num_epochs=epoch, output_dir=str(path.parent), save_interval=1)
    trainable = trainable_parameters(policy)
    optimizer = {
        "state": {
            i: {"step": torch.tensor(float(epoch)), "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
            for i, p in enumerate(trainable)
        },
        "param_groups": [
            {"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01, "amsgrad": False,
             "maximize": False, "foreach": None, "capturable": False, "differentiable": False, "fused": None,
             "params": list(range(len(trainable)))}
        ],
    }
    payload = {
        "epoch": epoch,
        "model_state_dict": policy.state_dict(),
        "optimizer_state_dict": optimizer,
        "val_mae": float(val_mae),
        "args": args,
        # The config, so that loading this file back assumes nothing (heads, Tanh, pooling, tokens).
        RECORD_KEY: record_for_checkpoint(policy.cfg),
        **(extra or {}),
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
    return path


class PresetPolicy:
    """A lazy loader: a preset's policy with seeded random weights, built on ``device`` directly."""

    def __init__(self, config: PolicyConfig, *, device: str = "cpu", seed: int = 0):
        self.config, self.device, self.seed = config, device, seed

    def __call__(self):
        import torch

        from vla_export.models.loader import build_policy

        torch.manual_seed(self.seed)
        return build_policy(self.config, device=self.device)
