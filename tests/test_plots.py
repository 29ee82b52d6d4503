"""PNG plots: vla-bench --plot (raw times kept in the JSON), replay --plot, and the optional-dependency path."""

from __future__ import annotations

import json
import sys

import pytest

from vla_export.errors import ConfigError, MissingDependencyError

PNG = b"\x89PNG\r\n\x1a\n"
pytest.importorskip("matplotlib")


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == PNG and path.stat().st_size > 10_000


def test_bench_keeps_raw_times_and_plots(cli, tiny_onnx, tmp_path):
    from vla_export.plots import plot_bench

    out, png = tmp_path / "b.json", tmp_path / "b.png"
    r = cli(tiny_onnx, "-b", "onnxrt:cpu", "--window", "4", "--warmup", "1", "--iters", "4", "--device-peak", "agx-orin-64gb",
            "--json", out, "--plot", png, app="bench")
    assert r.exit_code == 0, r
    modes = json.loads(out.read_text())["results"][0]["modes"]
    assert len(modes["compute"]["samples_ms"]) == 4 and len(modes["e2e"]["samples_ms"]) == 4
    assert min(modes["compute"]["samples_ms"]) == pytest.approx(modes["compute"]["latency"]["min_ms"], rel=1e-3)
    assert set(modes["e2e"]["phase_samples_ms"]) == {"preprocess", "stage", "execute+sync", "to_host"}
    assert _is_png(png)
    # redrawn later from the saved JSON alone
    assert _is_png(plot_bench(json.loads(out.read_text()), tmp_path / "again.png"))
    report = json.loads(out.read_text())
    for m in report["results"][0]["modes"].values():
        m["samples_ms"] = []
    with pytest.raises(ConfigError, match="per-iteration times"):
        plot_bench(report, tmp_path / "none.png")


def test_replay_plot(cli, tiny_ckpt, tiny_split, tmp_path):
    from vla_export.data.episodes import write_synthetic_episodes

    (episode,) = write_synthetic_episodes(tmp_path / "ep", count=1, frames=6, frame_hw=(48, 64))
    r = cli("replay", tiny_ckpt, tiny_split.manifest_path, episode, "--plot", tmp_path / "replay.png")
    assert r.exit_code == 0, r
    assert _is_png(tmp_path / "replay.png")


def test_wrong_suffix_and_missing_matplotlib(tmp_path, monkeypatch):
    from vla_export.plots import plot_replay

    report = {"atol": 1e-4, "passed": True, "steps": [{"index": 0, "action": [0.1, 0.2], "reference": [0.1, 0.2], "max_abs_err": 0.0}]}
    with pytest.raises(ConfigError, match=".png"):
        plot_replay(report, tmp_path / "x.jpg")
    assert not (tmp_path / "x.jpg").exists()
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingDependencyError, match=r"vla-export\[plot\]"):
        plot_replay(report, tmp_path / "x.png")
