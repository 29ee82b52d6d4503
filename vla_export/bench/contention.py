"""Was the machine busy with other work while a benchmark ran? Measured, per row, with a stated rule.

On a shared machine a CPU latency measures the other jobs as much as the model (the tiny torch row
of ``make demo`` read p50 1,194 ms against 11.7 ms on a quiet machine). So ``vla-bench`` measures,
before the run and during every timed window:

- **other processes' CPU time**, in cores: the machine's busy CPU time (``psutil.cpu_times``: all
  but idle, iowait and the guest fields, which Linux already counts in user/nice; steal included,
  since a hypervisor giving our CPUs to other guests is contention too) minus this process's and its
  children's, over the window's wall time;
- the **load average** (context only: it lags by about a minute and counts this benchmark's own
  threads);
- the **CPU frequency** where readable (``psutil.cpu_freq``; a VM often reports a constant);
- the **busiest other processes** over the window (name, pid, cores), to say who.

**The rule**: a window is *contended* when other processes used at least
:data:`CONTENDED_CORES` (a quarter of one core) on average over it. A quiet Linux machine's
background (kernel threads, idle daemons) stays at a few hundredths of a core; a quarter core stolen
on a 2-core machine shifts CPU latencies well past their run-to-run noise. The kernel counts CPU
time in ticks (10 ms), so a window is measured over at least :data:`MIN_SPAN_S` (the timed loop, or
that much before its end when it is shorter): resolution about 0.04 cores on 2 CPUs, far under the
threshold.

The probe is an object (:class:`PsutilProbe` by default) so a test can stand in a quiet or a busy
machine without one.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

#: Other processes' average CPU use, in cores, at or above which a window is contended.
CONTENDED_CORES = 0.25
#: The shortest span a window's CPU time is measured over (the kernel counts CPU time in 10 ms ticks).
MIN_SPAN_S = 1.0
#: How long the machine is watched before the first row.
BEFORE_S = 1.0
#: Period of the background sampler that gives short windows their span.
TICK_S = 0.25
#: How many of the busiest other processes a window names, and the least CPU (cores) a named one used.
TOP = 3
NAMED_CORES = 0.05
RULE = (f"contended when other processes used >= {CONTENDED_CORES:g} of one CPU core on average over the window "
        f"(system busy CPU time minus this process tree's, over at least {MIN_SPAN_S:g} s)")


@dataclass(frozen=True)
class Counters:
    """Cumulative CPU seconds at one instant: the whole machine's busy time and this process tree's."""

    t: float  # monotonic seconds
    busy_s: float
    own_s: float


class Probe(Protocol):
    def counters(self) -> Counters: ...

    def processes(self) -> dict[int, tuple[str, float]]: ...  # pid -> (name, cumulative CPU seconds), others only

    def load_average(self) -> list[float] | None: ...

    def cpu_freq_mhz(self) -> dict[str, float | None] | None: ...

    def cores(self) -> int: ...


class PsutilProbe:
    """The real machine, through psutil (a dependency of vla-export)."""

    #: ``psutil.cpu_times`` fields that are not busy time (guest time is already inside user/nice on Linux).
    NOT_BUSY = ("idle", "iowait", "guest", "guest_nice")

    def __init__(self) -> None:
        import psutil

        self.psutil = psutil
        self.me = psutil.Process()
        self._family: set[int] = {self.me.pid}

    def counters(self) -> Counters:
        times = self.psutil.cpu_times()._asdict()
        busy = sum(v for k, v in times.items() if k not in self.NOT_BUSY)
        own = self._tree_cpu_s()
        return Counters(time.monotonic(), busy, own)

    def _tree_cpu_s(self) -> float:
        t = self.me.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system  # waited-for children included
        family = {self.me.pid}
        try:
            children = self.me.children(recursive=True)
        except self.psutil.Error:
            children = []
        for child in children:
            try:
                c = child.cpu_times()
            except self.psutil.Error:
                continue
            total += c.user + c.system
            family.add(child.pid)
        self._family = family
        return total

    def processes(self) -> dict[int, tuple[str, float]]:
        out: dict[int, tuple[str, float]] = {}
        for p in self.psutil.process_iter(["name", "cpu_times"]):
            if p.pid in self._family or p.info.get("cpu_times") is None:
                continue
            t = p.info["cpu_times"]
            out[p.pid] = (p.info.get("name") or "?", t.user + t.system)
        return out

    def load_average(self) -> list[float] | None:
        try:
            return [round(x, 2) for x in os.getloadavg()]
        except (AttributeError, OSError):
            return None

    def cpu_freq_mhz(self) -> dict[str, float | None] | None:
        try:
            per_cpu = self.psutil.cpu_freq(percpu=True)
        except (AttributeError, NotImplementedError, OSError):
            return None
        if not per_cpu:
            return None
        current = [f.current for f in per_cpu]
        rated = max(f.max for f in per_cpu) or None  # 0 when the kernel does not say
        return {"mean": round(sum(current) / len(current), 1), "min": round(min(current), 1), "max_rated": rated}

    def cores(self) -> int:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class ContentionMonitor:
    """Other processes' CPU use before the run and during each timed window, judged by :data:`RULE`.

    Use as a context manager around the whole run (a background thread samples the counters every
    :data:`TICK_S`, so that a short window can be measured over :data:`MIN_SPAN_S`); :meth:`before`
    watches the machine for :data:`BEFORE_S` ahead of the first row.
    """

    name = "contention"

    def __init__(self, probe: Probe | None = None, *, threshold_cores: float = CONTENDED_CORES, min_span_s: float = MIN_SPAN_S,
                 tick_s: float | None = TICK_S, sleep: Callable[[float], None] = time.sleep):
        self.probe = probe if probe is not None else PsutilProbe()
        self.threshold, self.min_span_s, self.tick_s, self.sleep = threshold_cores, min_span_s, tick_s, sleep
        self.history: list[Counters] = []
        self.windows: list[dict[str, Any]] = []  # every stopped window's summary, in order
        self.before_summary: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._open: Counters | None = None
        self._procs: list[tuple[float, dict[int, tuple[str, float]]]] = []  # (monotonic t, processes) at each start and stop

    # --- sampling ---------------------------------------------------------------------------------

    def _sample(self) -> Counters:
        c = self.probe.counters()
        with self._lock:
            self.history.append(c)
        return c

    def __enter__(self) -> ContentionMonitor:
        self._sample()
        if self.tick_s:
            def tick() -> None:
                while not self._stop.wait(self.tick_s):
                    self._sample()

            self._thread = threading.Thread(target=tick, name="vla-bench-contention", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5 * (self.tick_s or 0) + 1)

    # --- windows ----------------------------------------------------------------------------------

    def before(self, seconds: float = BEFORE_S) -> dict[str, Any]:
        """Watch the idle machine for ``seconds`` before the run (this process does nothing meanwhile)."""
        self.start()
        self.sleep(seconds)
        self.before_summary = self._close()
        return self.before_summary

    def start(self) -> None:
        self._open = self._sample()
        self._procs.append((self._open.t, self.probe.processes()))

    def stop(self, samples_s: Sequence[float] = ()) -> dict[str, Any]:
        summary = self._close()
        self.windows.append(summary)
        return summary

    def _close(self) -> dict[str, Any]:
        if self._open is None:
            raise RuntimeError("ContentionMonitor.stop without start")
        first = self._open
        self._open = None
        end = self._sample()
        procs1 = self.probe.processes()
        # The span: the window itself, or the last min_span_s before its end when it is shorter.
        cutoff = min(first.t, end.t - self.min_span_s)
        with self._lock:
            begin = next((c for c in reversed(self.history) if c.t <= cutoff), self.history[0])
        span = max(end.t - begin.t, 1e-9)
        others = max(0.0, (end.busy_s - begin.busy_s) - (end.own_s - begin.own_s)) / span
        own = max(0.0, end.own_s - begin.own_s) / span
        t0, procs0 = next((s for s in reversed(self._procs) if s[0] <= cutoff), self._procs[-1])
        self._procs.append((end.t, procs1))
        del self._procs[:-8]  # a few recent snapshots are all a later window can reach back to
        wall = max(end.t - t0, 1e-9)
        top = sorted(((procs1[p][1] - procs0[p][1]) / wall, p, procs1[p][0]) for p in procs1.keys() & procs0.keys())
        cores = self.probe.cores()
        return {
            "threshold_cores": self.threshold,
            "contended": others >= self.threshold,
            "others_cpu_cores": round(others, 3),
            "own_cpu_cores": round(own, 3),
            "cores": cores,
            "window_s": round(end.t - first.t, 4),
            "measured_over_s": round(span, 3),
            "load_average_1_5_15": self.probe.load_average(),
            "cpu_freq_mhz": self.probe.cpu_freq_mhz(),
            "busiest_others": [{"pid": p, "name": n, "cores": round(c, 3)} for c, p, n in reversed(top[-TOP:]) if c >= NAMED_CORES],
        }

    def warnings(self, summary: dict[str, Any]) -> list[str]:
        if not summary.get("contended"):
            return []
        return [f"contended: other processes used {summary['others_cpu_cores']:.2f} CPU cores during this timing "
                f"({describe_busiest(summary)}); the latency measures the contention as much as the model"]

    # --- the run as a whole -----------------------------------------------------------------------

    def report(self, rows: Sequence[tuple[str, str, dict[str, Any]]]) -> dict[str, Any]:
        """The run's summary for the JSON: the rule, the before window, and the contended (label, mode) rows."""
        contended = [{"label": label, "mode": mode, "others_cpu_cores": s["others_cpu_cores"]} for label, mode, s in rows if s.get("contended")]
        return {"rule": RULE, "threshold_cores": self.threshold, "before": self.before_summary, "rows": len(rows),
                "contended_rows": contended, "contended": bool(contended) or bool(self.before_summary and self.before_summary["contended"])}


def describe_busiest(summary: dict[str, Any]) -> str:
    """'busiest: python3 (pid 12) 0.98, cc1 (pid 40) 0.31' or what the window holds instead."""
    names = ", ".join(f"{p['name']} (pid {p['pid']}) {p['cores']:.2f}" for p in summary.get("busiest_others", []))
    return f"busiest: {names}" if names else "no single other process stood out (short-lived ones?)"


def warning_line(report: dict[str, Any]) -> str | None:
    """The one line ``vla-bench`` prints when the run was contended, else None."""
    if not report.get("contended"):
        return None
    before = report.get("before") or {}
    rows = report["contended_rows"]
    load = before.get("load_average_1_5_15")
    context = (f"before the run {before['others_cpu_cores']:.2f} cores" if before else "") + \
              (f", load average {load[0]:.2f} on {before.get('cores')} cores" if load else "")
    worst = max((r["others_cpu_cores"] for r in rows), default=before.get("others_cpu_cores", 0.0))
    busiest = describe_busiest(before) if before.get("busiest_others") else ""
    return (f"warning: the machine was contended: other processes used up to {worst:.2f} CPU cores during "
            f"{len(rows)} of {report['rows']} timed rows ({context}{'; ' + busiest if busiest else ''}; "
            f"threshold {report['threshold_cores']:g} core); the marked rows measure the contention, not only the model: "
            "rerun them on a quiet machine")
