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
    with pytest.raises(MissingDependencyError, match=r"pip install -e '[^']+\[plot\]'"):
        plot_replay(report, tmp_path / "x.png")


def _bench_report(p50s, floors, samples):
    """A saved bench report of one mode per row (what vla-bench's JSON holds), for drawing only."""
    rows = []
    for i, (p50, floor, ms) in enumerate(zip(p50s, floors, samples)):
        rows.append({"label": f"row{i}", "backend": "torch", "modes": {"e2e": {
            "samples_ms": ms, "latency": {"p50_ms": p50}, "floor": {"floor_ms": floor},
            "phases_p50_ms": {"preprocess": 0.1 * p50, "stage": 0.01 * p50, "execute+sync": 0.88 * p50, "to_host": 0.01 * p50}}}})
    return {"settings": {"batch": 1, "window": 4}, "results": rows}


def test_bench_figure_shared_floors_ticks_bars_and_legend_numbers():
    """Rows sharing a floor get one dotted line naming them; no minor tick labels; numbers written plainly; the
    phase bars are per-row shares with their milliseconds written on, so one slow row squashes none."""
    import matplotlib.pyplot as plt

    from vla_export.plots import bench_figure, fmt_ms

    assert [fmt_ms(x) for x in (1194.3, 11.7, 4.15, 0.48)] == ["1,194", "11.7", "4.15", "0.480"]
    report = _bench_report([1194.3, 11.7, 12.1], [0.876, 0.876, 0.219], [[1100.0, 1194.3, 1300.0], [11.0, 11.7, 12.5], [11.9, 12.1, 12.4]])
    fig = bench_figure(report)
    try:
        ax, bx = fig.axes[:2]
        floors = [line for line in ax.get_lines() if line.get_linestyle() == ":" and len(set(line.get_xdata())) == 1]
        assert sorted(round(line.get_xdata()[0], 3) for line in floors) == [0.219, 0.876]  # two floors, not three lines
        notes = sorted(t.get_text() for t in ax.texts)
        assert notes == ["floor 0.219 ms: row2", "floor 0.876 ms: row0, row1"]
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert "row0 e2e: p50 1,194 ms" in legend and not any("e+" in t for t in legend)
        fig.canvas.draw()
        assert all(not t.get_text() for t in ax.xaxis.get_minorticklabels())
        labels = [t.get_text() for t in ax.xaxis.get_majorticklabels() if t.get_text()]
        assert labels and not any("×" in t or "^" in t for t in labels)
        widths = sorted({round(sum(p.get_width() for p in bx.patches if abs(p.get_y() + p.get_height() / 2 - y) < 1e-6), 6)
                         for y in {p.get_y() + p.get_height() / 2 for p in bx.patches}})
        assert widths == [100.0]  # every row normalised to its own total
        texts = {t.get_text() for t in bx.texts}
        assert {"1,194 ms", "11.7 ms", "12.1 ms"} <= texts and "1,051" in texts  # totals and the execute+sync share of row0
        assert fig._suptitle is None  # nothing marked contended
    finally:
        plt.close(fig)
    # A narrow range (300-420 ms) still gets plain, non-overlapping labels.
    narrow = _bench_report([350.0], [290.0], [[300.0, 350.0, 420.0]])
    fig = bench_figure(narrow)
    try:
        fig.canvas.draw()
        ax = fig.axes[0]
        assert all(not t.get_text() for t in ax.xaxis.get_minorticklabels())
        shown = [t for t in ax.xaxis.get_majorticklabels() if t.get_text() and ax.get_xlim()[0] <= t.get_position()[0] <= ax.get_xlim()[1]]
        assert len(shown) >= 2
        boxes = sorted((t.get_window_extent() for t in shown), key=lambda b: b.x0)
        assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:]))  # no two labels overlap
    finally:
        plt.close(fig)


def test_locate_figure_draws_the_rule_applied_at_each_point():
    """The tolerance drawn is (atol + rtol * max|ref|) / max|ref| per point, not rtol: a point with a small
    reference gets a high bar (its atol dominates)."""
    import matplotlib.pyplot as plt

    from vla_export.plots import locate_figure

    points = [{"module": m, "rel_err": r, "cosine": 0.999, "ref_max_abs": ref, "added": added}
              for m, r, ref, added in (("a", 0.1, 4.0, {"rel_err": 0.02}), ("b", 0.15, 0.002, {"rel_err": 0.3}), ("c", 0.2, 2.0, None))]
    report = {"points": points, "tolerance": {"atol": 0.05, "rtol": 0.05, "min_cosine": 0.99}, "precision": "int8",
              "first_over": "a", "top_adder": "b", "artifact": "x.int8.onnx", "level": "boundaries", "samples": 2}
    fig = locate_figure(report)
    try:
        ax = fig.axes[0]
        rule = next(c for c in ax.collections if "tolerance at each point" in c.get_label())
        levels = [seg[0][1] for seg in rule.get_segments()]
        assert levels == pytest.approx([0.05 / 4.0 + 0.05, 0.05 / 0.002 + 0.05, 0.05 / 2.0 + 0.05])
        assert not any(abs(line.get_ydata()[0] - 0.05) < 1e-12 and len(set(line.get_ydata())) == 1 for line in ax.get_lines())
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert "adds the most error: b" in legend and any("adds alone" in t for t in legend)
    finally:
        plt.close(fig)
