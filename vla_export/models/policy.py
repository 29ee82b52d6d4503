"""The RoboVLMs-style policy, built from the real Hugging Face Kosmos-2 and CLIP modules.

Module names match the Mobile VLA checkpoints (``kosmos_model``, ``clip``, ``rnn``, ``action``),
so their state dicts load without renaming.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from vla_export.models.config import PolicyConfig

if TYPE_CHECKING:
    from transformers import CLIPVisionConfig, Kosmos2Config


def kosmos2_hf_config(cfg: PolicyConfig, attn_implementation: str = "sdpa") -> Kosmos2Config:
    from transformers import Kosmos2Config

    v, t = cfg.kosmos_vision, cfg.kosmos_text
    hf = Kosmos2Config(
        text_config=dict(
            vocab_size=t.vocab_size,
            max_position_embeddings=t.max_position_embeddings,
            embed_dim=t.embed_dim,
            layers=t.num_layers,
            ffn_dim=t.ffn_dim,
            attention_heads=t.num_heads,
            pad_token_id=cfg.tokens.pad,
            bos_token_id=cfg.tokens.bos,
            eos_token_id=cfg.tokens.eos,
            dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
        ),
        vision_config=dict(
            hidden_size=v.hidden_size,
            intermediate_size=v.intermediate_size,
            num_hidden_layers=v.num_layers,
            num_attention_heads=v.num_heads,
            image_size=v.image_size,
            patch_size=v.patch_size,
        ),
        latent_query_num=cfg.latent_query_num,
    )
    _set_attn(hf, attn_implementation)
    return hf


def clip_hf_config(cfg: PolicyConfig, attn_implementation: str = "sdpa") -> CLIPVisionConfig:
    from transformers import CLIPVisionConfig

    c = cfg.clip_vision
    assert c is not None  # internal invariant: only called when the config has CLIP
    hf = CLIPVisionConfig(
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads,
        image_size=c.image_size,
        patch_size=c.patch_size,
    )
    _set_attn(hf, attn_implementation)
    return hf


def _set_attn(hf_config, impl: str) -> None:
    for sub in (hf_config, getattr(hf_config, "text_config", None), getattr(hf_config, "vision_config", None)):
        if sub is not None:
            sub._attn_implementation = impl


def prefix_ids(cfg: PolicyConfig) -> torch.Tensor:
    """``<s> <image> [image slots] </image>``: the token ids the model prepends to every prompt."""
    t = cfg.tokens
    return torch.tensor([t.bos, t.image_start] + [t.pad] * cfg.latent_query_num + [t.image_end], dtype=torch.long)


class MobileVLAPolicy(nn.Module):
    """Kosmos-2 (+ optional CLIP) per-frame features -> LSTM over the window -> MLP -> actions.

    Inputs: ``pixel_values`` [B, T, 3, H, W] (a [B, 3, H, W] tensor is one frame), ``input_ids`` [B, L]
    (the tokenised prompt without ``<s>``), ``attention_mask`` [B, L]. Output: ``actions`` [B, action_dim]
    for the last frame of the window.

    The Kosmos-2 image prefix is built by concatenation rather than HF's boolean-mask scatter, which
    exports to NonZero/ScatterND and which TensorRT handles badly. It computes the same thing.
    """

    def __init__(self, cfg: PolicyConfig, attn_implementation: str = "sdpa"):
        super().__init__()
        from transformers import CLIPVisionModel, Kosmos2Model

        self.cfg = cfg
        self.kosmos_model = Kosmos2Model(kosmos2_hf_config(cfg, attn_implementation))
        self.clip = CLIPVisionModel(clip_hf_config(cfg, attn_implementation)) if cfg.clip_vision else None
        feat = cfg.kosmos_text.embed_dim + (cfg.clip_vision.hidden_size if cfg.clip_vision else 0)
        self.proj = nn.Linear(feat, cfg.feature_proj) if cfg.feature_proj else None
        self.rnn = nn.LSTM(cfg.frame_feature_dim, cfg.lstm_hidden, num_layers=cfg.lstm_layers, batch_first=True)
        layers: list[nn.Module] = []
        width = cfg.lstm_hidden
        for hidden in cfg.head_hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, cfg.action_dim))
        if cfg.head_tanh:
            layers.append(nn.Tanh())
        self.action = nn.Sequential(*layers)
        self.register_buffer("prefix_ids", prefix_ids(cfg), persistent=False)

    def encode_frames(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Per-frame features [N, frame_feature_dim] for N frames, each with its own prompt row."""
        q = self.cfg.latent_query_num
        kosmos = self.kosmos_model
        # Kosmos2Model.get_image_features, spelled out: its return type differs between transformers 4.x and 5.x.
        vision_hidden = kosmos.vision_model(pixel_values=pixel_values, return_dict=True)[0]
        image_embeds = nn.functional.normalize(kosmos.vision_model.model.post_layernorm(vision_hidden), dim=-1)
        image_embeds = kosmos.image_to_text_projection(image_embeds)[0]  # [N, Q, D]
        n = pixel_values.shape[0]
        embed = kosmos.text_model.model.embed_tokens
        prefix = embed(self.prefix_ids).unsqueeze(0).expand(n, -1, -1)
        text = embed(input_ids)
        # Unscaled embeddings, as HF inserts image features before applying embed_scale.
        inputs_embeds = torch.cat([prefix[:, :2], image_embeds.to(text.dtype), prefix[:, 2 + q :], text], dim=1)
        mask = torch.cat([torch.ones(n, self.cfg.prefix_len, dtype=attention_mask.dtype, device=attention_mask.device), attention_mask], dim=1)
        # HF's own rule: positions count non-padding tokens from padding_idx + 1; padding sits at padding_idx.
        # HF computes cumsum(mask) * mask; for right-padded masks (the prefix is all ones, the prompt is
        # right-padded) that equals arange(1..L) * mask. The closed form keeps CumSum on INT64 out of the
        # graph: TensorRT 10.3's ONNX support matrix lists CumSum for float types only.
        positions = torch.arange(1, mask.shape[1] + 1, dtype=mask.dtype, device=mask.device).unsqueeze(0)
        position_ids = positions * mask + self.cfg.tokens.pad
        hidden = kosmos.text_model(
            inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=position_ids.long(), return_dict=True
        ).last_hidden_state
        maskf = mask.to(hidden.dtype).unsqueeze(-1)
        if self.cfg.pooling == "mean":
            pooled = (hidden * maskf).sum(dim=1) / maskf.sum(dim=1)
        else:
            last = (mask.sum(dim=1) - 1).long().view(n, 1, 1).expand(n, 1, hidden.shape[-1])
            pooled = torch.gather(hidden, 1, last).squeeze(1)
        parts = [pooled]
        if self.clip is not None:
            parts.append(self.clip(pixel_values=pixel_values, return_dict=True).pooler_output.to(pooled.dtype))
        feature = torch.cat(parts, dim=-1) if len(parts) > 1 else pooled
        if self.proj is not None:
            feature = self.proj(feature)
        return feature

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Actions [B, action_dim] from a window of features [B, T, F] (the last step's output)."""
        out, _ = self.rnn(features)
        return self.action(out[:, -1])

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        return_features: bool = False,
    ):
        if pixel_values.dim() == 4:
            pixel_values = pixel_values.unsqueeze(1)
        b, t = pixel_values.shape[0], pixel_values.shape[1]
        frames = pixel_values.reshape(b * t, *pixel_values.shape[2:])
        seq = input_ids.shape[-1]
        ids = input_ids.unsqueeze(1).expand(b, t, seq).reshape(b * t, seq)
        mask = attention_mask.unsqueeze(1).expand(b, t, seq).reshape(b * t, seq)
        features = self.encode_frames(frames, ids, mask).reshape(b, t, -1)
        actions = self.head(features)
        if return_features:
            return actions, features
        return actions
