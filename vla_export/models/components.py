"""Which part of the policy a parameter belongs to, by its (normalised) name."""

from __future__ import annotations

from collections.abc import Iterable

#: (component, name prefix), most specific first. Order is the report order.
COMPONENT_PREFIXES: tuple[tuple[str, str], ...] = (
    ("kosmos_vision", "kosmos_model.vision_model."),
    ("projection", "kosmos_model.image_to_text_projection."),
    ("kosmos_text", "kosmos_model.text_model."),
    ("clip_vision", "clip."),
    ("feature_proj", "proj."),
    ("lstm", "rnn."),
    ("action_head", "action."),
)
COMPONENTS: tuple[str, ...] = tuple(name for name, _ in COMPONENT_PREFIXES)
OTHER = "other"


def component_of(key: str) -> str:
    for name, prefix in COMPONENT_PREFIXES:
        if key.startswith(prefix):
            return name
    return OTHER


def group_by_component(keys: Iterable[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(component_of(key), []).append(key)
    return groups
