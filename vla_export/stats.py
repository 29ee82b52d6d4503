"""Latency statistics over timed iterations."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from vla_export.errors import VlaExportError

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class LatencyStats:
    """Milliseconds per inference over ``n`` timed iterations; ``fps`` is 1000 / p50 (one stream, batch 1)."""

    n: int
    min_ms: float
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    std_ms: float

    @property
    def fps(self) -> float:
        return 1000.0 / self.p50_ms if self.p50_ms > 0 else math.inf

    @classmethod
    def from_seconds(cls, samples: Sequence[float]) -> LatencyStats:
        if len(samples) == 0:
            raise VlaExportError("no timed iterations: increase --iters or --duration")
        ms = np.asarray(samples, dtype=np.float64) * 1e3
        if not np.all(np.isfinite(ms)) or np.any(ms < 0):
            raise VlaExportError("internal: a timing sample is negative or not finite")
        p50, p90, p99 = np.percentile(ms, PERCENTILES)
        return cls(
            n=int(ms.size),
            min_ms=float(ms.min()),
            mean_ms=float(ms.mean()),
            p50_ms=float(p50),
            p90_ms=float(p90),
            p99_ms=float(p99),
            max_ms=float(ms.max()),
            std_ms=float(ms.std()),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"fps": self.fps}
