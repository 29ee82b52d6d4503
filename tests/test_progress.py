"""Long steps are reported to a listener (the CLI) and cost nothing without one."""

from __future__ import annotations

import contextlib

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
