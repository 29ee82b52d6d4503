"""Jetson telemetry through jetson-stats (jtop) when installed, tegrastats otherwise (issue 12, part 5), with a stand-in jtop."""

from __future__ import annotations

import sys
import time
from types import ModuleType

import pytest

from vla_export.bench import env


class FakeJtop:
    """jtop's interface as used: context manager, ok() per update, stats, nvpmodel, jetson_clocks."""

    updates = 4

    def __init__(self, interval=0.5):
        self.interval, self.n = interval, 0
        self.nvpmodel, self.jetson_clocks = "MAXN", "active"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def ok(self):
        time.sleep(0.001)
        self.n += 1
        return self.n <= self.updates

    @property
    def stats(self):
        return {"time": "t", "GPU": 10.0 * self.n, "Temp gpu": 40.0 + self.n, "Power TOT": 5000, "nvp model": "MAXN", "jetson_clocks": "ON"}


@pytest.fixture
def on_a_jetson(monkeypatch, tmp_path):
    model = tmp_path / "model"
    model.write_text("NVIDIA Jetson AGX Orin Developer Kit\x00")
    monkeypatch.setattr(env, "MODEL_FILE", model)
    module = ModuleType("jtop")
    module.jtop = FakeJtop
    monkeypatch.setitem(sys.modules, "jtop", module)
    monkeypatch.setattr(env, "_tegrastats_line", lambda: pytest.fail("tegrastats read although jtop answered"))


def test_jetson_info_reads_jtop_when_installed(on_a_jetson):
    info = env.jetson_info()
    assert info["model"].startswith("NVIDIA Jetson AGX Orin") and info["tegrastats"] is None
    assert info["jtop"]["nvpmodel"] == "MAXN" and info["jtop"]["stats"]["GPU"] == 10.0
    assert info["jetson_clocks"] == "active"  # from jtop's service when `jetson_clocks --show` (root) is not available


def test_telemetry_during_a_run_is_summarised(on_a_jetson):
    with env.JetsonTelemetry(interval_s=0.01) as telemetry:
        time.sleep(0.05)
    s = telemetry.summary()
    assert s["samples"] == FakeJtop.updates and s["error"] is None
    assert s["GPU"] == {"mean": 25.0, "max": 40.0} and s["Temp gpu"]["max"] == 44.0 and "time" not in s


def test_no_telemetry_off_a_jetson_or_without_jetson_stats(monkeypatch, tmp_path):
    monkeypatch.setattr(env, "MODEL_FILE", tmp_path / "absent")
    with env.JetsonTelemetry() as telemetry:
        pass
    assert telemetry.summary() is None and env.jetson_info() is None
    monkeypatch.setitem(sys.modules, "jtop", None)
    assert env.jtop_snapshot() is None
