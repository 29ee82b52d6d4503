"""Checkpoints as other code bases write them, built in tests (tiny, seconds).

* ``foreign``: the Mobile VLA training format (model_state_dict + optimizer + args) from a code base
  with its own module names (``vlm``, ``image_encoder``, ``temporal.lstm``, ``policy_head``), widths
  no preset has with 4 attention heads everywhere, a 3-action head without a final Tanh, and CLIP
  keys in transformers-4 names (``image_encoder.vision_model.*``).
* ``robovlms``: a PyTorch Lightning checkpoint of RoboVLMs' RoboKosMos + LSTMDecoder, names as in
  github.com/Robot-VLAs/RoboVLMs (``model.backbone`` = Kosmos2ForConditionalGeneration, with its
  tied ``text_model.lm_head``; ``model.act_head.rnn``; ``model.act_head.actions.mlp.{0,2,4,6}``),
  optionally with its gripper head and action token, which this policy has no place for.
"""

from __future__ import annotations

import argparse
from collections import OrderedDict

import torch

from vla_export.models.config import PolicyConfig, TextConfig, TokenIds, VisionConfig
from vla_export.models.loader import init_policy

FOREIGN_CONFIG = PolicyConfig(
    name="foreign",
    kosmos_vision=VisionConfig(hidden_size=40, num_layers=1, num_heads=4, intermediate_size=80, image_size=64, patch_size=32),
    kosmos_text=TextConfig(embed_dim=56, num_layers=1, num_heads=4, ffn_dim=112, vocab_size=67),
    latent_query_num=4,
    clip_vision=VisionConfig(hidden_size=36, num_layers=1, num_heads=4, intermediate_size=72, image_size=64, patch_size=32),
    lstm_hidden=24,
    lstm_layers=1,
    head_hidden=(16,),
    head_tanh=False,
    action_dim=3,
    window=2,
    max_text_len=16,
    tokens=TokenIds(bos=0, pad=1, eos=2, image_start=3, image_end=4),
)
#: The foreign code base's names for this toolkit's modules (CLIP in transformers-4 names).
FOREIGN_NAMES = (("kosmos_model.", "vlm."), ("clip.", "image_encoder.vision_model."), ("rnn.", "temporal.lstm."), ("action.", "policy_head."))
#: What `propose_renames` must find (longest prefix first).
FOREIGN_RENAMES = ["image_encoder.=clip.", "temporal.lstm.=rnn.", "policy_head.=action.", "vlm.=kosmos_model."]

ROBOVLMS_CONFIG = FOREIGN_CONFIG.replace(name="robovlms", clip_vision=None, head_hidden=(20, 12, 8), head_tanh=True, action_dim=6)


def _rename(sd, pairs):
    out = OrderedDict()
    for k, v in sd.items():
        for old, new in pairs:
            if k.startswith(old):
                k = new + k[len(old):]
                break
        out[k] = v.clone()
    return out


def foreign_policy(seed: int = 3):
    return init_policy(FOREIGN_CONFIG, seed=seed)


def save_foreign(policy, path):
    """The Mobile VLA training dict, written with torch.save as the other code base does (no vla-export record)."""
    sd = _rename(policy.state_dict(), FOREIGN_NAMES)
    torch.save({
        "epoch": 7, "model_state_dict": sd,
        "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 1e-4, "params": []}]},
        "val_mae": 0.21, "args": argparse.Namespace(data_path="episodes", batch_size=4, num_epochs=7, output_dir="out", save_interval=1),
    }, path)
    return path


def robovlms_policy(seed: int = 4):
    return init_policy(ROBOVLMS_CONFIG, seed=seed)


def save_robovlms(policy, path, *, gripper: bool = False):
    """A Lightning checkpoint: ``state_dict`` with the LightningModule's ``model.`` prefix."""
    sd = policy.state_dict()
    out = OrderedDict()
    for k, v in sd.items():
        if k.startswith("kosmos_model."):
            out["model.backbone." + k[len("kosmos_model."):]] = v.clone()
        elif k.startswith("rnn."):
            out["model.act_head." + k] = v.clone()
        elif k.startswith("action."):
            index, rest = k[len("action."):].split(".", 1)
            out[f"model.act_head.actions.mlp.{index}.{rest}"] = v.clone()
    # Kosmos2ForConditionalGeneration's lm_head, tied to the input embeddings (one storage, two names).
    out["model.backbone.text_model.lm_head.weight"] = out["model.backbone.text_model.model.embed_tokens.weight"]
    if gripper:
        out["model.act_head.gripper.mlp.0.weight"] = torch.zeros(1024, ROBOVLMS_CONFIG.lstm_hidden)
        out["model.act_head.gripper.mlp.0.bias"] = torch.zeros(1024)
        out["model.action_token"] = torch.zeros(ROBOVLMS_CONFIG.kosmos_text.embed_dim)
    torch.save({"epoch": 1, "global_step": 100, "state_dict": out, "optimizer_states": [], "lr_schedulers": []}, path)
    return path
