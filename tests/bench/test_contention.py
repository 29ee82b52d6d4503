"""vla-bench's contention check: other processes' CPU before and during each timing, the rule, the marks.

Stand-in probes give a machine whose other processes use a known CPU share, on a fake clock, so the
rule is checked both ways: it fires on a busy machine and stays quiet on a quiet one (and is not fooled
by the benchmark's own CPU use).
"""

from __future__ import annotations

import json
import re
import time

import pytest

from vla_export.bench import contention as C


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


class StandInProbe:
    """A machine where other processes use ``others`` cores and this process ``own`` cores, steadily."""

    def __init__(self, clock, *, others: float, own: float = 1.0, cores: int = 2, load: float = 0.1):
        self.clock, self.others, self.own, self.n, self.load = clock, others, own, cores, load
        self.t0 = clock()

    def counters(self) -> C.Counters:
        dt = self.clock() - self.t0
        return C.Counters(self.clock(), busy_s=(self.others + self.own) * dt, own_s=self.own * dt)

    def processes(self):
        dt = self.clock() - self.t0
        return {4242: ("stress-ng", 0.9 * self.others * dt), 77: ("kworker", 0.1 * self.others * dt)}

    def load_average(self):
        return [self.load, self.load, self.load]

    def cpu_freq_mhz(self):
        return {"mean": 2600.0, "min": 2600.0, "max_rated": None}

    def cores(self) -> int:
        return self.n


def _monitor(clock, **probe):
    return C.ContentionMonitor(StandInProbe(clock, **probe), tick_s=None, sleep=clock.sleep)


def _window(m: C.ContentionMonitor, clock: FakeClock, seconds: float) -> dict:
    m.start()
    clock.sleep(seconds)
    return m.stop([seconds])


def test_rule_fires_on_a_busy_machine():
    clock = FakeClock()
    m = _monitor(clock, others=1.5, load=6.6)
    before = m.before(1.0)
    assert before["contended"] and before["others_cpu_cores"] == pytest.approx(1.5)
    row = _window(m, clock, 2.0)
    assert row["contended"] and row["others_cpu_cores"] == pytest.approx(1.5) and row["own_cpu_cores"] == pytest.approx(1.0)
    assert row["busiest_others"][0] == {"pid": 4242, "name": "stress-ng", "cores": pytest.approx(1.35)}
    assert "contended: other processes used 1.50 CPU cores" in m.warnings(row)[0] and "stress-ng (pid 4242)" in m.warnings(row)[0]
    report = m.report([("tiny.pt [torch]", "compute", row)])
    assert report["contended"] and report["contended_rows"] == [{"label": "tiny.pt [torch]", "mode": "compute", "others_cpu_cores": 1.5}]
    line = C.warning_line(report)
    assert line.startswith("warning: the machine was contended: other processes used up to 1.50 CPU cores during 1 of 1 timed rows")
    assert "load average 6.60 on 2 cores" in line and "rerun" in line


def test_rule_stays_quiet_on_a_quiet_machine():
    clock = FakeClock()
    m = _monitor(clock, others=0.02)
    assert not m.before(1.0)["contended"]
    row = _window(m, clock, 2.0)
    assert not row["contended"] and row["others_cpu_cores"] == pytest.approx(0.02) and m.warnings(row) == []
    assert row["busiest_others"] == []  # nobody used a noticeable share
    report = m.report([("tiny.pt [torch]", "compute", row)])
    assert not report["contended"] and C.warning_line(report) is None


def test_the_benchmarks_own_cpu_is_not_contention():
    clock = FakeClock()
    m = _monitor(clock, others=0.0, own=1.9)  # the benchmark itself keeps both cores busy
    row = _window(m, clock, 2.0)
    assert not row["contended"] and row["own_cpu_cores"] == pytest.approx(1.9)


def test_a_short_window_is_measured_over_the_minimum_span():
    """A 30 ms timing is judged over the last second (CPU time is counted in 10 ms ticks)."""
    clock = FakeClock()
    m = _monitor(clock, others=0.02)
    m.before(1.0)
    clock.sleep(0.5)
    m._sample()  # what the background sampler does every TICK_S
    clock.sleep(0.8)
    row = _window(m, clock, 0.03)
    assert row["window_s"] == pytest.approx(0.03) and row["measured_over_s"] >= C.MIN_SPAN_S


def test_the_real_probe_reads_this_machine():
    """psutil's counters move and the sampler thread stops with the run (nothing about the load is asserted)."""
    with C.ContentionMonitor(tick_s=0.05) as m:
        m.start()
        end = time.monotonic() + 0.3
        while time.monotonic() < end:  # own CPU time, not others'
            pass
        row = m.stop([0.3])
    assert row["own_cpu_cores"] > 0.1 and row["cores"] >= 1 and len(m.history) > 3
    assert m._thread is not None and not m._thread.is_alive()


@pytest.mark.parametrize("others, marked", [(1.5, True), (0.02, False)])
def test_vla_bench_marks_rows_in_table_json_and_plot(monkeypatch, cli, tiny_onnx, tmp_path, others, marked):
    """The whole command with a stand-in machine (real clock): busy -> warning line, CONTENDED rows, marked JSON
    and plot title; quiet -> none of it."""
    pytest.importorskip("matplotlib")
    from vla_export.plots import bench_figure

    class RealClockProbe(StandInProbe):
        def __init__(self):
            super().__init__(time.monotonic, others=others, own=0.0)

    monkeypatch.setattr(C, "PsutilProbe", RealClockProbe)
    monkeypatch.setattr(C, "BEFORE_S", 0.2)
    out = tmp_path / "b.json"
    r = cli(tiny_onnx, "-b", "onnxrt:cpu", "--window", "4", "--warmup", "1", "--iters", "3", "--device-peak", "agx-orin-64gb",
            "--json", out, app="bench")
    assert r.exit_code == 0, r
    report = json.loads(out.read_text())
    row = report["results"][0]
    assert row["contended"] is marked and report["contention"]["contended"] is marked
    assert all(m["contention"]["contended"] is marked for m in row["modes"].values())
    assert ("CONTENDED" in r.stdout) is marked
    header = next(line for line in r.stdout.splitlines() if "p50 ms" in line)
    cells = [c.strip() for c in re.split(r"[┃│]", header)[1:-1]]
    assert "" not in cells and (cells[-1] == "flag") is marked, cells  # a flag column with a header, only when a row is flagged
    assert ("warning: the machine was contended" in r.stderr) is marked
    assert ("warning: the machine is busy before the run" in r.stderr) is marked
    fig = bench_figure(report)
    title = fig._suptitle.get_text() if fig._suptitle else ""
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert ("CONTENDED" in title) is marked and any("CONTENDED" in t for t in legend) is marked
