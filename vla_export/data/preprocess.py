"""The one preprocessing path: what the policy sees at run time, in parity, calibration and benchmarks.

NumPy only (the runtime must work without torch). A camera frame, uint8 HWC RGB of any size, is
resized to the model's square input (bilinear, the whole frame: no crop) and normalised with the
CLIP mean and std that Kosmos-2 and CLIP share.

:func:`preprocess_tensor` is the same arithmetic on a batch of frames already in a torch tensor
(a server's or a robot's GPU, where CPU preprocessing would cap the frame rate). It uses tensor methods
only, so this module still imports no torch, and tests hold it equal to :func:`preprocess_frame`;
:func:`tensor_tables` makes its index and weight tensors once per frame size.
"""

from __future__ import annotations

import numpy as np

from vla_export.errors import DataError

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
PROMPT_TEMPLATE = "<grounding>An image of a robot {instruction}"
DEFAULT_INSTRUCTION = "go to the cup"


def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights for half-pixel-centred bilinear resampling along one axis."""
    scale = n_in / n_out
    x = (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5
    x = np.clip(x, 0, n_in - 1)
    lo = np.floor(x).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (x - lo).astype(np.float32)


def resize_bilinear(frame: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [size, size, 3] in 0..255."""
    h, w = frame.shape[:2]
    if h > 2 * size or w > 2 * size:
        # Area-average first so downscaling a 720x1280 frame does not alias; then bilinear.
        return resize_bilinear_float(_area_average(frame, max(h // size, 1), max(w // size, 1)), size)
    return resize_bilinear_float(frame.astype(np.float32), size)


def _area_average(frame: np.ndarray, fy: int, fx: int) -> np.ndarray:
    """Mean over fy x fx blocks, by integer strided adds (10x faster than a reshaped float mean)."""
    hh, ww = (frame.shape[0] // fy) * fy, (frame.shape[1] // fx) * fx
    acc = np.uint16 if fy * fx * 255 <= np.iinfo(np.uint16).max else np.uint32
    rows = frame[0:hh:fy, :ww].astype(acc)
    for k in range(1, fy):
        rows += frame[k:hh:fy, :ww]
    block = rows[:, 0:ww:fx].copy()
    for k in range(1, fx):
        block += rows[:, k:ww:fx]
    return block.astype(np.float32) * np.float32(1.0 / (fy * fx))


def resize_bilinear_float(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    y0, y1, wy = _axis_weights(h, size)
    x0, x1, wx = _axis_weights(w, size)
    rows = img[y0] * (1 - wy)[:, None, None] + img[y1] * wy[:, None, None]
    return rows[:, x0] * (1 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]


def check_frame(frame: np.ndarray) -> None:
    if not isinstance(frame, np.ndarray):
        raise DataError(f"a frame must be a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise DataError(f"a frame must be uint8 RGB, got dtype {frame.dtype}")
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise DataError(f"a frame must be [H, W, 3] (HWC RGB), got shape {tuple(frame.shape)}")
    if frame.shape[0] < 1 or frame.shape[1] < 1:
        raise DataError(f"a frame must have at least one pixel, got shape {tuple(frame.shape)} (an empty camera image?)")


def preprocess_frame(frame: np.ndarray, image_size: int = 224) -> np.ndarray:
    """uint8 [H, W, 3] RGB -> float32 [3, image_size, image_size], CLIP-normalised."""
    check_frame(frame)
    img = resize_bilinear(frame, image_size) / np.float32(255.0)
    img = (img - CLIP_MEAN) / CLIP_STD
    return np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)


def preprocess_frames(frames, image_size: int = 224) -> np.ndarray:
    """uint8 [T, H, W, 3], or a sequence of T uint8 [H, W, 3] frames of any sizes -> float32 [T, 3, S, S]."""
    return np.stack([preprocess_frame(f, image_size) for f in frames])


def tensor_tables(h: int, w: int, image_size: int, like) -> dict:
    """What :func:`preprocess_tensor` needs for an [H, W] frame, made once: the area-average factors and
    the bilinear source indices and weights as tensors on ``like``'s device (a GPU caller keeps these, so a
    step makes no small host-to-device copies). NumPy computes them; ``like`` only gives the device."""
    fy = fx = 1
    if h > 2 * image_size or w > 2 * image_size:
        fy, fx = max(h // image_size, 1), max(w // image_size, 1)
    hs, ws = h // fy, w // fx
    y0, y1, wy = _axis_weights(hs, image_size)
    x0, x1, wx = _axis_weights(ws, image_size)
    f32, long = like.new_zeros(()).float(), like.new_zeros(()).long()  # new_tensor takes these dtypes and device
    return {
        "shape": (h, w, image_size), "fy": fy, "fx": fx,
        "y0": long.new_tensor(y0), "y1": long.new_tensor(y1), "wy": f32.new_tensor(wy)[None, :, None, None],
        "x0": long.new_tensor(x0), "x1": long.new_tensor(x1), "wx": f32.new_tensor(wx)[None, None, :, None],
        "mean": f32.new_tensor(CLIP_MEAN), "std": f32.new_tensor(CLIP_STD),
    }


def preprocess_tensor(frames, image_size: int = 224, tables: dict | None = None):
    """uint8 torch tensor [N, H, W, 3] -> float32 [N, 3, S, S] on its device: :func:`preprocess_frame`'s math.

    The area average sums integers exactly as the NumPy path does; the bilinear and normalisation steps
    are the same float32 operations, so results agree to float32 rounding (tested). ``tables`` from
    :func:`tensor_tables` for this frame size (made here when not given).
    """
    n, h, w = int(frames.shape[0]), int(frames.shape[1]), int(frames.shape[2])
    if tables is None:
        tables = tensor_tables(h, w, image_size, frames)
    elif tables["shape"] != (h, w, image_size):
        raise ValueError(f"preprocessing tables for {tables['shape']}, frames of {(h, w, image_size)}")
    fy, fx = tables["fy"], tables["fx"]
    if fy * fx > 1:
        hh, ww = (h // fy) * fy, (w // fx) * fx
        blocks = frames[:, :hh, :ww].int().reshape(n, hh // fy, fy, ww // fx, fx, 3).sum((2, 4))
        img = blocks.float() * np.float32(1.0 / (fy * fx))
    else:
        img = frames.float()
    wy, wx = tables["wy"], tables["wx"]
    rows = img[:, tables["y0"]] * (1 - wy) + img[:, tables["y1"]] * wy
    img = rows[:, :, tables["x0"]] * (1 - wx) + rows[:, :, tables["x1"]] * wx
    img = img / np.float32(255.0)
    img = (img - tables["mean"]) / tables["std"]
    return img.permute(0, 3, 1, 2).contiguous()


def prompt_for(instruction: str | None) -> str:
    return PROMPT_TEMPLATE.format(instruction=(instruction or DEFAULT_INSTRUCTION).strip())
