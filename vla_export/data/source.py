"""One seeded data source: (seed, index) -> the same sample, every time, on every machine.

It feeds parity, calibration and benchmarks. Frames are smooth random scenes made as uint8 camera
frames and passed through the shared preprocessing, so the model sees exactly what it sees at run
time; prompts are random token ids with right padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vla_export.data.preprocess import preprocess_frame
from vla_export.models.config import PolicyConfig

@dataclass(frozen=True)
class SyntheticSource:
    """Deterministic policy inputs for a config. ``sample(i)`` returns numpy arrays keyed by input name."""

    config: PolicyConfig
    seed: int = 0
    batch: int = 1
    window: int | None = None
    text_len: int | None = None
    frame_hw: tuple[int, int] = (72, 128)  # a small camera frame; preprocessing resizes it

    @property
    def T(self) -> int:
        return self.config.window if self.window is None else self.window

    @property
    def L(self) -> int:
        return self.text_len or min(16, self.config.max_text_len)

    def frame(self, rng: np.random.Generator) -> np.ndarray:
        """A smooth uint8 HWC scene: a coarse random grid upsampled, plus a little noise."""
        h, w = self.frame_hw
        coarse = rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3)).astype(np.float32)
        img = np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)[:h, :w]
        img += rng.normal(0, 8, size=img.shape)
        return np.clip(img, 0, 255).astype(np.uint8)

    def sample(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, index])
        cfg = self.config
        frames = np.stack(
            [np.stack([preprocess_frame(self.frame(rng), cfg.image_size) for _ in range(self.T)]) for _ in range(self.batch)]
        )
        t = cfg.tokens
        first = max(t.bos, t.pad, t.eos, t.image_start, t.image_end) + 1
        ids = rng.integers(first, cfg.kosmos_text.vocab_size, size=(self.batch, self.L), dtype=np.int64)
        mask = np.ones((self.batch, self.L), dtype=np.int64)
        for b in range(self.batch):
            valid = int(rng.integers(max(1, self.L // 2), self.L + 1))
            ids[b, valid:] = t.pad
            mask[b, valid:] = 0
        return {"pixel_values": frames.astype(np.float32), "input_ids": ids, "attention_mask": mask}

    def __iter__(self):
        index = 0
        while True:
            yield self.sample(index)
            index += 1
