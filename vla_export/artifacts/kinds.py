"""What kind of artifact a path is: the one place that decides it from the file name.

Low level on purpose (it imports nothing heavy), so every layer can ask it: the runner selector,
the benchmark planner, ``inspect``. Kinds: ``checkpoint``, ``onnx``, ``engine``, ``split`` (the
``NAME.split.json`` record of a split export), ``calibration`` (``.npz``) and ``episode`` (HDF5).
"""

from __future__ import annotations

from pathlib import Path

from vla_export.errors import ArtifactError

ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")
CALIBRATION_SUFFIXES = (".npz",)
EPISODE_SUFFIXES = (".h5", ".hdf5")
SPLIT_SUFFIX = ".split.json"

#: kind -> file-name endings, in the order they are tried (``.split.json`` before any plain suffix).
KIND_SUFFIXES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("split", (SPLIT_SUFFIX,)),
    ("onnx", ONNX_SUFFIXES),
    ("engine", ENGINE_SUFFIXES),
    ("checkpoint", CHECKPOINT_SUFFIXES),
    ("calibration", CALIBRATION_SUFFIXES),
    ("episode", EPISODE_SUFFIXES),
)
KINDS: tuple[str, ...] = tuple(kind for kind, _ in KIND_SUFFIXES)


def detect_kind(path: str | Path, *, allowed: tuple[str, ...] = KINDS) -> str:
    """The kind of ``path`` among ``allowed``, from its name; :class:`ArtifactError` for anything else.

    The message lists the endings that would have been accepted, so it fits on one line.
    """
    name = Path(path).name.lower()
    for kind, suffixes in KIND_SUFFIXES:
        if kind in allowed and name.endswith(suffixes):
            return kind
    known = ", ".join(s for kind, suffixes in KIND_SUFFIXES if kind in allowed for s in suffixes)
    if Path(path).is_dir():
        raise ArtifactError(f"{path}: is a folder, not an artifact file; give one file ending in {known}")
    suffix = Path(path).suffix.lower()
    raise ArtifactError(f"{path}: unknown artifact type {suffix or '(no suffix)'!r}; expected one of {known}")


def default_output(onnx_path: str | Path, precision: str) -> Path:
    """``model.onnx`` -> ``model.int8.onnx`` / ``model.int8w.onnx`` (weight-only) / ``model.fp16.onnx``."""
    p = Path(onnx_path)
    return p.with_name(f"{p.stem}.{precision}.onnx")


PRESET_PREFIX = "preset:"
#: The file-name endings of a split export's two ONNX parts (``NAME.backbone.onnx``, ``NAME.head.onnx``).
SPLIT_PART_SUFFIXES = {"backbone": ".backbone.onnx", "head": ".head.onnx"}


def is_kind(path: str | Path, *kinds: str) -> bool:
    """Whether ``path``'s name ends as one of ``kinds`` (no error for anything else)."""
    name = Path(path).name.lower()
    return any(kind in kinds and name.endswith(suffixes) for kind, suffixes in KIND_SUFFIXES)


def strip_kind_suffix(path: str | Path, kinds: tuple[str, ...] = KINDS) -> str:
    """``path``'s file name without the ending of its kind among ``kinds`` (``tiny.split.json`` -> ``tiny``); unchanged when none fits."""
    name = Path(path).name
    for kind, suffixes in KIND_SUFFIXES:
        for suffix in suffixes if kind in kinds else ():
            if name.lower().endswith(suffix):
                return name[: -len(suffix)]
    return name


def split_part(path: str | Path) -> tuple[str, str] | None:
    """``(NAME, part)`` for a split export's part file ``NAME.backbone.onnx``/``NAME.head.onnx``; None for any other name."""
    name = Path(path).name
    for part, suffix in SPLIT_PART_SUFFIXES.items():
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], part
    return None
