"""Recover the policy architecture from tensor names and shapes, and say what was assumed.

Mobile VLA checkpoints store no config, and the class that wrote them is not published. Widths,
depths, vocabulary, LSTM and head sizes, image size and latent queries follow from shapes. What
shapes cannot say (attention heads, the final Tanh, pooling, window, special token ids, text
lengths) is assumed, and every such value is a :class:`FieldSource` saying from what. A guess that
changes the outputs and that nothing in the file can confirm carries ``warn=True`` and the
``--set FIELD=VALUE`` flag that confirms or corrects it.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vla_export.errors import ArchitectureError
from vla_export.models.config import PRESETS, PolicyConfig, TextConfig, TokenIds, VisionConfig

KOSMOS_VISION = "kosmos_model.vision_model.model."
KOSMOS_TEXT = "kosmos_model.text_model.model."
PROJECTION = "kosmos_model.image_to_text_projection."
HEAD_DIM_DEFAULT = 64
#: Presets that are published architectures: their head counts and token ids are the real models'.
PUBLISHED = ("mobile-vla", "mobile-vla-kosmos")
PUBLISHED_TOWERS = {"kosmos_vision": "microsoft/kosmos-2-patch14-224", "kosmos_text": "microsoft/kosmos-2-patch14-224", "clip_vision": "openai/clip-vit-base-patch32"}
#: Defaults for values no tensor holds (Mobile VLA's server settings).
DEFAULT_WINDOW = 8
DEFAULT_POOLING = "last"
DEFAULT_MAX_TEXT_LEN = 256
BASES = ("derived", "assumed", "recorded", "given")


@dataclass(frozen=True)
class FieldSource:
    """Where one config value came from: derived (from tensor shapes), assumed, recorded (in the file) or given (by the user)."""

    field: str
    value: Any
    basis: str
    source: str
    warn: bool = False  # a wrong guess changes the outputs and nothing in the file can confirm it

    @property
    def flag(self) -> str:
        """The option that states this value explicitly."""
        return f"--set {shlex.quote(f'{self.field}={format_value(self.value)}')}"

    def line(self) -> str:
        return f"{self.field}={format_value(self.value)} {self.basis} ({self.source})"

    def to_dict(self) -> dict[str, Any]:
        value = dataclasses.asdict(self.value) if dataclasses.is_dataclass(self.value) else self.value
        return {"field": self.field, "value": value, "basis": self.basis, "source": self.source,
                "warn": self.warn, "confirm_with": self.flag if self.warn else None}


def format_value(value: Any) -> str:
    if isinstance(value, TokenIds):
        value = {k: getattr(value, k) for k in ("bos", "pad", "eos", "image_start", "image_end")}
    return json.dumps(value, separators=(",", ":")) if not isinstance(value, str) else value


@dataclass
class InferredConfig:
    config: PolicyConfig
    matched_preset: str | None
    assumptions: list[FieldSource] = field(default_factory=list)


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


def _published_heads(attr: str) -> dict[tuple[int, int], tuple[int, str]]:
    """(width, depth) -> (heads, model name) for the towers of published architectures."""
    out = {}
    for name in PUBLISHED:
        tower = getattr(PRESETS[name], attr)
        if tower is not None:
            width = tower.embed_dim if isinstance(tower, TextConfig) else tower.hidden_size
            out[(width, tower.num_layers)] = (tower.num_heads, PUBLISHED_TOWERS[attr])
    return out


def _preset_heads(attr: str) -> dict[int, tuple[int, str]]:
    out = {}
    for preset in PRESETS.values():
        tower = getattr(preset, attr)
        if tower is not None:
            width = tower.embed_dim if isinstance(tower, TextConfig) else tower.hidden_size
            out.setdefault(width, (tower.num_heads, preset.name))
    return out


def _heads(width: int, depth: int, attr: str, what: str, notes: list[FieldSource]) -> int:
    """Attention heads are not stored in weights: the published model's count, else a documented guess with a warning."""
    fname = f"{attr}.num_heads"
    published = _published_heads(attr).get((width, depth))
    if published:
        heads, model = published
        notes.append(FieldSource(fname, heads, "assumed", f"{model} has this {what} width {width} and depth {depth}"))
        return heads
    preset = _preset_heads(attr).get(width)
    if preset:
        heads, name = preset
        notes.append(FieldSource(fname, heads, "assumed", f"preset '{name}' has the same {what} width {width}; not stored in weights", warn=True))
        return heads
    if width % HEAD_DIM_DEFAULT == 0:
        heads, why = width // HEAD_DIM_DEFAULT, f"head size {HEAD_DIM_DEFAULT}, the CLIP/Kosmos-2 convention"
    else:
        heads = next(h for h in range(1, width + 1) if width % h == 0 and width // h <= HEAD_DIM_DEFAULT)
        why = f"the fewest heads of size <= {HEAD_DIM_DEFAULT} that divide width {width}"
    notes.append(FieldSource(fname, heads, "assumed", f"{what}: {why}; not stored in weights", warn=True))
    return heads


def _vision(shapes: Mapping[str, tuple], prefix: str, attr: str, what: str, notes: list[FieldSource]) -> VisionConfig:
    hidden = _need(shapes, prefix + "embeddings.class_embedding", what)[0]
    patch = _need(shapes, prefix + "embeddings.patch_embedding.weight", what)[-1]
    positions = _need(shapes, prefix + "embeddings.position_embedding.weight", what)[0]
    side = round((positions - 1) ** 0.5)
    if side * side != positions - 1:
        raise ArchitectureError(f"{what}: {positions} position embeddings is not a square grid plus CLS")
    layers = _count_layers(shapes, prefix + "encoder.layers.")
    inter = _need(shapes, prefix + "encoder.layers.0.mlp.fc1.weight", what)[0]
    notes.append(FieldSource(
        f"{attr}.image_size", side * patch, "derived",
        f"{positions} position embeddings = CLS + {side}x{side} patches of {patch} px",
    ))
    return VisionConfig(
        hidden_size=hidden,
        num_layers=layers,
        num_heads=_heads(hidden, layers, attr, what, notes),
        intermediate_size=inter,
        image_size=side * patch,
        patch_size=patch,
    )


def infer_config(state_dict: Mapping[str, object]) -> InferredConfig:
    """Build a :class:`PolicyConfig` from normalised key names and shapes (values may be tensors or shapes).

    ``assumptions`` lists every value not read from a tensor shape (and the image size, derived from
    one), each with its basis and source.
    """
    shapes = {k: _shape(v) for k, v in state_dict.items()}
    if not any(k.startswith(KOSMOS_VISION) for k in shapes):
        prefixes = sorted({k.split(".")[0] for k in shapes})[:6]
        raise ArchitectureError(
            "not a Kosmos-2 policy: no 'kosmos_model.vision_model.*' weights "
            f"(top-level prefixes: {', '.join(prefixes) or 'none'}); map them with --rename OLD=NEW or pass --config"
        )
    notes: list[FieldSource] = []
    kv = _vision(shapes, KOSMOS_VISION, "kosmos_vision", "Kosmos-2 vision", notes)
    vocab, embed = _need(shapes, KOSMOS_TEXT + "embed_tokens.weight", "Kosmos-2 text model")
    text_layers = _count_layers(shapes, KOSMOS_TEXT + "layers.")
    kt = TextConfig(
        embed_dim=embed,
        num_layers=text_layers,
        num_heads=_heads(embed, text_layers, "kosmos_text", "Kosmos-2 text", notes),
        ffn_dim=_need(shapes, KOSMOS_TEXT + "layers.0.ffn.fc1.weight", "Kosmos-2 text model")[0],
        vocab_size=vocab,
    )
    notes.append(FieldSource("kosmos_text.max_position_embeddings", kt.max_position_embeddings, "assumed",
                             "Kosmos-2's default; sinusoidal positions have no weights, and it matters only past that many tokens"))
    latent = _need(shapes, PROJECTION + "latent_query", "image-to-text projection")[0]
    notes.append(FieldSource("latent_query_num", latent, "derived", f"{PROJECTION}latent_query has {latent} rows"))

    clip = None
    if any(k.startswith("clip.") for k in shapes):
        cp = "clip.vision_model." if any(k.startswith("clip.vision_model.") for k in shapes) else "clip."
        clip = _vision(shapes, cp, "clip_vision", "CLIP vision", notes)

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
    matched = next((p for p in PRESETS.values() if all(_same(getattr(p, k), v) for k, v in structural.items())), None)

    by_vocab = next((p for p in PRESETS.values() if p.kosmos_text.vocab_size == vocab), None)
    tokens = by_vocab.tokens if by_vocab else TokenIds(bos=0, pad=1, eos=2, image_start=3, image_end=4)
    if by_vocab and by_vocab.name in PUBLISHED:
        notes.append(FieldSource("tokens", tokens, "assumed", f"the Kosmos-2 tokenizer's ids (vocabulary size {vocab})"))
    elif by_vocab:
        notes.append(FieldSource("tokens", tokens, "assumed", f"preset '{by_vocab.name}' has the same vocabulary size {vocab}; not stored in weights", warn=True))
    else:
        notes.append(FieldSource("tokens", tokens, "assumed", f"defaults: no known tokenizer has vocabulary size {vocab}", warn=True))
    notes.append(FieldSource(
        "head_tanh", False, "assumed",
        "a Tanh has no weights; off unless confirmed: a trained Mobile VLA head outputs up to +-1.15, which a Tanh would clip",
        warn=True,
    ))
    notes.append(FieldSource("pooling", DEFAULT_POOLING, "assumed", "the last prompt token's hidden state, as Mobile VLA; not stored in weights", warn=True))
    window = matched.window if matched else DEFAULT_WINDOW
    notes.append(FieldSource("window", window, "assumed", (f"preset '{matched.name}'" if matched else "Mobile VLA's server window")
                             + "; only the default: artifacts record the window they were exported for"))
    max_text = matched.max_text_len if matched else DEFAULT_MAX_TEXT_LEN
    notes.append(FieldSource("max_text_len", max_text, "assumed", (f"preset '{matched.name}'" if matched else "Mobile VLA's prompt limit")
                             + "; bounds the text axis of exports"))
    config = PolicyConfig(
        name="inferred", tokens=tokens, pooling=DEFAULT_POOLING, head_tanh=False, window=window, max_text_len=max_text, **structural
    )
    return InferredConfig(config, matched.name if matched else None, notes)


def _same(a, b) -> bool:
    if isinstance(a, VisionConfig) and isinstance(b, VisionConfig):
        # head counts are not in the weights; compare the rest
        return (a.hidden_size, a.num_layers, a.intermediate_size, a.image_size, a.patch_size) == (
            b.hidden_size, b.num_layers, b.intermediate_size, b.image_size, b.patch_size)
    if isinstance(a, TextConfig) and isinstance(b, TextConfig):
        return (a.embed_dim, a.num_layers, a.ffn_dim, a.vocab_size) == (b.embed_dim, b.num_layers, b.ffn_dim, b.vocab_size)
    return a == b
