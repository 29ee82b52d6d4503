"""Known checkpoint key layouts, mapped to this toolkit's module names; a diagnosis when none fits.

The policy's modules are ``kosmos_model`` (Kosmos-2), ``clip`` (CLIP vision, optional), ``proj``
(optional), ``rnn`` (LSTM) and ``action`` (MLP head). Other code bases store the same modules under
their own names. :data:`KNOWN_LAYOUTS` is a small table of the ones we know; each is tried, also
inside the whole-model wrappers of :data:`WRAPPERS`, and the first that yields the policy's anchor
tensors wins and is reported by name. When none fits, :func:`diagnose` lists the unrecognised
prefixes (tensors, parameters, examples) and :func:`propose_renames` works out the ``--rename``
lines from tensor names and shapes; they are checked against a meta-device model before being
proposed, so a proposal always loads.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vla_export.models.checkpoint import clip_names, match_clip_layout, rename_key, strip_and_rename

#: The top-level module names of this toolkit's policy.
CANONICAL_PREFIXES = ("kosmos_model.", "clip.", "proj.", "rnn.", "action.")
#: Tensors every policy checkpoint holds once mapped: a layout matches when it yields all of them.
ANCHORS = ("kosmos_model.vision_model.model.embeddings.class_embedding", "rnn.weight_hh_l0")


@dataclass(frozen=True)
class KeyLayout:
    """One code base's module names, as prefix renames to this toolkit's names."""

    name: str
    written_by: str
    renames: tuple[tuple[str, str], ...] = ()
    #: Config values the code base's module classes imply, as (field, value, why); still unconfirmable from weights.
    hints: tuple[tuple[str, object, str], ...] = ()


#: The layouts recognised automatically, tried in order (docs: README "Checkpoints from other code bases").
KNOWN_LAYOUTS: tuple[KeyLayout, ...] = (
    KeyLayout("vla-export", "this toolkit and the Mobile VLA training scripts (kosmos_model, clip, proj, rnn, action)"),
    KeyLayout(
        "robovlms",
        "RoboVLMs (RoboKosMos: backbone = Kosmos-2; LSTMDecoder: act_head.rnn, act_head.actions.mlp)",
        (("backbone.", "kosmos_model."), ("act_head.rnn.", "rnn."), ("act_head.actions.mlp.", "action.")),
        (("head_tanh", True, "RoboVLMs' LSTMDecoder builds act_head.actions as MLPTanhHead, which ends in a Tanh "
                             "(MLPNohHead has the same names and none)"),),
    ),
)
#: Whole-model wrappers around a known layout (PyTorch Lightning keeps the policy as ``model``).
#: DataParallel's ``module.`` and torch.compile's ``_orig_mod.`` are always stripped first.
WRAPPERS = ("model.", "policy.", "backbone.", "net.")
#: Tensors known code bases store that the policy never uses: dropped and reported, never silently.
UNUSED_PREFIXES: tuple[tuple[str, str], ...] = (
    ("kosmos_model.text_model.lm_head.", "Kosmos-2's text-generation head (the policy never generates text)"),
)


@dataclass
class KeyMapping:
    """The state dict in this toolkit's names, and how it got there."""

    state_dict: dict[str, Any]
    layout: str | None  # a KNOWN_LAYOUTS name, "--rename" (user renames alone), or None (not recognised)
    wrapper: str | None = None
    renames: list[tuple[str, str]] = field(default_factory=list)  # raw key prefix -> toolkit prefix, user's first
    dropped: list[dict[str, Any]] = field(default_factory=list)
    clip_names: str | None = None  # "nested" (transformers 4.x) or "flat" (5.x) in the file
    hints: tuple[tuple[str, object, str], ...] = ()  # from the matched layout

    @property
    def recognised(self) -> bool:
        return self.layout is not None

    def describe(self) -> str:
        if self.layout is None:
            return "not recognised"
        text = self.layout + (f" inside a '{self.wrapper}' wrapper" if self.wrapper else "")
        if self.clip_names:
            text += f"; CLIP names of transformers {'4.x' if self.clip_names == 'nested' else '5.x'}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "layout": self.layout, "wrapper": self.wrapper, "description": self.describe(),
            "renames": [f"{a}={b}" for a, b in self.renames], "dropped": self.dropped,
        }


def _has_anchors(keys: Any) -> bool:
    return all(a in keys for a in ANCHORS)


def _drop_unused(sd: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    dropped = []
    for prefix, reason in UNUSED_PREFIXES:
        keys = [k for k in sd if k.startswith(prefix)]
        if keys:
            dropped.append({"prefix": prefix, "tensors": len(keys), "parameters": sum(_numel(sd[k]) for k in keys), "reason": reason})
            sd = {k: v for k, v in sd.items() if not k.startswith(prefix)}
    return sd, dropped


def _numel(value: Any) -> int:
    shape = _shape(value)
    n = 1
    for d in shape:
        n *= d
    return n


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def map_keys(state_dict: Mapping[str, Any], renames: Sequence[tuple[str, str]] = (), clip_layout: str | None = None) -> KeyMapping:
    """Apply the user's ``renames``, then the first known layout (or wrapper + layout) that yields the anchors.

    Keys are returned in the installed transformers' CLIP names. A state dict no layout fits comes back
    with ``layout=None`` and the user's renames applied: :func:`diagnose` says what to do.
    """
    base = strip_and_rename(state_dict, renames)
    user = list(renames)
    candidates: list[tuple[str | None, KeyLayout]] = [(None, layout) for layout in KNOWN_LAYOUTS]
    for wrapper in WRAPPERS:
        if base and all(k.startswith(wrapper) for k in base):
            candidates += [(wrapper, layout) for layout in KNOWN_LAYOUTS]
    for wrapper, layout in candidates:
        pairs = [((wrapper or "") + old, new) for old, new in layout.renames]
        if wrapper:
            pairs.append((wrapper, ""))
        mapped = {rename_key(k, pairs): v for k, v in base.items()}
        if _has_anchors(mapped):
            names = clip_names(mapped)
            mapped, dropped = _drop_unused(mapped)
            name = layout.name if not (user and layout.name == "vla-export" and wrapper is None) else "--rename"
            return KeyMapping(match_clip_layout(mapped, clip_layout), name, wrapper, user + pairs, dropped, names, layout.hints)
    names = clip_names(base)
    return KeyMapping(match_clip_layout(base, clip_layout) if names else base, None, None, user, [], names)


# --- diagnosis -------------------------------------------------------------------------------------

@dataclass
class PrefixGroup:
    """Tensors under one unrecognised key prefix."""

    prefix: str
    tensors: int
    parameters: int
    examples: list[tuple[str, tuple[int, ...]]]

    def line(self) -> str:
        ex = ", ".join(f"{k} {list(s)}" for k, s in self.examples)
        return f"{self.prefix}*: {self.tensors} tensors, {self.parameters:,} parameters (e.g. {ex})"

    def to_dict(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "tensors": self.tensors, "parameters": self.parameters,
                "examples": [{"key": k, "shape": list(s)} for k, s in self.examples]}


def unrecognised(keys: Any) -> list[str]:
    """Keys outside this toolkit's module names (a strict load would reject them)."""
    return [k for k in keys if not k.startswith(CANONICAL_PREFIXES)]


def group_prefixes(shapes: Mapping[str, Any], keys: Sequence[str], examples: int = 3) -> list[PrefixGroup]:
    """``keys`` grouped by their first name, one level deeper when a single name holds them all."""
    depth = 1
    while depth < 3 and len({".".join(k.split(".")[:depth]) for k in keys}) == 1 and all(k.count(".") > depth for k in keys):
        depth += 1
    groups: dict[str, list[str]] = {}
    for k in keys:
        groups.setdefault(".".join(k.split(".")[:depth]) + ".", []).append(k)
    return [
        PrefixGroup(p, len(ks), sum(_numel(shapes[k]) for k in ks), [(k, _shape(shapes[k])) for k in ks[:examples]])
        for p, ks in sorted(groups.items())
    ]


def _find_suffix(keys: Sequence[str], suffix: str, exclude: Sequence[str] = ()) -> str | None:
    for k in keys:
        if (k == suffix or k.endswith("." + suffix)) and not any(k.startswith(e) for e in exclude if e):
            return k[: len(k) - len(suffix)]
    return None


def propose_renames(state_dict: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``--rename`` pairs that map ``state_dict`` (wrappers stripped) onto the policy's modules, from names and shapes.

    Kosmos-2 is the module holding ``text_model.model.embed_tokens.weight``; CLIP the other ViT (a
    ``embeddings.class_embedding`` outside Kosmos-2); the LSTM the module holding ``weight_hh_l0``; the
    head the numbered Linear layers whose first takes the LSTM's width; the projection a Linear from
    the backbone width to the LSTM's input. Unproven pairs are still returned: :func:`verify_renames` checks.
    """
    shapes = {k: _shape(v) for k, v in state_dict.items()}
    keys = list(shapes)
    pairs: list[tuple[str, str]] = []
    kosmos = _find_suffix(keys, "text_model.model.embed_tokens.weight")
    taken: list[str] = []
    if kosmos is not None:
        if kosmos == "":
            pairs += [(p, "kosmos_model." + p) for p in ("vision_model.", "text_model.", "image_to_text_projection.")]
            taken += ["vision_model.", "text_model.", "image_to_text_projection."]
        else:
            pairs.append((kosmos, "kosmos_model."))
            taken.append(kosmos)
    clip = _find_suffix(keys, "embeddings.class_embedding", exclude=taken)
    if clip:
        clip = clip[: -len("vision_model.")] if clip.endswith("vision_model.") and clip != "vision_model." else clip
        pairs.append((clip, "clip."))
        taken.append(clip)
    rnn = _find_suffix(keys, "weight_hh_l0", exclude=taken)
    lstm_hidden = None
    if rnn:
        pairs.append((rnn, "rnn."))
        taken.append(rnn)
        lstm_hidden = shapes[rnn + "weight_hh_l0"][1]
        lstm_in = shapes.get(rnn + "weight_ih_l0", (0, 0))[1]
    if lstm_hidden is not None:
        head = _find_head(shapes, lstm_hidden, taken)
        if head:
            pairs.append((head, "action."))
            taken.append(head)
        embed = shapes.get(next((k for k in keys if k.endswith("text_model.model.embed_tokens.weight")), ""), (0, 0))[-1]
        clip_width = shapes[clip + ("vision_model." if clip + "vision_model.embeddings.class_embedding" in shapes else "") + "embeddings.class_embedding"][0] if clip else 0
        for k, s in shapes.items():
            if k.endswith("weight") and len(s) == 2 and s == (lstm_in, embed + clip_width) and not any(k.startswith(t) for t in taken):
                pairs.append((k[: -len("weight")], "proj."))
                break
    pairs = [(a, b) for a, b in pairs if a and a != b]
    return sorted(pairs, key=lambda p: -len(p[0]))


def _find_head(shapes: Mapping[str, tuple[int, ...]], width: int, taken: Sequence[str]) -> str | None:
    """The prefix of numbered Linear layers (``P0.weight``, ``P2.weight``, ...) that chain from ``width``."""
    groups: dict[str, list[tuple[int, tuple[int, ...]]]] = {}
    for k, s in shapes.items():
        m = re.fullmatch(r"(.*?)(\d+)\.weight", k)
        if m and len(s) == 2 and not any(k.startswith(t) for t in taken if t):
            groups.setdefault(m.group(1), []).append((int(m.group(2)), s))
    for prefix, layers in groups.items():
        dims = [s for _, s in sorted(layers)]
        if dims[0][1] == width and all(a[0] == b[1] for a, b in zip(dims, dims[1:])):
            return prefix
    return None


def render_renames(pairs: Sequence[tuple[str, str]]) -> str:
    return " ".join(f"--rename {a}={b}" for a, b in pairs)
