"""Policy architectures described as data: a frozen config dataclass and named presets.

The policy is RoboVLMs-style: Kosmos-2 (vision tower, image-to-text projection, text model),
optionally a CLIP vision encoder, an LSTM over a window of frames and an MLP action head.
Presets are plain values; nothing here touches torch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from vla_export.errors import ArtifactError, ConfigError

log = logging.getLogger("vla_export")

POOLINGS = ("last", "mean")


@dataclass(frozen=True)
class VisionConfig:
    """A CLIP-style ViT (used for both the Kosmos-2 vision tower and the CLIP encoder)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    image_size: int = 224
    patch_size: int = 14

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class TextConfig:
    """The Kosmos-2 text decoder (no lm_head: the policy never generates text)."""

    embed_dim: int
    num_layers: int
    num_heads: int
    ffn_dim: int
    vocab_size: int
    max_position_embeddings: int = 2048


@dataclass(frozen=True)
class TokenIds:
    """Special token ids the model uses to build the Kosmos-2 image prefix itself.

    The sequence fed to the text model is ``<s> <image> [latent_query_num image slots] </image>``
    followed by the caller's ``input_ids`` (the tokenised prompt without ``<s>``).
    """

    bos: int = 0
    pad: int = 1
    eos: int = 2
    image_start: int = 64003
    image_end: int = 64004


@dataclass(frozen=True)
class PolicyConfig:
    """Everything needed to build the policy and its example inputs."""

    name: str
    kosmos_vision: VisionConfig
    kosmos_text: TextConfig
    latent_query_num: int = 64
    clip_vision: VisionConfig | None = None
    feature_proj: int | None = None
    pooling: str = "last"
    lstm_hidden: int = 1024
    lstm_layers: int = 4
    head_hidden: tuple[int, ...] = (1024, 512, 256)
    head_tanh: bool = True
    action_dim: int = 2
    window: int = 8
    max_text_len: int = 256
    tokens: TokenIds = field(default_factory=TokenIds)

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.action_dim < 1 or self.window < 1 or self.lstm_layers < 1:
            raise ConfigError("action_dim, window and lstm_layers must be positive")
        if self.clip_vision is not None and self.clip_vision.image_size != self.kosmos_vision.image_size:
            raise ConfigError("the Kosmos-2 and CLIP towers must take the same image size (one pixel_values input)")

    @property
    def image_size(self) -> int:
        return self.kosmos_vision.image_size

    @property
    def frame_feature_dim(self) -> int:
        """Width of the per-frame feature fed to the LSTM (after the optional projection)."""
        if self.feature_proj:
            return self.feature_proj
        return self.kosmos_text.embed_dim + (self.clip_vision.hidden_size if self.clip_vision else 0)

    @property
    def prefix_len(self) -> int:
        """Tokens the model prepends: <s>, <image>, the image slots, </image>."""
        return self.latent_query_num + 3

    def replace(self, **changes: Any) -> PolicyConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PolicyConfig:
        """Build a config from plain data (JSON, ``--set``), every value checked against the field's type first."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"invalid policy config: expected an object, got {type(data).__name__}")
        problem = _type_problem(cls, data, "")
        if problem:
            raise ConfigError(f"invalid policy config: {problem}")
        if any(n < 1 for n in data.get("head_hidden") or ()):
            raise ConfigError(f"invalid policy config: head_hidden widths must be positive, got {list(data['head_hidden'])}")
        try:
            data = dict(data)
            data["kosmos_vision"] = VisionConfig(**data["kosmos_vision"])
            data["kosmos_text"] = TextConfig(**data["kosmos_text"])
            if data.get("clip_vision") is not None:
                data["clip_vision"] = VisionConfig(**data["clip_vision"])
            if "tokens" in data:
                data["tokens"] = TokenIds(**data["tokens"])
            if "head_hidden" in data:
                data["head_hidden"] = tuple(data["head_hidden"])
            return cls(**data)
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"invalid policy config: {exc}") from exc


_WORDS = {int: "an integer", bool: "true or false", str: "a string", float: "a number", type(None): "null"}


def _type_problem(cls: type, data: Mapping[str, Any], where: str) -> str | None:
    """The first value in ``data`` that does not fit its field of dataclass ``cls`` (a "16" for an int, a float in
    a list of ints), as ``field[i]: must be ..., got ...``; ``None`` when every value fits. No value is converted."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in data:
            problem = _value_problem(data[f.name], hints[f.name], where + f.name)
            if problem:
                return problem
    return None


def _value_problem(value: Any, hint: Any, where: str) -> str | None:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _value_problem(value, next(a for a in args if a is not type(None)), where)
    if origin is tuple:  # tuple[int, ...]
        if not isinstance(value, (list, tuple)):
            return f"{where}: must be a list of {_WORDS.get(args[0], args[0])[3:]}s, got {value!r}"
        return next((p for i, v in enumerate(value) if (p := _value_problem(v, args[0], f"{where}[{i}]"))), None)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return None
        if not isinstance(value, Mapping):
            return f"{where}: must be an object, got {value!r}"
        return _type_problem(hint, value, where + ".")
    fits = isinstance(value, hint) and not (hint in (int, float) and isinstance(value, bool))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        fits = True
    return None if fits else f"{where}: must be {_WORDS.get(hint, hint)}, got {value!r}"


def config_differences(recorded: dict[str, Any], actual: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(field, recorded, actual) for every config value that differs (dotted names; the ``name`` label ignored)."""
    out: list[tuple[str, Any, Any]] = []
    for key in sorted(set(recorded) | set(actual)):
        if not prefix and key == "name":
            continue
        a, b = recorded.get(key), actual.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}{key}.")
        elif (list(a) if isinstance(a, (list, tuple)) else a) != (list(b) if isinstance(b, (list, tuple)) else b):
            out.append((prefix + key, a, b))
    return out


def check_same_config(artifact: Any, recorded: PolicyConfig | Mapping[str, Any] | None, config: PolicyConfig) -> str:
    """Refuse an artifact whose recorded policy config differs from the reference's, before any number is compared.

    A different head count, Tanh, width, window, action_dim, pooling, image size or token id makes the
    pair incomparable: parity could pass or fail for the wrong reason. Raises :class:`ArtifactError`
    listing every differing field. Returns what was checked (for the report); without a recorded config
    it warns that the check was not possible.
    """
    if not recorded:
        msg = f"{artifact}: no manifest with a policy config beside it, so it cannot be checked that it was exported with the reference's config"
        log.warning("%s", msg)
        return "not possible: " + msg.split(": ", 1)[1]
    recorded = recorded.to_dict() if isinstance(recorded, PolicyConfig) else recorded
    diffs = config_differences(dict(recorded), config.to_dict())
    if diffs:
        shown = "; ".join(f"{k}: artifact {a!r}, checkpoint {b!r}" for k, a, b in diffs)
        raise ArtifactError(
            f"{artifact}: not exported from this checkpoint's config: exported from a policy with {len(diffs)} different "
            f"field{'s' if len(diffs) > 1 else ''} ({shown}); "
            "load the checkpoint with the artifact's config (--config, --set) or re-export"
        )
    return "same config as the reference"


def read_config_json(path: Path) -> Any:
    """The parsed JSON of a ``--config`` file; one line naming the file when it is missing or not JSON."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable JSON config ({exc})") from None


def load_config(path: str | Path) -> PolicyConfig:
    """Read a config JSON file (as written by ``inspect --json`` under ``config``, or by :func:`PolicyConfig.to_dict`)."""
    path = Path(path)
    data = read_config_json(path)
    if isinstance(data, dict) and "config" in data and "kosmos_vision" not in data:
        data = data["config"]
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return PolicyConfig.from_dict(data)


_TINY_TOKENS = TokenIds(bos=0, pad=1, eos=2, image_start=3, image_end=4)

_KOSMOS2_VISION = VisionConfig(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096, patch_size=14)
_KOSMOS2_TEXT = TextConfig(embed_dim=2048, num_layers=24, num_heads=32, ffn_dim=8192, vocab_size=65037)
_CLIP_B32 = VisionConfig(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072, patch_size=32)

_TINY = PolicyConfig(
    name="tiny",
    kosmos_vision=VisionConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, patch_size=32),
    kosmos_text=TextConfig(embed_dim=48, num_layers=2, num_heads=2, ffn_dim=96, vocab_size=512),
    latent_query_num=8,
    clip_vision=VisionConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, patch_size=32),
    lstm_hidden=32,
    lstm_layers=2,
    head_hidden=(32, 16),
    action_dim=3,
    window=4,
    max_text_len=32,
    tokens=_TINY_TOKENS,
)

PRESETS: MappingProxyType[str, PolicyConfig] = MappingProxyType(
    {
        # Under 1M parameters, same structure as mobile-vla (with CLIP): tests and the demo.
        "tiny": _TINY,
        # The Kosmos-only layout (no CLIP), tiny.
        "tiny-kosmos": _TINY.replace(name="tiny-kosmos", clip_vision=None, action_dim=2),
        # Same structure scaled to ~109M parameters: CPU benchmarks and quantization accuracy.
        "small": PolicyConfig(
            name="small",
            kosmos_vision=VisionConfig(hidden_size=512, num_layers=8, num_heads=8, intermediate_size=2048, patch_size=14),
            kosmos_text=TextConfig(embed_dim=768, num_layers=8, num_heads=12, ffn_dim=3072, vocab_size=8192),
            latent_query_num=32,
            clip_vision=VisionConfig(hidden_size=384, num_layers=6, num_heads=6, intermediate_size=1536, patch_size=32),
            lstm_hidden=512,
            lstm_layers=2,
            head_hidden=(512, 256, 128),
            action_dim=3,
            window=8,
            max_text_len=64,
            tokens=_TINY_TOKENS,
        ),
        # Kosmos-2 patch14-224 + CLIP ViT-B/32 + LSTM 4x1024 + MLP 1024-512-256 (Tanh), 2 actions.
        "mobile-vla": PolicyConfig(
            name="mobile-vla",
            kosmos_vision=_KOSMOS2_VISION,
            kosmos_text=_KOSMOS2_TEXT,
            clip_vision=_CLIP_B32,
        ),
        # The Kosmos-only variant: exactly the published 1,703,973,122 parameters.
        "mobile-vla-kosmos": PolicyConfig(
            name="mobile-vla-kosmos",
            kosmos_vision=_KOSMOS2_VISION,
            kosmos_text=_KOSMOS2_TEXT,
        ),
    }
)


def get_preset(name: str) -> PolicyConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
