"""The policy split into its two streaming parts, as torch modules, and a runner for each.

:class:`BackbonePart` (one frame + prompt -> per-frame feature) and :class:`HeadPart` (a window of
features -> action) hold the policy's own submodules (no copies) under the policy's own names, so
their state-dict keys are the checkpoint's keys and their parameters add up to the policy's. They
run the policy's own ``encode_frames`` and ``head`` code, so there is one definition of each.
Moving a part (``.to``) moves those shared submodules of the policy too.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from vla_export.backends.torch_frames import DeviceWindows
from vla_export.backends.torch_runner import ModuleRunner
from vla_export.models.policy import MobileVLAPolicy
from vla_export.runtime.policy import BACKBONE_INPUTS, BACKBONE_OUTPUTS, HEAD_INPUTS, HEAD_OUTPUTS, Policy


class BackbonePart(nn.Module):
    """``(pixel_values [B,3,S,S], input_ids [B,L], attention_mask [B,L]) -> feature [B,F]``."""

    def __init__(self, policy: MobileVLAPolicy):
        super().__init__()
        self.cfg = policy.cfg
        self.kosmos_model = policy.kosmos_model
        self.clip = policy.clip
        self.proj = policy.proj
        self.register_buffer("prefix_ids", policy.prefix_ids, persistent=False)

    def forward(self, pixel_values, input_ids, attention_mask):
        return MobileVLAPolicy.encode_frames(self, pixel_values, input_ids, attention_mask)


class HeadPart(nn.Module):
    """``features [B,T,F] -> actions [B,action_dim]`` (the LSTM over the window, then the MLP)."""

    def __init__(self, policy: MobileVLAPolicy):
        super().__init__()
        self.cfg = policy.cfg
        self.rnn = policy.rnn
        self.action = policy.action

    def forward(self, features):
        return MobileVLAPolicy.head(self, features)


def split_policy(policy: Any) -> tuple[BackbonePart, HeadPart]:
    """The two parts of a policy (or of a ``LoadedPolicy``), sharing its weights."""
    policy = getattr(policy, "policy", policy)
    return BackbonePart(policy).eval(), HeadPart(policy).eval()


def torch_part_runners(policy: Any, *, head_opts: dict[str, Any] | None = None, **runner_kwargs: Any) -> tuple[ModuleRunner, ModuleRunner]:
    """Backbone and head runners over a policy's parts; ``runner_kwargs`` go to both :class:`ModuleRunner`
    instances, ``head_opts`` override them for the head (e.g. no ``torch.compile`` for a small LSTM)."""
    backbone, head = split_policy(policy)
    return (
        ModuleRunner(backbone, BACKBONE_INPUTS, BACKBONE_OUTPUTS, label="backbone", **runner_kwargs),
        ModuleRunner(head, HEAD_INPUTS, HEAD_OUTPUTS, label="head", **(runner_kwargs | (head_opts or {}))),
    )


def torch_streaming_policy(loaded: Any, *, tokenizer: Any, window: int | None = None, text_len: int | None = None, **runner_kwargs: Any) -> Policy:
    """A :class:`Policy` whose two parts run in PyTorch (the reference for the exported parts).

    On CUDA the feature windows stay on the GPU (:class:`~vla_export.backends.torch_frames.DeviceWindows`,
    shared by the policy's siblings): a step copies only the frame in and the action out.
    """
    policy = getattr(loaded, "policy", loaded)
    cfg = policy.cfg
    backbone, head = torch_part_runners(policy, **runner_kwargs)
    window = window or cfg.window
    device = str(runner_kwargs.get("device", "cpu"))
    windows = DeviceWindows(window, device=device) if device.startswith("cuda") else None
    return Policy(
        backbone, head, tokenizer=tokenizer, window=window, image_size=cfg.image_size,
        action_dim=cfg.action_dim, text_len=text_len, config=cfg, windows=windows,
    )
