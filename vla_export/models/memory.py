"""How much memory a window of frames needs, estimated from the config, checked before the work.

The backbone runs on every frame of the window at once (batch x window images), so its activations
grow linearly with the window. A window far beyond what the machine holds (``--window 100000``)
otherwise runs for minutes toward an out-of-memory kill; this refuses it up front, naming the
estimate and the memory available.
"""

from __future__ import annotations

from dataclasses import dataclass

from vla_export.errors import ConfigError
from vla_export.models.config import PolicyConfig, VisionConfig

FLOAT_BYTES = 4
#: Live copies of the largest activation at once (the input, the output and a temporary of a layer);
#: the exporter's tracing and ONNX Runtime's arena hold more, which ``factor`` adds.
LIVE_COPIES = 3


def _vit_peak(v: VisionConfig) -> int:
    tokens = v.num_patches + 1
    return tokens * max(v.hidden_size, v.intermediate_size) + v.num_heads * tokens * tokens


def frame_activation_bytes(cfg: PolicyConfig, text_len: int = 16) -> int:
    """Bytes of the largest activation the backbone holds for one frame (inputs included), float32."""
    seq = cfg.prefix_len + text_len
    text = seq * max(cfg.kosmos_text.embed_dim, cfg.kosmos_text.ffn_dim) + cfg.kosmos_text.num_heads * seq * seq
    towers = [_vit_peak(cfg.kosmos_vision), text] + ([_vit_peak(cfg.clip_vision)] if cfg.clip_vision else [])
    pixels = 3 * cfg.image_size * cfg.image_size
    return FLOAT_BYTES * (pixels + LIVE_COPIES * max(towers))


@dataclass(frozen=True)
class WindowEstimate:
    window: int
    batch: int
    bytes: int
    available: int


def available_memory() -> int:
    """Bytes the OS can give this process now (psutil: free + reclaimable)."""
    import psutil

    return int(psutil.virtual_memory().available)


def check_window_memory(cfg: PolicyConfig, window: int, *, batch: int = 1, text_len: int = 16, factor: float = 1.0,
                        what: str = "--window", available: int | None = None) -> WindowEstimate:
    """Refuse a window whose activations (estimated from ``cfg``) exceed the memory available.

    ``factor`` scales the estimate for the work's own overhead (an export traces and runs the graph
    at several batch sizes). Raises :class:`ConfigError` naming the estimate, the memory and the
    config's window.
    """
    need = int(frame_activation_bytes(cfg, text_len) * window * batch * factor)
    free = available_memory() if available is None else available
    if need > free:
        raise ConfigError(
            f"{what} {window}: about {need / 1e9:.1f} GB of activations at batch {batch} (estimated from the config), "
            f"more than the {free / 1e9:.1f} GB of memory available; the policy was trained with window {cfg.window}"
        )
    return WindowEstimate(window, batch, need, free)
