"""Calibration sets: N seeded windows of recorded frames, preprocessed exactly as at run time.

``make_calibration_set`` samples :class:`~vla_export.data.episodes.EpisodeSource` and writes the
feeds (one ``.npz``: each input stacked along a leading sample axis, plus a JSON record of where
every sample came from). :class:`CalibrationSet` reads it back and checks it against the model it
is about to calibrate, so an empty or mismatched set fails before any quantizer or builder runs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vla_export import schemas
from vla_export.data.episodes import EpisodeSource
from vla_export.data.iospec import INPUT_NAMES
from vla_export.data.tokenizer import Tokenizer
from vla_export.errors import DataError
from vla_export.fileio import atomic_write
from vla_export.models.config import PolicyConfig
from vla_export.progress import reported

META_KEY = "__meta__"
FORMAT = schemas.CALIBRATION


@dataclass(frozen=True)
class CalibrationSet:
    """Feeds (``{input name: [N, ...]}``) and the record of how they were made."""

    path: Path
    arrays: Mapping[str, np.ndarray]
    meta: Mapping[str, Any]

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def feed(self, i: int) -> dict[str, np.ndarray]:
        return {k: v[i] for k, v in self.arrays.items()}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return (self.feed(i) for i in range(len(self)))

    def check_inputs(self, inputs: Sequence[Mapping[str, Any]], model: str | Path) -> None:
        """Raise DataError unless every feed fits ``inputs`` of ``model`` (``io_signature(model)["inputs"]``:
        names, dtypes, and every dimension that is a fixed integer)."""
        expected = {i["name"] for i in inputs}
        if set(self.arrays) != expected:
            raise DataError(
                f"{self.path}: calibration inputs {sorted(self.arrays)} do not match the inputs of {model}: {sorted(expected)}"
            )
        for spec in inputs:
            arr = self.arrays[spec["name"]]
            if arr.dtype != np.dtype(spec["dtype"]):
                raise DataError(f"{self.path}: '{spec['name']}' is {arr.dtype}, {model} takes {spec['dtype']}")
            shape, dims = arr.shape[1:], spec["shape"]
            if len(shape) != len(dims) or any(isinstance(d, int) and d != s for d, s in zip(dims, shape)):
                raise DataError(
                    f"{self.path}: '{spec['name']}' has shape {list(shape)} per sample, {model} takes {dims} "
                    "(image size, window or text length differ; remake the set with matching --window/--text-len)"
                )

    def frames_used(self) -> dict[str, list[int]]:
        """Episode file name -> the frame indices the set's samples hold (from its record of windows),
        so evaluation can draw windows disjoint from them (``EpisodeSource(exclude_frames=...)``)."""
        used: dict[str, set[int]] = {}
        for w in self.meta.get("windows", []):
            used.setdefault(Path(w["episode"]).name, set()).update(int(f) for f in w["frames"])
        return {name: sorted(frames) for name, frames in sorted(used.items())}

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path), "samples": len(self),
            "shapes": {k: list(v.shape[1:]) for k, v in self.arrays.items()}, **{k: v for k, v in self.meta.items() if k != "samples"},
        }


@reported("sampling the calibration set")
def make_calibration_set(
    episodes: Sequence[str | Path] | str | Path,
    config: PolicyConfig,
    output: str | Path,
    *,
    count: int = 32,
    seed: int = 0,
    tokenizer: Tokenizer | None = None,
    window: int | None = None,
    text_len: int | None = None,
) -> CalibrationSet:
    """Sample ``count`` windows across ``episodes`` and write them to ``output`` (.npz), atomically."""
    if count < 1:
        raise DataError(f"a calibration set needs at least one sample, got count={count}")
    source = EpisodeSource(episodes, config, tokenizer=tokenizer, seed=seed, window=window, text_len=text_len)
    feeds = [source.sample(i) for i in range(count)]
    arrays = {k: np.stack([f[k] for f in feeds]) for k in INPUT_NAMES}
    meta = {
        "format": FORMAT,
        "config": config.name,
        "image_size": config.image_size,
        "window": source.T,
        "text_len": source.L,
        "seed": seed,
        "samples": count,
        "tokenizer": source.tokenizer.name,
        "episodes": [e.name for e in source.episodes],
        "windows": [r.to_dict() for i in range(count) for r in source.locate(i)],
    }
    output = Path(output)
    if output.suffix != ".npz":
        raise DataError(f"{output}: calibration sets are written as .npz")

    def write(tmp: Path) -> None:
        with tmp.open("wb") as fh:  # a file object: np.savez would append .npz to a path
            np.savez(fh, **arrays, **{META_KEY: np.array(json.dumps(meta))})

    atomic_write(output, write)
    return CalibrationSet(output, arrays, meta)


def load_calibration_set(path: str | Path) -> CalibrationSet:
    """Read a set written by :func:`make_calibration_set`; DataError if missing, foreign, truncated or empty."""
    from vla_export.data.saved import read_npz

    path = Path(path)
    arrays, meta = read_npz(path, "calibration", DataError)
    if not arrays or min(len(a) for a in arrays.values()) == 0:
        raise DataError(f"{path}: the calibration set is empty")
    if len({len(a) for a in arrays.values()}) != 1:
        raise DataError(f"{path}: inputs hold different numbers of samples: { {k: len(a) for k, a in arrays.items()} }")
    return CalibrationSet(path, arrays, meta)
