"""Long steps are reported to a listener (the CLI) and cost nothing without one."""

from __future__ import annotations

import contextlib
import re

import pytest

from vla_export.progress import listening, reported, step


def test_steps_reach_the_listener_nested_and_on_failure():
    seen = []

    @contextlib.contextmanager
    def listener(label):
        seen.append(("start", label))
        try:
            yield
        finally:
            seen.append(("end", label))

    @reported("outer")
    def work(fail):
        with step("inner"):
            if fail:
                raise ValueError("boom")
        return 7

    with listening(listener):
        assert work(False) == 7
        with pytest.raises(ValueError):
            work(True)
    assert seen[:4] == [("start", "outer"), ("start", "inner"), ("end", "inner"), ("end", "outer")]
    assert seen[4:] == seen[:4]
    seen.clear()
    assert work(False) == 7 and seen == []  # no listener: silent


def test_cli_log_shows_each_step_with_its_time(cli, tiny_ckpt):
    r = cli("inspect", tiny_ckpt, "--load")
    assert r.exit_code == 0, r
    assert any(line.startswith("loading the checkpoint: ") and line.endswith(" s") for line in r.stderr.splitlines()), r.stderr


def _log_display():
    import io

    from vla_export.cli.common import _Console, _StepDisplay

    buf = io.StringIO()
    return _StepDisplay(_Console(file=buf, force_terminal=False, highlight=False)), buf


def test_a_log_shows_an_outer_step_when_it_starts():
    """An export's first line comes when it starts, not when its first step ends (minutes later)."""
    display, buf = _log_display()
    with listening(display):
        with step("exporting to ONNX and verifying"):
            assert buf.getvalue() == "exporting to ONNX and verifying ...\n"
            with step("inner"):
                pass
    lines = buf.getvalue().splitlines()
    assert lines[1].startswith("  inner: ") and lines[2].startswith("exporting to ONNX and verifying: "), lines


def test_a_counted_step_shows_done_total_elapsed_and_left(monkeypatch):
    from vla_export.progress import counted

    display, buf = _log_display()
    monkeypatch.setattr(display, "LOG_EVERY_S", 0.0)
    with listening(display):
        with counted("parity", 4, "samples") as advance:
            for _ in range(4):
                advance(1)
    lines = buf.getvalue().splitlines()
    assert lines[0] == "parity: 4 samples ..."
    assert [line.split(",")[0] for line in lines[1:4]] == ["parity: 1/4 samples", "parity: 2/4 samples", "parity: 3/4 samples"], lines
    assert all(re.search(r", \d+ s, ~\d+ s left$", line) for line in lines[1:4]), lines
    assert re.fullmatch(r"parity: 4 samples in \d+\.\d s", lines[4]), lines


def test_counted_without_listener_is_silent():
    from vla_export.progress import counted

    with counted("x", 3) as advance:
        advance(1)  # no listener: nothing happens, nothing fails


def test_benchmark_progress_advances_only_between_timed_calls():
    """vla-bench's per-iteration count never runs inside a timed call, and a timed count asks for no background drawing."""
    from vla_export.bench.core import time_loop

    events: list[str] = []
    timed_flags: list[bool] = []

    class Listener:
        @contextlib.contextmanager
        def __call__(self, label):
            yield

        @contextlib.contextmanager
        def counted(self, label, total, unit, *, timed=False):
            timed_flags.append(timed)
            events.append(f"total {total}")
            yield lambda n=1: events.append("advance")

    def work():
        events.append("call")
        events.append("end")

    with listening(Listener()):
        samples, _ = time_loop(work, warmup=2, iters=5, duration_s=None, label="row compute")
    assert len(samples) == 5 and timed_flags == [True] and events[0] == "total 7"
    body = events[1:]
    assert body == ["call", "end", "advance"] * 7, body  # each advance after its call ended


def test_parity_shows_per_sample_progress(cli, tiny_ckpt, tiny_onnx, monkeypatch):
    from vla_export.cli import common

    monkeypatch.setattr(common._StepDisplay, "LOG_EVERY_S", 0.0)
    r = cli("parity", tiny_ckpt, tiny_onnx, "--samples", "3")
    assert r.exit_code == 0, r
    assert "running the reference and the candidate: 1/3 samples, " in r.stderr and "running the reference and the candidate: 2/3 samples, " in r.stderr
    assert "running the reference and the candidate: 3 samples in " in r.stderr, r.stderr


def test_a_timed_count_on_a_terminal_starts_no_refresh_thread():
    """Benchmark iterations are drawn by hand between timed calls: no Rich live display (and its thread) runs."""
    import io

    from vla_export.cli.common import _Console, _StepDisplay
    from vla_export.progress import counted

    buf = io.StringIO()
    display = _StepDisplay(_Console(file=buf, force_terminal=True, highlight=False))
    display.TIMED_REDRAW_S = 0.0
    with listening(display):
        with counted("row compute", 3, "iterations", timed=True) as advance:
            for _ in range(3):
                advance(1)
                assert display.live is None
        with counted("parity", 2, "samples") as advance:  # an untimed count does use the live display
            assert display.live is not None
            advance(1)
    out = buf.getvalue()
    assert "row compute: 1/3 iterations" in out and "row compute: 3 iterations in " in out
