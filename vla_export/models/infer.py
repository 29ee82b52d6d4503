"""Recover the policy architecture from tensor names and shapes.

Mobile VLA checkpoints store no config, and the class that wrote them is not published. Widths,
depths, vocabulary, LSTM and head sizes follow from shapes. What shapes cannot say (attention head
counts, special token ids, pooling, window, Tanh) comes from the preset with the same widths, or
from documented defaults; each such choice is listed in ``assumptions``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from vla_export.errors import ArchitectureError
from vla_export.models.config import PRESETS, PolicyConfig, TextConfig, TokenIds, VisionConfig

KOSMOS_VISION = "kosmos_model.vision_model.model."
KOSMOS_TEXT = "kosmos_model.text_model.model."
PROJECTION = "kosmos_model.image_to_text_projection."
HEAD_DIM_DEFAULT = 64


@dataclass
class InferredConfig:
    config: PolicyConfig
    matched_preset: str | None
    assumptions: list[str] = field(default_factory=list)


def _shape(value) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def _count_layers(shapes: Mapping[str, tuple], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for k in shapes if (m := pattern.match(k))}
    return max(indices) + 1 if indices else 0


def _need(shapes: Mapping[str, tuple], key: str, what: str) -> tuple[int, ...]:
    if key not in shapes:
        raise ArchitectureError(f"cannot infer the {what}: no tensor named {key!r}")
    return shapes[key]


def _heads(hidden: int, known: dict[int, int], what: str, assumptions: list[str]) -> int:
    if hidden in known:
        return known[hidden]
    if hidden % HEAD_DIM_DEFAULT:
        raise ArchitectureError(f"cannot infer the {what} attention heads for width {hidden}; pass --config")
    assumptions.append(f"{what}: {hidden // HEAD_DIM_DEFAULT} attention heads assumed (head size {HEAD_DIM_DEFAULT}; not stored in weights)")
    return hidden // HEAD_DIM_DEFAULT


def _vision(shapes: Mapping[str, tuple], prefix: str, what: str, known_heads: dict[int, int], assumptions: list[str]) -> VisionConfig:
    hidden = _need(shapes, prefix + "embeddings.class_embedding", what)[0]
    patch = _need(shapes, prefix + "embeddings.patch_embedding.weight", what)[-1]
    positions = _need(shapes, prefix + "embeddings.position_embedding.weight", what)[0]
    side = round((positions - 1) ** 0.5)
    if side * side != positions - 1:
        raise ArchitectureError(f"{what}: {positions} position embeddings is not a square grid plus CLS")
    layers = _count_layers(shapes, prefix + "encoder.layers.")
    inter = _need(shapes, prefix + "encoder.layers.0.mlp.fc1.weight", what)[0]
    return VisionConfig(
        hidden_size=hidden,
        num_layers=layers,
        num_heads=_heads(hidden, known_heads, what, assumptions),
        intermediate_size=inter,
        image_size=side * patch,
        patch_size=patch,
    )


def infer_config(state_dict: Mapping[str, object]) -> InferredConfig:
    """Build a :class:`PolicyConfig` from normalised key names and shapes (values may be tensors or shapes)."""
    shapes = {k: _shape(v) for k, v in state_dict.items()}
    if not any(k.startswith(KOSMOS_VISION) for k in shapes):
        prefixes = sorted({k.split(".")[0] for k in shapes})[:6]
        raise ArchitectureError(
            "not a Kosmos-2 policy: no 'kosmos_model.vision_model.*' weights "
            f"(top-level prefixes: {', '.join(prefixes) or 'none'}); map them with --rename OLD=NEW or pass --config"
        )
    assumptions: list[str] = []
    vision_heads = {p.kosmos_vision.hidden_size: p.kosmos_vision.num_heads for p in PRESETS.values()}
    clip_heads = {p.clip_vision.hidden_size: p.clip_vision.num_heads for p in PRESETS.values() if p.clip_vision}
    text_heads = {p.kosmos_text.embed_dim: p.kosmos_text.num_heads for p in PRESETS.values()}

    kv = _vision(shapes, KOSMOS_VISION, "Kosmos-2 vision tower", vision_heads, assumptions)
    vocab, embed = _need(shapes, KOSMOS_TEXT + "embed_tokens.weight", "Kosmos-2 text model")
    kt = TextConfig(
        embed_dim=embed,
        num_layers=_count_layers(shapes, KOSMOS_TEXT + "layers."),
        num_heads=_heads(embed, text_heads, "Kosmos-2 text model", assumptions),
        ffn_dim=_need(shapes, KOSMOS_TEXT + "layers.0.ffn.fc1.weight", "Kosmos-2 text model")[0],
        vocab_size=vocab,
    )
    latent = _need(shapes, PROJECTION + "latent_query", "image-to-text projection")[0]

    clip = None
    if any(k.startswith("clip.") for k in shapes):
        cp = "clip.vision_model." if any(k.startswith("clip.vision_model.") for k in shapes) else "clip."
        clip = _vision(shapes, cp, "CLIP vision encoder", clip_heads, assumptions)

    feature_proj = shapes["proj.weight"][0] if "proj.weight" in shapes else None

    ih = _need(shapes, "rnn.weight_ih_l0", "LSTM")
    lstm_hidden = _need(shapes, "rnn.weight_hh_l0", "LSTM")[1]
    if ih[0] != 4 * lstm_hidden:
        raise ArchitectureError(f"rnn.weight_ih_l0 has {ih[0]} rows; an LSTM of hidden {lstm_hidden} needs {4 * lstm_hidden}")
    lstm_layers = len([k for k in shapes if re.fullmatch(r"rnn\.weight_ih_l\d+", k)])

    linear_idx = sorted(int(m.group(1)) for k in shapes if (m := re.fullmatch(r"action\.(\d+)\.weight", k)))
    if not linear_idx:
        raise ArchitectureError("cannot infer the action head: no 'action.N.weight' tensors")
    dims = [shapes[f"action.{i}.weight"] for i in linear_idx]
    for (out_prev, _), (_, in_next) in zip(dims, dims[1:]):
        if out_prev != in_next:
            raise ArchitectureError(f"action head layers do not chain: {dims}")
    head_hidden = tuple(d[0] for d in dims[:-1])
    action_dim = dims[-1][0]

    feature_in = embed + (clip.hidden_size if clip else 0)
    expected_in = feature_proj or feature_in
    if ih[1] != expected_in:
        raise ArchitectureError(
            f"the LSTM takes {ih[1]} features but the backbone gives {expected_in} "
            f"(Kosmos-2 text {embed}{f' + CLIP {clip.hidden_size}' if clip else ''}); pass --config"
        )

    structural = dict(
        kosmos_vision=kv, kosmos_text=kt, latent_query_num=latent, clip_vision=clip, feature_proj=feature_proj,
        lstm_hidden=lstm_hidden, lstm_layers=lstm_layers, head_hidden=head_hidden, action_dim=action_dim,
    )
    for preset in PRESETS.values():
        if all(_same(getattr(preset, k), v) for k, v in structural.items()):
            return InferredConfig(preset, preset.name, assumptions=[])

    by_vocab = next((p for p in PRESETS.values() if p.kosmos_text.vocab_size == vocab), None)
    tokens = by_vocab.tokens if by_vocab else TokenIds(bos=0, pad=1, eos=2, image_start=3, image_end=4)
    assumptions.append(
        f"special tokens {tokens} taken from the "
        + (f"'{by_vocab.name}' preset (same vocabulary size)" if by_vocab else "defaults (no preset has this vocabulary size)")
    )
    assumptions.append("pooling 'last', window 8, Tanh after the head: not stored in weights (defaults)")
    config = PolicyConfig(name="inferred", tokens=tokens, **structural)
    return InferredConfig(config, None, assumptions)


def _same(a, b) -> bool:
    if isinstance(a, VisionConfig) and isinstance(b, VisionConfig):
        # head counts are not in the weights; compare the rest
        return (a.hidden_size, a.num_layers, a.intermediate_size, a.image_size, a.patch_size) == (
            b.hidden_size, b.num_layers, b.intermediate_size, b.image_size, b.patch_size)
    if isinstance(a, TextConfig) and isinstance(b, TextConfig):
        return (a.embed_dim, a.num_layers, a.ffn_dim, a.vocab_size) == (b.embed_dim, b.num_layers, b.ffn_dim, b.vocab_size)
    return a == b
