"""Jetson telemetry through jetson-stats (jtop) when installed, tegrastats otherwise (issue 12, part 5), with a stand-in jtop."""

from __future__ import annotations

import sys
import time
from types import ModuleType

import pytest

from vla_export.bench import env


class FakeJtop:
    """A stand-in for jetson-stats' ``jtop`` (nothing here is a Jetson), shaped as its documentation gives the
    properties used: context manager, ``ok()`` once per reading, ``interval``, ``nvpmodel``, ``jetson_clocks``,
    ``stats``, and ``power`` / ``gpu`` / ``temperature`` in mW, kHz and degC. Reading n draws 5 + n W in total."""

    updates = 4

    def __init__(self, interval=1.0):
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

    @property
    def power(self):
        return {"rail": {"VDD_GPU_SOC": {"online": True, "volt": 5000, "curr": 600, "power": 3000 + 1000 * self.n, "avg": 3500},
                         "VDD_CPU_CV": {"online": True, "volt": 5000, "curr": 400, "power": 2000, "avg": 2000},
                         "VIN_SYS_5V0": {"online": False, "power": 0}},
                "tot": {"power": 5000 + 1000 * self.n, "avg": 6000}}

    @property
    def gpu(self):
        return {"gpu": {"type": "integrated", "status": {"load": 10.0 * self.n, "railgate": False},
                        "freq": {"governor": "nvhost_podgov", "cur": 612000 + 100000 * self.n, "min": 306000, "max": 1300500}}}

    @property
    def temperature(self):
        return {"cpu": {"online": True, "temp": 45.0}, "gpu": {"online": True, "temp": 40.0 + self.n}, "tj": {"online": False, "temp": -256}}


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
    assert s["samples"] == FakeJtop.updates and s["error"] is None and s["service_interval_s"] == 0.01
    assert s["power_w"] == {"mean": 7.5, "max": 9.0} and s["gpu_mhz"] == {"mean": pytest.approx(862.0), "min": 712.0, "max": 1012.0}
    assert s["rails_w"] == {"VDD_CPU_CV": 2.0, "VDD_GPU_SOC": 5.5}  # the offline rail is left out
    assert s["temps_c_max"] == {"cpu": 45.0, "gpu": 44.0} and s["temp_c_max"] == 45.0 and s["gpu_load_pct"] == 25.0


def test_jtop_record_reads_the_documented_properties():
    jetson = FakeJtop()
    jetson.n = 2
    assert env.jtop_record(jetson) == {"rails_w": {"VDD_GPU_SOC": 5.0, "VDD_CPU_CV": 2.0}, "temps_c": {"cpu": 45.0, "gpu": 42.0},
                                       "power_w": 7.0, "gpu": "gpu", "gpu_mhz": 812.0, "gpu_load_pct": 20.0}
    bare = type("Bare", (), {"power": {}, "gpu": {}, "temperature": {}})()  # a board without rails or sensors
    assert env.jtop_record(bare) == {"rails_w": {}, "temps_c": {}}


def test_energy_per_inference_per_window():
    records = [{"power_w": 10.0, "rails_w": {}, "temps_c": {}}, {"power_w": 14.0, "rails_w": {}, "temps_c": {}}]
    s = env.summarise_jtop(records, [0.020, 0.030], idle_power_w=4.0)  # 12 W over a mean latency of 25 ms
    assert s["energy_mj_per_inference"] == pytest.approx(300.0) and s["energy_above_idle_mj_per_inference"] == pytest.approx(200.0)
    empty = env.summarise_jtop([], [0.01])
    assert empty["samples"] == 0 and "--duration" in empty["note"] and "energy_mj_per_inference" not in empty


def test_per_row_telemetry_in_the_table_and_json(on_a_jetson, monkeypatch, cli, tiny_onnx, tmp_path):
    """vla-bench on a (stand-in) Jetson: every timed window gets its own power, clock, temperature and energy."""
    import json

    from vla_export.bench import contention

    monkeypatch.setattr(FakeJtop, "updates", 10**9)  # read until the run ends
    monkeypatch.setattr(FakeJtop, "ok", lambda self: (time.sleep(0.005), setattr(self, "n", self.n % 4 + 1), True)[-1])
    monkeypatch.setattr(contention, "BEFORE_S", 0.1)
    out = tmp_path / "b.json"
    r = cli(tiny_onnx, "-b", "onnxrt:cpu", "--window", "4", "--warmup", "1", "--duration", "0.2", "--device-peak", "agx-orin-64gb",
            "--json", out, app="bench")
    assert r.exit_code == 0, r
    header = next(line for line in r.stdout.splitlines() if "p50 ms" in line)
    assert all(col in header for col in ("W", "mJ/inf", "GPU MHz", "max °C"))
    report = json.loads(out.read_text())
    for mode in ("compute", "e2e"):
        j = report["results"][0]["modes"][mode]["jetson"]
        assert j["samples"] > 3 and 6.0 <= j["power_w"]["mean"] <= 9.0 and 712.0 <= j["gpu_mhz"]["mean"] <= 1012.0
        latency_ms = sum(report["results"][0]["modes"][mode]["samples_ms"]) / len(report["results"][0]["modes"][mode]["samples_ms"])
        assert j["energy_mj_per_inference"] == pytest.approx(j["power_w"]["mean"] * latency_ms)
        assert j["idle_power_w"] is not None and "energy_above_idle_mj_per_inference" in j
    assert report["environment"]["jetson_telemetry"]["samples"] > 0


def test_no_telemetry_off_a_jetson_or_without_jetson_stats(monkeypatch, tmp_path):
    monkeypatch.setattr(env, "MODEL_FILE", tmp_path / "absent")
    with env.JetsonTelemetry() as telemetry:
        pass
    assert telemetry.summary() is None and env.jetson_info() is None
    monkeypatch.setitem(sys.modules, "jtop", None)
    assert env.jtop_snapshot() is None
