"""What else a benchmark row measures while it is timed: the machine's contention, the Jetson's power.

A *monitor* watches each timed window (one row and mode, after its warm-up): :meth:`Monitor.start`
right before the first timed iteration, :meth:`Monitor.stop` right after the last, with the
per-iteration seconds, returning a JSON-ready summary of that window. The timing loop knows only a
:class:`RowWatch` (one per window), so adding a monitor touches no loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class Monitor(Protocol):
    #: The key its summaries go under in each mode of the report (``"contention"``, ``"jetson"``).
    name: str

    def start(self) -> None: ...

    def stop(self, samples_s: Sequence[float]) -> dict[str, Any] | None: ...

    def warnings(self, summary: dict[str, Any]) -> list[str]: ...


class RowWatch:
    """The monitors of one timed window; ``results`` holds each one's summary after :meth:`stop`."""

    def __init__(self, monitors: Sequence[Monitor] = ()):
        self.monitors = list(monitors)
        self.results: dict[str, Any] = {}

    def start(self) -> None:
        for m in self.monitors:
            m.start()

    def stop(self, samples_s: Sequence[float]) -> None:
        for m in reversed(self.monitors):
            summary = m.stop(samples_s)
            if summary is not None:
                self.results[m.name] = summary

    def warnings(self) -> list[str]:
        return [w for m in self.monitors if m.name in self.results for w in m.warnings(self.results[m.name])]
