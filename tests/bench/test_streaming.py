"""vla-bench --streaming: step vs single-frame backbone, per window, as values and through the CLI."""

from __future__ import annotations

import json

import pytest

from vla_export.bench.streaming import TARGET_RATIO, bench_torch_streaming


def test_torch_streaming_result_holds_every_window(tiny_policy):
    result = bench_torch_streaming(tiny_policy, windows=[1, 6], warmup=1, iters=4, frame_hw=(48, 64))
    d = result.to_dict()
    assert [w["window"] for w in d["windows"]] == [1, 6]
    assert d["backbone_single_frame"]["n"] == 4
    for w in result.windows:
        assert w.step.n == w.head.n == w.full_window.n == 4
        assert w.step.p50_ms > w.head.p50_ms > 0
        assert w.step_total.p50_ms >= w.step.p50_ms
        assert w.ratio == pytest.approx(w.step.p50_ms / result.backbone.p50_ms)
        assert w.within_target == (w.ratio <= TARGET_RATIO)
    assert d["passed"] == all(w["within_target"] for w in d["windows"])
    assert d["environment"]["libraries"]["numpy"] and d["settings"]["interleaved"]


def test_cli_streaming_over_a_split_export(cli, tiny_split, tmp_path):
    out = tmp_path / "streaming.json"
    result = cli("--streaming", tiny_split.manifest_path, "--windows", "2,4", "--iters", "3", "--warmup", "1", "--json", out, app="bench")
    assert result.exit_code == 0, result
    assert "vla-bench --streaming" in result.stdout
    report = json.loads(out.read_text())
    assert report["kind"] == "streaming" and [w["window"] for w in report["windows"]] == [2, 4]
    assert report["runners"]["backbone"]["name"].startswith("onnxrt")
    assert report["command"].startswith("vla-bench --streaming")
    assert all(w["full_window"] is None for w in report["windows"])


def test_cli_streaming_refuses_bad_windows_and_missing_engines(cli, tiny_split):
    bad = cli("--streaming", tiny_split.manifest_path, "--windows", "2,x", app="bench")
    assert bad.exit_code == 2 and "comma-separated integers" in bad.stderr
    no_engines = cli("--streaming", tiny_split.manifest_path, "-b", "trt", app="bench")
    assert no_engines.exit_code == 2 and "build each part first" in no_engines.stderr
