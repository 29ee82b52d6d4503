"""Reading policy checkpoints safely, whatever wrapper the training script used.

Accepted: the Mobile VLA training dict (``model_state_dict`` + ``optimizer_state_dict`` + ``args``),
``state_dict`` / ``model`` wrappers, a bare state dict, and ``.safetensors``. Pickles are opened
with ``weights_only=True`` and a short allow-list of what training scripts store; anything else
needs ``trust=True`` (the CLI's ``--trust-checkpoint``).
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vla_export.errors import CheckpointError

log = logging.getLogger("vla_export")

ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTO = 0x80

#: Keys under which wrappers keep the weights, in the order they are tried.
STATE_DICT_KEYS = ("model_state_dict", "state_dict", "model")
OPTIMIZER_KEYS = ("optimizer_state_dict", "optimizer")


@dataclass
class Checkpoint:
    """What a checkpoint file holds, before any model is built."""

    path: Path
    file_format: str  # "torch-zip" | "torch-legacy" | "safetensors"
    layout: str  # "mobile-vla-training" | "state_dict" | "model" | "bare" | "pickled-module"
    state_dict: dict[str, Any]
    file_size: int
    metadata: dict[str, Any] = field(default_factory=dict)
    optimizer_state: Any = None
    trusted: bool = False


def _allowed_globals() -> list[Any]:
    """The plain types training scripts put next to the weights, and nothing more."""
    import argparse
    import pathlib

    import numpy as np

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    allowed: list[Any] = [argparse.Namespace, pathlib.PosixPath, pathlib.PurePosixPath, pathlib.WindowsPath, pathlib.PureWindowsPath]
    # numpy scalars (val_mae is often np.float64) and their dtypes
    allowed += [scalar, np.dtype]
    allowed += [type(np.dtype(name)) for name in ("float64", "float32", "float16", "int64", "int32", "bool")]
    return allowed


def sniff_format(path: Path) -> str:
    """Classify a file by its first bytes, so a foreign file fails before any unpickling."""
    if not path.exists():
        raise CheckpointError(f"{path}: file not found")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    with path.open("rb") as fh:
        head = fh.read(16)
    if not head:
        raise CheckpointError(f"{path}: file is empty")
    if head.startswith(ZIP_MAGIC):
        return "torch-zip"
    if head[0] == PICKLE_PROTO:
        return "torch-legacy"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    raise CheckpointError(
        f"{path}: not a PyTorch checkpoint or .safetensors file (it starts with {head[:8]!r})"
    )


def _read_safetensors(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from safetensors import safe_open

    try:
        tensors: dict[str, Any] = {}
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            for key in fh.keys():
                tensors[key] = fh.get_tensor(key)
        return tensors, meta
    except Exception as exc:  # safetensors raises its own SafetensorError and OSError
        raise CheckpointError(f"{path}: truncated or corrupt .safetensors file ({_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _torch_load(path: Path, file_format: str, trust: bool) -> Any:
    import torch

    mmap = file_format == "torch-zip"  # the legacy format cannot be memory-mapped
    if trust:
        log.warning("%s: unpickling with weights_only=False (--trust-checkpoint): this can run arbitrary code", path)
        try:
            return torch.load(path, map_location="cpu", mmap=mmap, weights_only=False)
        except (AttributeError, ModuleNotFoundError, ImportError) as exc:
            raise CheckpointError(
                f"{path}: the pickle references Python code that is not importable here ({_first_line(exc)}); "
                "the file stores a pickled object, not only weights"
            ) from exc
        except Exception as exc:
            raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({_first_line(exc)})") from exc
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            return torch.load(path, map_location="cpu", mmap=mmap, weights_only=True)
    except pickle.UnpicklingError as exc:
        unsafe = _unsafe_globals(path) if file_format == "torch-zip" else []
        named = _global_in_message(exc)  # the legacy format says "unsupported GLOBAL posix.system ... is blocked"
        if unsafe or named or "unsupported global" in str(exc).lower():
            names = ", ".join(unsafe) if unsafe else named or _first_line(exc)
            raise CheckpointError(
                f"{path}: the pickle needs {names}, which safe loading (weights_only=True) does not allow; "
                "if you trust this file, rerun with --trust-checkpoint"
            ) from exc
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({_first_line(exc)})") from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({_first_line(exc)})") from exc


def _global_in_message(exc: BaseException) -> str | None:
    """The global a weights-only unpickler refused, as its message names it (both file formats)."""
    match = re.search(r"unsupported GLOBAL ([\w.]+)", str(exc), flags=re.IGNORECASE)
    return match.group(1) if match else None


def _unsafe_globals(path: Path) -> list[str]:
    import torch

    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # best effort: only used to word the error better
        return []
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in _allowed_globals()}
    return [name for name in found if name not in allowed]


def _is_state_dict(obj: Any) -> bool:
    import torch

    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _plain(value: Any) -> Any:
    """A JSON-friendly summary of a metadata value."""
    import argparse

    if isinstance(value, argparse.Namespace):
        return {k: _plain(v) for k, v in vars(value).items()}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
        return value.item()
    return str(value)


def read_checkpoint(path: str | Path, *, trust: bool = False) -> Checkpoint:
    """Open a checkpoint and find its state dict, metadata and optimizer state."""
    path = Path(path)
    file_format = sniff_format(path)
    size = path.stat().st_size
    if file_format == "safetensors":
        tensors, meta = _read_safetensors(path)
        return Checkpoint(path, file_format, "bare", tensors, size, metadata=meta)

    obj = _torch_load(path, file_format, trust)
    from torch import nn

    if isinstance(obj, nn.Module):
        return Checkpoint(path, file_format, "pickled-module", dict(obj.state_dict()), size, trusted=trust)
    if _is_state_dict(obj):
        return Checkpoint(path, file_format, "bare", dict(obj), size, trusted=trust)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict or a dict wrapping one")
    for key in STATE_DICT_KEYS:
        inner = obj.get(key)
        if isinstance(inner, nn.Module):
            inner = inner.state_dict()
        if _is_state_dict(inner):
            layout = "mobile-vla-training" if key == "model_state_dict" else key
            optimizer = next((obj[k] for k in OPTIMIZER_KEYS if k in obj), None)
            skip = {key, *OPTIMIZER_KEYS}
            metadata = {str(k): _plain(v) for k, v in obj.items() if k not in skip}
            return Checkpoint(path, file_format, layout, dict(inner), size, metadata, optimizer, trust)
    keys = ", ".join(map(str, list(obj)[:8]))
    raise CheckpointError(f"{path}: no state dict found (top-level keys: {keys or 'none'})")


def tensor_bytes(obj: Any) -> int:
    """Bytes held by all tensors nested in ``obj`` (e.g. an optimizer state)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


# --- key normalisation ---------------------------------------------------------------------------

WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def parse_renames(items: Sequence[str]) -> list[tuple[str, str]]:
    """``["backbone.=kosmos_model."]`` -> ``[("backbone.", "kosmos_model.")]``."""
    pairs = []
    for item in items:
        old, sep, new = item.partition("=")
        if not sep or not old:
            raise CheckpointError(f"--rename expects OLD=NEW (a key prefix and its replacement), got {item!r}")
        pairs.append((old, new))
    return pairs


def _strip_wrappers(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key.replace("._orig_mod.", ".")


def clip_key_layout() -> str:
    """'nested' if the installed transformers' CLIPVisionModel keeps a ``vision_model.`` level (4.x), else 'flat' (5.x)."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    with torch.device("meta"):
        tiny = CLIPVisionModel(CLIPVisionConfig(hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1, image_size=8, patch_size=8))
    return "nested" if any(k.startswith("vision_model.") for k in tiny.state_dict()) else "flat"


def rename_key(key: str, renames: Sequence[tuple[str, str]]) -> str:
    """``key`` with the first matching (OLD prefix, NEW prefix) pair applied."""
    for old, new in renames:
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def strip_and_rename(state_dict: Mapping[str, Any], renames: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """Strip DataParallel / torch.compile prefixes, then apply ``renames``."""
    return {rename_key(_strip_wrappers(key), renames): value for key, value in state_dict.items()}


def clip_names(state_dict: Mapping[str, Any]) -> str | None:
    """'nested' (transformers 4.x ``clip.vision_model.*``), 'flat' (5.x ``clip.*``), or None without CLIP."""
    if not any(k.startswith("clip.") for k in state_dict):
        return None
    return "nested" if any(k.startswith("clip.vision_model.") for k in state_dict) else "flat"


def normalize_keys(
    state_dict: Mapping[str, Any], renames: Sequence[tuple[str, str]] = (), clip_layout: str | None = None
) -> dict[str, Any]:
    """Strip DataParallel / torch.compile prefixes, apply user renames, and match the CLIP layout of the installed transformers."""
    return match_clip_layout(strip_and_rename(state_dict, renames), clip_layout)


def match_clip_layout(state_dict: Mapping[str, Any], clip_layout: str | None = None) -> dict[str, Any]:
    """Rename CLIP keys between transformers 4.x (nested) and 5.x (flat) names, to those of the installed version."""
    out = dict(state_dict)
    if any(k.startswith("clip.") for k in out):
        layout = clip_layout or clip_key_layout()
        nested = any(k.startswith("clip.vision_model.") for k in out)
        if layout == "flat" and nested:
            out = {("clip." + k[len("clip.vision_model.") :] if k.startswith("clip.vision_model.") else k): v for k, v in out.items()}
        elif layout == "nested" and not nested:
            out = {("clip.vision_model." + k[len("clip.") :] if k.startswith("clip.") else k): v for k, v in out.items()}
    return out
