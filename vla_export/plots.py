"""PNG pictures of results people would rather look at than read: latency, replay drift, per-layer error.

Every function takes the result's JSON form (``to_dict()``, or the JSON file loaded back), so a
picture can be redrawn later from a saved report without rerunning anything. matplotlib is an
optional extra (``pip install 'vla-export[plot]'``), imported on first use with the headless Agg
backend; the file is written atomically.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vla_export.errors import ConfigError
from vla_export.fileio import atomic_write
from vla_export.lazy import lazy_import

INSTALL = "{extra:plot}"  # expanded by lazy_import when matplotlib is missing


def _pyplot():
    """matplotlib.pyplot on the headless Agg backend (no display needed)."""
    mpl = lazy_import("matplotlib", purpose="drawing plots", install=INSTALL)
    mpl.use("Agg", force=True)
    return lazy_import("matplotlib.pyplot", purpose="drawing plots", install=INSTALL)


def _png(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"{path}: plots are written as .png")
    return path


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)
    return path


# --- vla-bench ----------------------------------------------------------------------------------

def fmt_ms(x: float) -> str:
    """Milliseconds as people write them: 1,194 / 11.7 / 4.15 / 0.480 (three significant digits, no exponent)."""
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 1:
        return f"{x:.2f}"
    if x >= 0.1:
        return f"{x:.3f}"
    return f"{x:.3g}" if x >= 1e-3 else f"{x:.1e}"


def _plain_log_axis(axis, lo: float, hi: float) -> None:
    """Log axis labelled with plain numbers at 1, 2, 5 x 10^k (over two decades or less, else at the decades
    only) and unlabelled minor ticks: no overlapping labels ("3x10^2 4x10^2") at any range."""
    ticker = lazy_import("matplotlib.ticker", purpose="drawing plots", install=INSTALL)
    decades = np.log10(max(hi, 1e-12) / max(lo, 1e-12))
    subs = (1.0, 2.0, 5.0) if decades <= 3.0 else (1.0,)
    axis.set_major_locator(ticker.LogLocator(base=10, subs=subs))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    axis.set_minor_locator(ticker.LogLocator(base=10, subs=tuple(range(1, 10))))
    axis.set_minor_formatter(ticker.NullFormatter())


def _row_label(r: Mapping[str, Any]) -> str:
    return str(r.get("label", r.get("backend")))


MODE_STYLES = {"compute": "-", "e2e": "--"}


def plot_bench(report: Mapping[str, Any], path: str | Path) -> Path:
    """Latency CDF per row (colour) and mode (line style) with the physical floors, and where the e2e step goes.

    Rows sharing a floor share one dotted line, labelled with the rows it belongs to. Timings the
    machine was contended during are marked (label, line, title). The right panel gives each row's e2e
    phases as shares of its own total (so one slow row squashes none) with the milliseconds written on.
    Needs the raw per-iteration times (``samples_ms``) that ``vla-bench`` keeps in its JSON.
    """
    path = _png(path)
    return _save(bench_figure(report), path)


def bench_figure(report: Mapping[str, Any]):
    """The figure :func:`plot_bench` saves (a matplotlib Figure; close it with ``pyplot.close``)."""
    plt = _pyplot()
    rows = report.get("results", [])
    curves = [(i, r, m, mode) for i, r in enumerate(rows) for mode, m in r.get("modes", {}).items() if m.get("samples_ms")]
    if not curves:
        raise ConfigError("the benchmark report holds no per-iteration times (samples_ms): rerun vla-bench to plot it")
    phased = [(r, r["modes"]["e2e"]["phases_p50_ms"]) for r in rows if r.get("modes", {}).get("e2e", {}).get("phases_p50_ms")]
    fig, axes = plt.subplots(1, 2 if phased else 1, figsize=(14 if phased else 8, 5.5), squeeze=False,
                             gridspec_kw={"width_ratios": [1.3, 1]} if phased else None)
    ax = axes[0][0]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    floors: dict[str, tuple[float, list[str]]] = {}
    contended = 0
    for i, r, m, mode in curves:
        ms = np.sort(np.asarray(m["samples_ms"], dtype=float))
        busy = (m.get("contention") or {}).get("contended")
        contended += bool(busy)
        label = f"{_row_label(r)} {mode}: p50 {fmt_ms(m['latency']['p50_ms'])} ms"
        if busy:
            label += f" [CONTENDED: others {m['contention']['others_cpu_cores']:.2f} cores]"
        ax.step(ms, np.arange(1, ms.size + 1) / ms.size, where="post", color=colors[i % len(colors)],
                linestyle=MODE_STYLES.get(mode, "-."), alpha=0.55 if busy else 1.0, label=label)
        floor = (m.get("floor") or {}).get("floor_ms")
        if floor:
            key = f"{floor:.4g}"
            name = _row_label(r)
            entry = floors.setdefault(key, (float(floor), []))
            if name not in entry[1]:
                entry[1].append(name)
    for floor, names in floors.values():
        ax.axvline(floor, color="0.35", linestyle=":", linewidth=1.5)
        ax.annotate(f"floor {fmt_ms(floor)} ms: " + ", ".join(names), xy=(floor, 0.02), xycoords=("data", "axes fraction"),
                    rotation=90, va="bottom", ha="right", fontsize=7, color="0.25")
    if floors:
        ax.plot([], [], color="0.35", linestyle=":", label="physical floor (dotted; the rows it belongs to written beside it)")
    ax.set_xscale("log")
    _plain_log_axis(ax.xaxis, *ax.get_xlim())
    ax.set_xlabel("latency per inference (ms, log scale)")
    ax.set_ylabel("fraction of iterations (CDF)")
    s = report.get("settings", {})
    title = f"latency distribution, batch {s.get('batch', '?')}, window {s.get('window', '?')} (solid: compute, dashed: e2e)"
    ax.set_title(title, fontsize=10)
    if contended:
        worst = max((m.get("contention") or {}).get("others_cpu_cores", 0.0) for _, _, m, _ in curves)
        fig.suptitle(f"CONTENDED: other processes used up to {worst:.2f} CPU cores during {contended} of {len(curves)} timings "
                     "(faded lines): these latencies measure the machine's load too", color="firebrick", fontsize=10)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=1)
    if phased:
        _phase_bars(axes[0][1], phased, colors)
        fig.subplots_adjust(wspace=0.55)
    return fig


def _phase_bars(bx, phased, colors) -> None:
    """Each row's e2e phases as shares of its own step (horizontal, 100% each), milliseconds written on."""
    names = list(phased[0][1])
    y = np.arange(len(phased))[::-1]
    totals = np.array([sum(p.get(n, 0.0) for n in names) for _, p in phased])
    left = np.zeros(len(phased))
    for k, name in enumerate(names):
        ms = np.array([p.get(name, 0.0) for _, p in phased])
        share = np.divide(100 * ms, totals, out=np.zeros_like(ms), where=totals > 0)
        bx.barh(y, share, left=left, color=colors[k % len(colors)], label=name, height=0.6)
        for yi, l, w, v in zip(y, left, share, ms):
            if w >= 9:
                bx.text(l + w / 2, yi, fmt_ms(v), ha="center", va="center", fontsize=7.5, color="white")
        left += share
    for yi, total in zip(y, totals):
        bx.text(101.5, yi, f"{fmt_ms(total)} ms", ha="left", va="center", fontsize=8)
    bx.set_yticks(y, [_row_label(r) for r, _ in phased], fontsize=8)
    bx.set_xlim(0, 100)
    bx.set_xlabel("share of the row's own e2e step (%); milliseconds (p50 of each phase) on the bars, the step's total at the right",
                  fontsize=8)
    bx.set_title("end-to-end step: where the time goes (each row normalised)", fontsize=10)
    bx.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=len(names))
    bx.grid(True, axis="x", alpha=0.3)


# --- replay ---------------------------------------------------------------------------------------

def plot_replay(report: Mapping[str, Any], path: str | Path) -> Path:
    """Streaming vs full-window reference action per dimension over the episode, and the per-step error against atol."""
    path = _png(path)
    plt = _pyplot()
    steps = report.get("steps", [])
    if not steps:
        raise ConfigError("the replay report has no steps to plot")
    idx = np.array([s["index"] for s in steps])
    act = np.array([s["action"] for s in steps], dtype=float)
    ref = np.array([s["reference"] for s in steps], dtype=float)
    err = np.array([s["max_abs_err"] for s in steps], dtype=float)
    dims = act.shape[1]
    fig, axes = plt.subplots(dims + 1, 1, figsize=(9, 2.2 * (dims + 1)), sharex=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for d in range(dims):
        ax = axes[d]
        ax.plot(idx, ref[:, d], color=colors[0], linewidth=2.5, alpha=0.5, label="full-window reference (PyTorch)")
        ax.plot(idx, act[:, d], color=colors[1], linestyle="--", marker=".", label="streaming runtime")
        ax.set_ylabel(f"action[{d}]")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    ax = axes[-1]
    ax.semilogy(idx, np.maximum(err, 1e-12), marker="o", color=colors[2], label="max abs error per step (0 shown at 1e-12)")
    ax.axhline(report["atol"], color="red", linestyle="--", label=f"tolerance atol {report['atol']:g}")
    warm = int(report.get("policy", {}).get("window", 0) or 0)
    if warm > 1:
        ax.axvspan(idx[0] - 0.5, min(warm - 1, idx[-1]) - 0.5, color="gray", alpha=0.15, label="warm-up (window padded)")
    ax.set_xlabel("control step (frame index)")
    ax.set_ylabel("max abs error (action units, log)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ep = report.get("episode", {})
    verdict = "pass" if report.get("passed") else f"FAIL at steps {report.get('failed_steps')}"
    fig.suptitle(f"replay {ep.get('name', '')}: streaming vs full window ({verdict})", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


# --- parity --locate --------------------------------------------------------------------------------

def plot_locate(report: Mapping[str, Any], path: str | Path) -> Path:
    """The per-layer error curve: relative max abs error (log) and 1 - cosine per module, in execution order,
    against the rule actually applied at each point, ``(atol + rtol * max|ref|) / max|ref|``; on a quantized
    model also the error each point adds alone, and the point that adds the most."""
    path = _png(path)
    return _save(locate_figure(report), path)


def locate_figure(report: Mapping[str, Any]):
    """The figure :func:`plot_locate` saves (a matplotlib Figure; close it with ``pyplot.close``)."""
    plt = _pyplot()
    points = report.get("points", [])
    if not points:
        raise ConfigError("the locate report compared no layers: nothing to plot")
    x = np.arange(len(points))
    rel = np.array([p["rel_err"] for p in points], dtype=float)
    cos_gap = np.array([1.0 - p["cosine"] for p in points], dtype=float)
    floor = 1e-9
    width = max(8.0, 0.28 * len(points) + 3)
    fig, ax = plt.subplots(figsize=(width, 5.5))
    ax.semilogy(x, np.maximum(rel, floor), marker="o", label="max abs error / max |reference| (cumulative: inherits all before it)")
    ax.semilogy(x, np.maximum(cos_gap, floor), marker="s", linestyle="--", label="1 - cosine similarity (shown at 1e-9 when smaller)")
    added = [(i, p["added"]["rel_err"]) for i, p in enumerate(points) if p.get("added")]
    if added:
        ax.semilogy([i for i, _ in added], [max(v, floor) for _, v in added], marker="^", linestyle="none", markersize=9,
                    color="tab:green", label="error the point adds alone (its own INT8 nodes only, float input)")
    tol = report.get("tolerance", {})
    atol, rtol = float(tol.get("atol") or 0.0), float(tol.get("rtol") or 0.0)
    if atol or rtol:
        # The rule is max abs > atol + rtol * max|ref|: on this relative axis that is atol / max|ref| + rtol, per point.
        ref = np.array([max(p["ref_max_abs"], 1e-12) for p in points], dtype=float)
        ax.hlines((atol + rtol * ref) / ref, x - 0.42, x + 0.42, color="red", linestyle=":", linewidth=1.8,
                    label=f"tolerance at each point: (atol + rtol·max|ref|) / max|ref|, atol {atol:g}, rtol {rtol:g} ({report.get('precision')})")
    if tol.get("min_cosine") is not None:
        ax.axhline(max(1.0 - tol["min_cosine"], floor), color="purple", linestyle=":", label=f"1 - min cosine {1 - tol['min_cosine']:.2g}")
    first, top = report.get("first_over"), report.get("top_adder")
    for i, p in enumerate(points):
        if p["module"] == first:
            ax.axvline(i, color="red", alpha=0.25, linewidth=6, label=f"first over tolerance (cumulative): {first}")
        if p["module"] == top:
            ax.axvline(i, color="tab:green", alpha=0.3, linewidth=10, label=f"adds the most error: {top}")
    labels = [p["module"].replace("kosmos_model.", "k.").replace("text_model.model.", "text.").replace("vision_model.model.", "vision.")
              .replace("encoder.layers.", "L").replace("layers.", "L") for p in points]
    ax.set_xticks(x, labels, rotation=70, ha="right", fontsize=7 if len(points) > 30 else 8)
    ax.set_xlabel("module output, in execution order (k. = kosmos_model, L = layer)")
    ax.set_ylabel("error vs PyTorch (relative, log)")
    ax.set_title(f"where {Path(str(report.get('artifact', ''))).name} diverges from PyTorch ({report.get('level')}, {report.get('samples')} samples)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig
