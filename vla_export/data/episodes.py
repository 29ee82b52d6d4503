"""Recorded episodes (one HDF5 file each, the Mobile VLA format) and a seeded source over them.

File layout: dataset ``images`` uint8 [T, H, W, 3] (gzip; 720x1280 on the robot), ``actions`` float32
[T, 3] (linear_x, linear_y, angular_z), ``action_event_types`` utf-8 strings [T]; attributes
``episode_name``, ``num_frames``, ``total_duration``, ``action_chunk_size``. The instruction is not
stored: it follows from the scenario in the episode name.

:class:`EpisodeSource` has the interface of :class:`~vla_export.data.source.SyntheticSource`
(``sample(index) -> {input name: array}``), with real frames through the shared preprocessing and
the tokenised run-time prompt, so parity, calibration and benchmarks can use recorded data.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from vla_export.data.iospec import ATTENTION_MASK, INPUT_IDS, PIXEL_VALUES
from vla_export.data.preprocess import DEFAULT_INSTRUCTION, preprocess_frames, prompt_for
from vla_export.data.tokenizer import Tokenizer, tokenizer_for
from vla_export.errors import DataError
from vla_export.fileio import atomic_write
from vla_export.lazy import lazy_import
from vla_export.models.config import PolicyConfig

ACTION_KEY = 1.15  # a key press on the robot's teleoperation keyboard
ACTION_CHUNK_SIZE = 8
FRAME_PERIOD_S = 0.4
DEFAULT_FRAMES = 18
DEFAULT_HW = (720, 1280)
#: Recorded actions are key presses (+-ACTION_KEY); the policy's Tanh output is in [-1, 1], and the
#: Mobile VLA server multiplies it by 1.15 to drive the robot. So one key press is 1.0 in policy units.
ACTION_SCALE = ACTION_KEY
REQUIRED_DATASETS = ("images", "actions", "action_event_types")
REQUIRED_ATTRS = ("episode_name", "num_frames", "total_duration", "action_chunk_size")
_SCENARIO = re.compile(r"(?P<boxes>\d+)box_(?P<layout>vert|hori)_(?P<side>left|right)")
SCENARIOS = tuple(f"{n}box_{layout}_{side}" for n in (1, 2) for layout in ("vert", "hori") for side in ("left", "right"))


def instruction_for(episode_name: str) -> str:
    """The instruction an episode was recorded under, from the scenario in its name.

    ``…_1box_vert_left…`` -> "go around the leftmost edge to reach the cup" (the side decides the
    edge); names without a known scenario get the fallback "go to the cup".
    """
    m = _SCENARIO.search(episode_name)
    if m is None:
        return DEFAULT_INSTRUCTION
    return f"go around the {m['side']}most edge to reach the cup"


@dataclass(frozen=True)
class Episode:
    """One episode file, validated on open; frames are read on demand (a 720p episode is ~50 MB raw)."""

    path: Path
    name: str
    num_frames: int
    frame_hw: tuple[int, int]
    total_duration: float
    action_chunk_size: int

    @property
    def instruction(self) -> str:
        return instruction_for(self.name)

    def _read(self, what: str, fn):
        h5py = lazy_import("h5py", purpose="reading episodes")
        try:
            with h5py.File(self.path, "r") as f:
                return fn(f)
        except (OSError, KeyError, ValueError) as exc:
            raise DataError(f"{self.path}: cannot read {what} ({exc}); the file may be truncated") from None

    def frames(self, indices: Sequence[int] | None = None) -> np.ndarray:
        """uint8 [N, H, W, 3] for ``indices`` (all frames when None)."""
        if indices is None:
            return self._read("images", lambda f: f["images"][()])
        idx = [int(i) for i in indices]
        if any(i < 0 or i >= self.num_frames for i in idx):
            raise DataError(f"{self.path}: frame index out of range 0..{self.num_frames - 1}: {idx}")
        return self._read("images", lambda f: np.stack([f["images"][i] for i in idx]))

    def actions(self) -> np.ndarray:
        return self._read("actions", lambda f: np.asarray(f["actions"][()], dtype=np.float32))

    def event_types(self) -> list[str]:
        return self._read("action_event_types", lambda f: [str(s) for s in f["action_event_types"].asstr()[()]])

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path), "name": self.name, "num_frames": self.num_frames, "frame_hw": list(self.frame_hw),
            "total_duration": self.total_duration, "action_chunk_size": self.action_chunk_size, "instruction": self.instruction,
        }


def open_episode(path: str | Path) -> Episode:
    """Validate an episode file's layout and return its metadata; a clear DataError for anything else."""
    path = Path(path)
    h5py = lazy_import("h5py", purpose="reading episodes")
    if not path.is_file():
        raise DataError(f"{path}: episode file not found")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 episode (truncated or another format: {exc})") from None
    with f:
        missing = [k for k in REQUIRED_DATASETS if k not in f] + [a for a in REQUIRED_ATTRS if a not in f.attrs]
        if missing:
            raise DataError(f"{path}: not a Mobile VLA episode: missing {', '.join(missing)}")
        images, actions, events = f["images"], f["actions"], f["action_event_types"]
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise DataError(f"{path}: 'images' must be uint8 [T, H, W, 3], got {images.dtype} {images.shape}")
        t = images.shape[0]
        if actions.ndim != 2 or actions.shape[0] != t or len(events) != t:
            raise DataError(
                f"{path}: frame counts disagree: images {t}, actions {actions.shape}, action_event_types {len(events)}"
            )
        if int(f.attrs["num_frames"]) != t:
            raise DataError(f"{path}: attribute num_frames={int(f.attrs['num_frames'])} but 'images' holds {t} frames")
        if t == 0:
            raise DataError(f"{path}: the episode has no frames")
        name = f.attrs["episode_name"]
        return Episode(
            path=path,
            name=name.decode() if isinstance(name, bytes) else str(name),
            num_frames=t,
            frame_hw=(int(images.shape[1]), int(images.shape[2])),
            total_duration=float(f.attrs["total_duration"]),
            action_chunk_size=int(f.attrs["action_chunk_size"]),
        )


def find_episodes(paths: Sequence[str | Path] | str | Path) -> list[Path]:
    """Expand files and directories (``*.h5``/``*.hdf5`` inside, sorted) into episode paths."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(q for q in p.iterdir() if q.suffix in (".h5", ".hdf5"))
        elif p.exists():
            found.append(p)
        else:
            raise DataError(f"{p}: no such episode file or directory")
    if not found:
        raise DataError(f"no episode files (*.h5, *.hdf5) in {', '.join(map(str, paths))}")
    return found


def policy_units(actions: np.ndarray, action_dim: int) -> np.ndarray:
    """Recorded actions [T, >= action_dim] in the policy's output units: the first ``action_dim`` columns
    divided by :data:`ACTION_SCALE` and clipped to Tanh's [-1, 1] (what fitting trains on and what
    ``val_mae`` is measured in)."""
    actions = np.asarray(actions, dtype=np.float32)
    if actions.ndim != 2 or actions.shape[1] < action_dim:
        raise DataError(f"recorded actions {actions.shape} have fewer than the policy's {action_dim} dimensions")
    return np.clip(actions[:, :action_dim] / np.float32(ACTION_SCALE), -1.0, 1.0).astype(np.float32)


# --- writing -----------------------------------------------------------------------------------------

def write_episode(
    path: str | Path,
    images: np.ndarray,
    actions: np.ndarray,
    event_types: Sequence[str],
    *,
    name: str | None = None,
    total_duration: float | None = None,
    action_chunk_size: int = ACTION_CHUNK_SIZE,
) -> Path:
    """Write one episode file in the Mobile VLA layout, atomically."""
    h5py = lazy_import("h5py", purpose="writing episodes")
    path = Path(path)
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"images must be uint8 [T, H, W, 3], got {images.dtype} {images.shape}")
    t = images.shape[0]
    if len(actions) != t or len(event_types) != t:
        raise DataError(f"images, actions and event types must have the same length, got {t}, {len(actions)}, {len(event_types)}")

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("images", data=images, compression="gzip", chunks=(1, *images.shape[1:]))
            f.create_dataset("actions", data=np.asarray(actions, dtype=np.float32))
            f.create_dataset("action_event_types", data=list(event_types), dtype=h5py.string_dtype("utf-8"))
            f.attrs["episode_name"] = name or path.stem
            f.attrs["num_frames"] = t
            f.attrs["total_duration"] = float(total_duration if total_duration is not None else t * FRAME_PERIOD_S)
            f.attrs["action_chunk_size"] = int(action_chunk_size)

    return atomic_write(path, write)


def _scene(rng: np.random.Generator, frames: int, hw: tuple[int, int], side: str) -> np.ndarray:
    """A floor-and-wall gradient with a box obstacle and a cup that drift as the robot moves."""
    h, w = hw
    yy = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    xx = np.linspace(0, 1, w, dtype=np.float32)[None, :]
    base = rng.uniform(60, 200, size=3).astype(np.float32)
    tint = rng.uniform(-40, 40, size=3).astype(np.float32)
    background = base + tint * (yy[..., None] * 0.7 + xx[..., None] * 0.3)
    box_color = rng.uniform(120, 255, size=3).astype(np.float32)
    cup_color = np.array([220, 40, 40], dtype=np.float32)
    drift = -1.0 if side == "left" else 1.0
    out = np.empty((frames, h, w, 3), dtype=np.uint8)
    for k in range(frames):
        p = k / max(frames - 1, 1)
        img = background.copy()
        # the box slides sideways and grows as the robot approaches, then leaves the view
        bx, bw = 0.5 + drift * 0.6 * p, 0.15 + 0.2 * p
        by, bh = 0.45, 0.25 + 0.15 * p
        img[(abs(yy - by - bh / 2) < bh / 2) & (abs(xx - bx) < bw / 2)] = box_color
        cx, cs = 0.5 - drift * 0.1 * (1 - p), 0.03 + 0.07 * p
        img[(abs(yy - 0.55) < cs * 1.5) & (abs(xx - cx) < cs)] = cup_color
        out[k] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def _key_actions(frames: int, side: str) -> tuple[np.ndarray, list[str]]:
    """Key-press actions: start, forward, sidestep around the box (turning to keep the cup in view), forward, stop.

    Strafing to the ``side`` moves the cup across the view the other way, so the robot turns back
    toward it while it sidesteps (angular_z against linear_y). All three action dimensions vary
    across an episode, so a policy that follows the scene has outputs that vary in every dimension.
    """
    lateral = ACTION_KEY if side == "left" else -ACTION_KEY
    actions = np.zeros((frames, 3), dtype=np.float32)
    events = ["episode_start"]
    for k in range(1, frames):
        p = k / frames
        if p < 0.2 or p >= 0.65:
            actions[k] = (ACTION_KEY, 0.0, 0.0)
        else:
            actions[k] = (0.0, lateral, -lateral)
        events.append("start_action")
    if frames > 1:
        actions[-1] = 0.0
        events[-1] = "stop_action"
    return actions, events


def write_synthetic_episodes(
    out_dir: str | Path,
    count: int = 4,
    *,
    seed: int = 0,
    frames: int = DEFAULT_FRAMES,
    frame_hw: tuple[int, int] = DEFAULT_HW,
) -> list[Path]:
    """Write ``count`` episodes in the recorded format, cycling through the scenarios; seeded."""
    if count < 1 or frames < 1 or min(frame_hw) < 8:
        raise DataError("need at least one episode of at least one frame, frames at least 8x8 pixels")
    out_dir = Path(out_dir)
    paths = []
    for i in range(count):
        scenario = SCENARIOS[i % len(SCENARIOS)]
        side = scenario.rsplit("_", 1)[1]
        rng = np.random.default_rng([seed, i])
        name = f"episode_synthetic_{seed:04d}_{i:03d}_{scenario}"
        actions, events = _key_actions(frames, side)
        paths.append(write_episode(out_dir / f"{name}.h5", _scene(rng, frames, frame_hw, side), actions, events, name=name))
    return paths


# --- the source ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WindowRef:
    """Where a sample came from: episode, frame indices, instruction, the recorded action of the last frame."""

    episode: str
    frames: tuple[int, ...]
    instruction: str
    action: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"episode": self.episode, "frames": list(self.frames), "instruction": self.instruction, "action": list(self.action)}


@dataclass(frozen=True)
class EpisodeSource:
    """Seeded windows of recorded frames with their tokenised prompts.

    ``sample(i)`` draws, from ``np.random.default_rng([seed, i])``, an episode and a window of
    ``window`` consecutive frames (the policy's window by default), preprocessed exactly as at run
    time. ``text_len`` pads every prompt to one length (default: the longest prompt in the set).

    ``exclude_frames`` (episode file name -> frame indices, e.g. a calibration set's
    :meth:`~vla_export.data.calibration.CalibrationSet.frames_used`) restricts the draw to windows
    sharing no frame with it, so a quantized model is evaluated on frames it was not calibrated on;
    a DataError when no such window exists.
    """

    paths: Sequence[str | Path] | str | Path
    config: PolicyConfig
    tokenizer: Tokenizer | None = None
    seed: int = 0
    window: int | None = None
    batch: int = 1
    text_len: int | None = None
    exclude_frames: Mapping[str, Sequence[int]] | None = None
    _episodes: list[Episode] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.window is not None and self.window < 1:
            raise DataError(f"the window must be at least 1 frame, got {self.window}")
        episodes = [open_episode(p) for p in find_episodes(self.paths)]
        short = [e for e in episodes if e.num_frames < self.T]
        if short:
            raise DataError(f"{short[0].path}: {short[0].num_frames} frames, fewer than the window of {self.T}")
        object.__setattr__(self, "_episodes", episodes)
        if self.tokenizer is None:
            object.__setattr__(self, "tokenizer", tokenizer_for(self.config))

    @property
    def T(self) -> int:
        return self.config.window if self.window is None else self.window

    @property
    def episodes(self) -> list[Episode]:
        return list(self._episodes)

    @cached_property
    def _prompts(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        prompts = {e.instruction: prompt_for(e.instruction) for e in self._episodes}
        lengths = {k: len(self.tokenizer.encode(p)[0]) for k, p in prompts.items()}
        L = self.text_len or max(lengths.values())
        if L > self.config.max_text_len:
            raise DataError(f"prompts need {L} tokens, more than the policy's max_text_len {self.config.max_text_len}")
        return {k: self.tokenizer.encode(p, L) for k, p in prompts.items()}

    def prompt(self, instruction: str) -> tuple[np.ndarray, np.ndarray]:
        """The tokenised run-time prompt (ids, mask) of one of the episodes' instructions, padded to :attr:`L`."""
        return self._prompts[instruction]

    @property
    def L(self) -> int:
        return len(next(iter(self._prompts.values()))[0])

    @cached_property
    def allowed_windows(self) -> list[tuple[Episode, int]] | None:
        """(episode, first frame) of every window sharing no frame with ``exclude_frames``; None without it."""
        if self.exclude_frames is None:
            return None
        excluded = {name: set(int(f) for f in frames) for name, frames in self.exclude_frames.items()}
        allowed = [(ep, start) for ep in self._episodes for start in range(ep.num_frames - self.T + 1)
                   if not excluded.get(ep.path.name, set()) & set(range(start, start + self.T))]
        if not allowed:
            raise DataError(
                f"no window of {self.T} frames in {[e.path.name for e in self._episodes]} is disjoint from the excluded "
                f"(calibration) frames; record more or other episodes for evaluation"
            )
        return allowed

    def locate(self, index: int) -> list[WindowRef]:
        """The windows ``sample(index)`` uses, one per batch row."""
        rng = np.random.default_rng([self.seed, index])
        refs = []
        for _ in range(self.batch):
            if self.allowed_windows is not None:
                ep, start = self.allowed_windows[int(rng.integers(len(self.allowed_windows)))]
            else:
                ep = self._episodes[int(rng.integers(len(self._episodes)))]
                start = int(rng.integers(ep.num_frames - self.T + 1))
            frames = tuple(range(start, start + self.T))
            action = tuple(float(a) for a in ep.actions()[frames[-1]])
            refs.append(WindowRef(str(ep.path), frames, ep.instruction, action))
        return refs

    def sample(self, index: int) -> dict[str, np.ndarray]:
        by_path = {str(e.path): e for e in self._episodes}
        pixels, ids, masks = [], [], []
        for ref in self.locate(index):
            ep = by_path[ref.episode]
            pixels.append(preprocess_frames(ep.frames(ref.frames), self.config.image_size))
            i, m = self._prompts[ref.instruction]
            ids.append(i)
            masks.append(m)
        return {PIXEL_VALUES: np.stack(pixels).astype(np.float32), INPUT_IDS: np.stack(ids), ATTENTION_MASK: np.stack(masks)}

    def __iter__(self):
        index = 0
        while True:
            yield self.sample(index)
            index += 1
