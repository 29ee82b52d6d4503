"""Timing loops and the report on the tiny preset (torch and onnxruntime on the CPU)."""

from __future__ import annotations

import json

import pytest

from vla_export.bench.core import SCHEMA, BenchSettings, fallback_warnings, run_benchmark, time_loop
from vla_export.bench.floor import DEVICE_PEAKS
from vla_export.bench.targets import plan_targets
from vla_export.errors import ConfigError

ROW_KEYS = {
    "label", "artifact", "backend", "runner", "activate_s", "first_infer_s", "warmup_s", "modes", "cost", "peak_rss_bytes",
    "peak_rss_note", "peak_gpu_bytes", "peak_gpu_note", "outputs_finite", "below_floor", "valid", "warnings", "profile", "parity",
    "ratio_to_first_p50", "contended",
}


def test_time_loop_counts_warmup_and_iterations():
    calls = []
    samples, _ = time_loop(lambda: calls.append(1), warmup=3, iters=7, duration_s=None)
    assert len(samples) == 7 and len(calls) == 10
    timed, _ = time_loop(lambda: None, warmup=0, iters=None, duration_s=0.02)
    assert len(timed) > 1


@pytest.mark.parametrize(
    "kwargs", [dict(iters=None), dict(iters=5, duration_s=1.0), dict(batch=0), dict(modes=("gpu",)), dict(iters=0)]
)
def test_bad_settings(kwargs):
    with pytest.raises(ConfigError):
        BenchSettings(**kwargs)


def test_fallback_is_reported():
    assert fallback_warnings({"requested_providers": ["CUDAExecutionProvider", "CPUExecutionProvider"], "provider": "CPUExecutionProvider"})
    assert not fallback_warnings({"requested_providers": ["CPUExecutionProvider"], "provider": "CPUExecutionProvider"})
    assert not fallback_warnings({"dtype": "float32"})


@pytest.fixture(scope="module")
def tiny_report(tiny_ckpt, tiny_onnx):
    targets = plan_targets([str(tiny_ckpt), str(tiny_onnx)], ["torch", "onnxrt"])
    settings = BenchSettings(warmup=1, iters=3, window=4, modes=("compute", "e2e"))  # the fixture's export window
    seen = []
    report = run_benchmark(targets, settings, peak=DEVICE_PEAKS["h200"], environment={"test": True}, command="vla-bench test",
                           on_result=lambda r: seen.append((len(r.results), r.complete)))
    assert seen == [(1, False), (2, True)]
    return report


def test_report_json_schema(tiny_report):
    d = json.loads(json.dumps(tiny_report.to_dict()))
    assert d["schema"] == SCHEMA and d["complete"] is True and d["command"] == "vla-bench test"
    assert d["settings"]["batch"] == 1 and d["settings"]["window"] == 4
    assert d["device_peak"]["bandwidth_gbs"] == 4300.0
    assert [r["backend"] for r in d["results"]] == ["torch", "onnxrt"]
    for row in d["results"]:
        assert set(row) == ROW_KEYS
        assert row["valid"] is True and row["outputs_finite"] is True
        for mode in ("compute", "e2e"):
            m = row["modes"][mode]
            lat = m["latency"]
            assert lat["n"] == 3 and lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"]
            assert m["floor"]["floor_ms"] > 0 and m["floor"]["below_floor"] is False
        assert set(row["modes"]["e2e"]["phases_p50_ms"]) == {"preprocess", "stage", "execute+sync", "to_host"}
        assert row["cost"]["total_flops"] > 0
    assert d["results"][0]["ratio_to_first_p50"]["compute"] == 1.0


def test_a_fixed_window_graph_says_which_window(tiny_onnx):
    target = plan_targets([str(tiny_onnx)], [])[0]
    with pytest.raises(ConfigError, match="--window 4"):
        run_benchmark([target], BenchSettings(warmup=0, iters=1, window=2), peak=DEVICE_PEAKS["h200"], environment={}, command="x")


def test_onnx_row_reports_the_provider_that_ran_and_graph_bytes(tiny_report):
    torch_row, ort_row = tiny_report.results
    assert ort_row.runner["provider"] == "CPUExecutionProvider" and not ort_row.warnings
    assert ort_row.cost.source.startswith("onnx initializers")
    # the fp32 graph holds the same weights as the fp32 torch model (plus the full vocabulary table, which
    # the config count excludes as only its used rows are read)
    assert ort_row.cost.weight_bytes >= torch_row.cost.weight_bytes
    assert torch_row.runner["dtype"] == "float32" and torch_row.peak_gpu_bytes is None
