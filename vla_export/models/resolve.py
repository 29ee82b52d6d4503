"""One resolved-model record: which layout the keys had, which config, and where every value came from.

Every command that takes a checkpoint resolves it here, from the same :class:`LoadOptions`
(``--config``, ``--rename``, ``--set``, ``--trust-checkpoint``). The config comes from, in order:
``--config`` (a plain config or a saved record), the record vla-export writes into its own
checkpoints, or inference from tensor shapes; ``--set FIELD=VALUE`` then overrides single values.
``inspect --save-config`` writes the result (schema :data:`MODEL_RECORD_SCHEMA`, documented in the
README) so that later commands load exactly the same model with ``--config FILE``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vla_export import schemas
from vla_export.errors import ArchitectureError, ConfigError, StrictLoadError
from vla_export.models.checkpoint import Checkpoint, parse_renames, strip_and_rename
from vla_export.models.config import PRESETS, PolicyConfig, TextConfig, TokenIds, VisionConfig, read_config_json
from vla_export.models.infer import FieldSource, format_value, infer_config
from vla_export.models.layouts import (
    KNOWN_LAYOUTS, WRAPPERS, KeyMapping, PrefixGroup, group_prefixes, map_keys, propose_renames, render_renames, unrecognised,
)

MODEL_RECORD_SCHEMA = schemas.MODEL_CONFIG
#: The metadata key under which vla-export records the config in the checkpoints it writes.
RECORD_KEY = "vla_export"


@dataclass(frozen=True)
class LoadOptions:
    """How to turn a checkpoint into a policy: the same for every command (the CLI's shared loading options)."""

    config: PolicyConfig | None = None
    config_file: str | None = None
    renames: tuple[tuple[str, str], ...] = ()
    sets: tuple[tuple[str, Any], ...] = ()
    trust: bool = False

    @classmethod
    def from_cli(cls, config: str | Path | None = None, renames: Sequence[str] = (), sets: Sequence[str] = (), trust: bool = False) -> LoadOptions:
        """Parse the CLI's strings; a ``--config`` record's renames come first, then ``--rename``."""
        cfg, file_renames = (read_model_record(config) if config else (None, []))
        return cls(cfg, str(config) if config else None, tuple(file_renames) + tuple(parse_renames(renames)), parse_sets(sets), trust)

    @property
    def given(self) -> bool:
        """Whether any option differs from loading the checkpoint as it is."""
        return self != LoadOptions()

    def to_record(self) -> dict[str, Any]:
        """These options as JSON (``vla-export triton`` records them so the served model loads as the command line said)."""
        return {"config": self.config.to_dict() if self.config is not None else None, "config_file": self.config_file,
                "renames": [f"{a}={b}" for a, b in self.renames], "sets": [[name, value] for name, value in self.sets], "trust": self.trust}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> LoadOptions:
        """The options :meth:`to_record` wrote."""
        cfg = record.get("config")
        return cls(PolicyConfig.from_dict(dict(cfg)) if cfg is not None else None, record.get("config_file"),
                   tuple(parse_renames(record.get("renames") or [])), tuple((str(n), v) for n, v in record.get("sets") or []),
                   bool(record.get("trust")))


# --- --set -------------------------------------------------------------------------------------------

def parse_sets(items: Sequence[str]) -> tuple[tuple[str, Any], ...]:
    """``["head_tanh=true", "kosmos_text.num_heads=4"]`` -> ``(("head_tanh", True), ("kosmos_text.num_heads", 4))``."""
    out = []
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--set expects FIELD=VALUE (e.g. head_tanh=true, kosmos_text.num_heads=4), got {item!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out.append((name.strip(), value))
    return tuple(out)


def apply_sets(cfg: PolicyConfig, sets: Sequence[tuple[str, Any]]) -> PolicyConfig:
    """``cfg`` with dotted fields replaced; unknown fields are a :class:`ConfigError`."""
    data = cfg.to_dict()
    for name, value in sets:
        node = data
        parts = name.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"--set {name}: {part!r} is not a config section ({', '.join(k for k, v in data.items() if isinstance(v, dict))})")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"--set {name}: unknown field (choose from {', '.join(sorted(node))})")
        old = node[parts[-1]]
        kind, word = next(((k, w) for k, w in ((bool, "true or false"), (int, "an integer"), (str, "a string"), (dict, "a JSON object"))
                           if isinstance(old, k)), (object, ""))
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(f"--set {name}: expects {word}, got {value!r}")
        node[parts[-1]] = value
    return PolicyConfig.from_dict(data)


# --- records ---------------------------------------------------------------------------------------

def read_model_record(path: str | Path) -> tuple[PolicyConfig, list[tuple[str, str]]]:
    """A ``--config`` file: a saved record (config + renames), ``inspect --json`` output, or a bare config."""
    path = Path(path)
    data = read_config_json(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    renames: list[tuple[str, str]] = []
    if "schema" in data and data["schema"] != MODEL_RECORD_SCHEMA and "config" in data and "kosmos_vision" not in data:
        if str(data["schema"]).startswith(schemas.MODEL_CONFIG_PREFIX):
            raise ConfigError(f"{path}: model-config schema {data['schema']!r} is not supported (expected {MODEL_RECORD_SCHEMA!r})")
    if data.get("schema") == MODEL_RECORD_SCHEMA:
        renames = parse_renames(data.get("renames") or [])
    if "config" in data and "kosmos_vision" not in data:
        data = data["config"]
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: no config object in the file")
    try:
        return PolicyConfig.from_dict(data), renames
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def recorded_config(ckpt: Checkpoint) -> PolicyConfig | None:
    """The config vla-export recorded in a checkpoint it wrote (:func:`record_for_checkpoint`), if any."""
    rec = ckpt.metadata.get(RECORD_KEY)
    if isinstance(rec, str):  # .safetensors metadata holds strings
        try:
            rec = json.loads(rec)
        except ValueError:
            return None
    if not isinstance(rec, Mapping) or rec.get("schema") != MODEL_RECORD_SCHEMA or not isinstance(rec.get("config"), Mapping):
        return None
    return PolicyConfig.from_dict(dict(rec["config"]))


def record_for_checkpoint(cfg: PolicyConfig) -> dict[str, Any]:
    """What vla-export stores beside the weights it writes, so that nothing about them needs assuming."""
    return {"schema": MODEL_RECORD_SCHEMA, "config": cfg.to_dict()}


# --- resolution ------------------------------------------------------------------------------------

class LayoutError(StrictLoadError):
    """The keys fit no known layout (or hold tensors the policy has no place for); carries the diagnosis."""

    def __init__(self, message: str, groups: list[PrefixGroup], proposal: list[tuple[str, str]], proposal_ok: bool):
        super().__init__(message)
        self.groups, self.proposal, self.proposal_ok = groups, proposal, proposal_ok

    def to_dict(self) -> dict[str, Any]:
        return {"unrecognised": [g.to_dict() for g in self.groups], "proposed_renames": [f"{a}={b}" for a, b in self.proposal],
                "proposal_verified": self.proposal_ok}


@dataclass
class ResolvedModel:
    """The config a checkpoint loads with, the key mapping, and the source of every value that is not a tensor shape."""

    config: PolicyConfig
    config_source: str  # "recorded in the checkpoint" | "--config FILE" | "inferred from tensor shapes"
    mapping: KeyMapping
    fields: list[FieldSource] = field(default_factory=list)
    matched_preset: str | None = None

    @property
    def warnings(self) -> list[FieldSource]:
        return [f for f in self.fields if f.warn]

    def summary_line(self) -> str:
        """One compact line for every command that loads a checkpoint."""
        assumed = [f for f in self.fields if f.basis == "assumed"]
        given = [f for f in self.fields if f.basis == "given"]
        parts = [f"model: layout {self.mapping.describe()}; config {self.config_source}"]
        if self.matched_preset:
            parts[-1] += f" (structure of preset '{self.matched_preset}')"
        if given:
            parts.append("set: " + ", ".join(f"{f.field}={format_value(f.value)}" for f in given))
        if assumed:
            parts.append("assumed: " + ", ".join(f"{f.field}={format_value(f.value)}{'!' if f.warn else ''}" for f in assumed))
        if self.warnings:
            parts.append(f"{len(self.warnings)} unconfirmed (!): confirm with --set FIELD=VALUE or --config; `vla-export inspect` explains each")
        return "; ".join(parts)

    def warning_lines(self) -> list[str]:
        return [f"{f.field}={format_value(f.value)} is a guess ({f.source}); if wrong, outputs differ: confirm with {f.flag}" for f in self.warnings]

    def to_dict(self) -> dict[str, Any]:
        """The manifest entry: how the config was obtained and every non-shape value's source."""
        return {
            "config_source": self.config_source,
            "matched_preset": self.matched_preset,
            "key_layout": self.mapping.to_dict(),
            "assumptions": [f.to_dict() for f in self.fields],
        }

    def record(self, checkpoint: Checkpoint | None = None) -> dict[str, Any]:
        """The ``--save-config`` JSON: pass it back as ``--config FILE`` to load exactly this model."""
        rec: dict[str, Any] = {
            "schema": MODEL_RECORD_SCHEMA,
            "config": self.config.to_dict(),
            "renames": [f"{a}={b}" for a, b in self.mapping.renames],
            "key_layout": self.mapping.describe(),
            "config_source": self.config_source,
            "assumptions": [f.to_dict() for f in self.fields],
        }
        if checkpoint is not None:
            rec["checkpoint"] = {"path": str(checkpoint.path), "bytes": checkpoint.file_size}
        return rec


def resolve_model(ckpt: Checkpoint, options: LoadOptions = LoadOptions()) -> tuple[ResolvedModel, dict[str, Any]]:
    """Map the keys, pick the config, apply ``--set``: the resolved model and the renamed state dict.

    Raises :class:`LayoutError` when the keys fit no known layout or hold tensors the policy has no
    place for; its message lists them and, when one exists, ``--rename`` lines proven to load.
    """
    mapping = map_keys(ckpt.state_dict, options.renames)
    extra = unrecognised(mapping.state_dict)
    if not mapping.recognised or extra:
        raise _layout_error(ckpt, options, mapping, extra)
    sd = mapping.state_dict
    matched = None
    if options.config is not None:
        given = f"--config {options.config_file or ''}".rstrip()
        cfg, source = options.config, f"given by {given}"
        fields = [FieldSource(n, _get(cfg, n), "given", given) for n in NON_SHAPE_FIELDS if _get(cfg, n) is not None]
    elif (rec := recorded_config(ckpt)) is not None:
        cfg, source, fields = rec, "recorded in the checkpoint by vla-export", []
        matched = rec.name if PRESETS.get(rec.name) == rec else None
    else:
        inferred = infer_config(sd)
        cfg, source, fields, matched = inferred.config, "inferred from tensor shapes", inferred.assumptions, inferred.matched_preset
        if mapping.hints:  # what the matched code base's classes imply: still a guess, said as one
            cfg = apply_sets(cfg, [(n, v) for n, v, _ in mapping.hints])
            names = {n for n, _, _ in mapping.hints}
            fields = [f for f in fields if f.field not in names] + [
                FieldSource(n, v, "assumed", f"layout {mapping.layout}: {why}", warn=True) for n, v, why in mapping.hints
            ]
    if options.sets:
        cfg = apply_sets(cfg, options.sets)
        names = {n for n, _ in options.sets}
        fields = [f for f in fields if f.field not in names] + [
            FieldSource(n, _get(cfg, n), "given", "--set") for n, _ in options.sets
        ]
    return ResolvedModel(cfg, source, mapping, fields, matched), sd


#: Config values no tensor shape holds (listed as given when they come from --config).
NON_SHAPE_FIELDS = (
    "kosmos_vision.num_heads", "kosmos_text.num_heads", "clip_vision.num_heads", "head_tanh", "pooling", "window", "tokens", "max_text_len",
)


def _get(cfg: PolicyConfig, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if node is None:
            return None
        node = getattr(node, part)
    if isinstance(node, (VisionConfig, TextConfig, TokenIds)):
        return dataclasses.asdict(node)
    return node


def _layout_error(ckpt: Checkpoint, options: LoadOptions, mapping: KeyMapping, extra: list[str]) -> LayoutError:
    sd = mapping.state_dict
    groups = group_prefixes(sd, extra)
    raw = strip_and_rename(ckpt.state_dict)
    proposal = propose_renames(raw)
    ok, why = verify_renames(ckpt, proposal) if proposal else (False, "no component could be matched by name and shape")
    if not any(k.endswith("text_model.model.embed_tokens.weight") for k in raw):
        why = "not a Kosmos-2 policy: no tensor named '*text_model.model.embed_tokens.weight'"
    known = ", ".join(layout.name for layout in KNOWN_LAYOUTS)
    head = (f"{ckpt.path}: keys recognised as layout {mapping.describe()}, but " if mapping.recognised
            else f"{ckpt.path}: key layout not recognised (known layouts: {known}; wrappers {', '.join(WRAPPERS)}); ")
    lines = [head + f"{len(extra)} tensors have no place in the policy:"]
    lines += [f"  {g.line()}" for g in groups]
    if ok:
        replace = " (instead of your --rename options)" if options.renames else ""
        lines.append(f"these options map every tensor and load strictly (checked against the shapes){replace}: {render_renames(proposal)}")
    elif mapping.recognised:
        lines.append("these have no counterpart in this policy (another architecture, or extra training state); "
                     "a --rename can only map tensors onto the policy's modules")
    elif proposal:
        lines.append(f"a partial mapping ({render_renames(proposal)}) does not load: {why}; map the rest with --rename OLD=NEW")
    else:
        lines.append(f"no --rename could be proposed ({why}); map these prefixes with --rename OLD=NEW (README: known layouts)")
    return LayoutError("\n".join(lines), groups, proposal, ok)


def verify_renames(ckpt: Checkpoint, renames: Sequence[tuple[str, str]]) -> tuple[bool, str]:
    """Do ``renames`` make the checkpoint load strictly (names and shapes, on a meta-device model)?"""
    mapping = map_keys(ckpt.state_dict, renames)
    extra = unrecognised(mapping.state_dict)
    if not mapping.recognised or extra:
        return False, f"{len(extra) or 'the anchor'} tensors still unmapped"
    try:
        cfg = recorded_config(ckpt) or infer_config(mapping.state_dict).config
        shapes = meta_shapes(cfg)
    except (ArchitectureError, ConfigError) as exc:
        return False, str(exc)
    sd = mapping.state_dict
    bad = [k for k in shapes if k not in sd or tuple(sd[k].shape) != shapes[k]] + [k for k in sd if k not in shapes]
    return (not bad), (f"{len(bad)} tensors differ, e.g. {bad[0]}" if bad else "")


def meta_shapes(cfg: PolicyConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the policy's state dict, from a meta-device build (no memory)."""
    import torch

    from vla_export.models.policy import MobileVLAPolicy

    with torch.device("meta"):
        policy = MobileVLAPolicy(cfg)
    return {k: tuple(v.shape) for k, v in policy.state_dict().items()}
