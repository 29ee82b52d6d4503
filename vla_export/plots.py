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

INSTALL = "`pip install 'vla-export[plot]'` (matplotlib)"


def _pyplot():
    """matplotlib.pyplot on the headless Agg backend (no display needed)."""
    mpl = lazy_import("matplotlib", purpose="drawing plots", install=INSTALL)
    mpl.use("Agg", force=True)
    return lazy_import("matplotlib.pyplot", purpose="drawing plots", install=INSTALL)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"{path}: plots are written as .png")
    plt = _pyplot()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)
    return path


# --- vla-bench ----------------------------------------------------------------------------------

def plot_bench(report: Mapping[str, Any], path: str | Path) -> Path:
    """Latency CDF per backend and mode with each row's physical floor, and the e2e phases (p50) as stacked bars.

    Needs the raw per-iteration times (``samples_ms``) that ``vla-bench`` keeps in its JSON.
    """
    plt = _pyplot()
    rows = report.get("results", [])
    curves = [(r, m, mode) for r in rows for mode, m in r.get("modes", {}).items() if m.get("samples_ms")]
    if not curves:
        raise ConfigError("the benchmark report holds no per-iteration times (samples_ms): rerun vla-bench to plot it")
    phased = [(r, r["modes"]["e2e"]["phases_p50_ms"]) for r in rows if r.get("modes", {}).get("e2e", {}).get("phases_p50_ms")]
    fig, axes = plt.subplots(1, 2 if phased else 1, figsize=(13 if phased else 8, 5), squeeze=False)
    ax = axes[0][0]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (r, m, mode) in enumerate(curves):
        ms = np.sort(np.asarray(m["samples_ms"], dtype=float))
        color = colors[i % len(colors)]
        label = f"{r.get('label', r.get('backend'))} {mode}: p50 {m['latency']['p50_ms']:.3g} ms"
        ax.step(ms, np.arange(1, ms.size + 1) / ms.size, where="post", color=color, label=label)
        floor = (m.get("floor") or {}).get("floor_ms")
        if floor:
            ax.axvline(floor, color=color, linestyle=":", linewidth=1.5)
    if any((m.get("floor") or {}).get("floor_ms") for _, m, _ in curves):
        ax.plot([], [], color="gray", linestyle=":", label="physical floor (dotted, same colour)")
    ax.set_xscale("log")
    ax.set_xlabel("latency per inference (ms, log scale)")
    ax.set_ylabel("fraction of iterations (CDF)")
    s = report.get("settings", {})
    ax.set_title(f"latency distribution, batch {s.get('batch', '?')}, window {s.get('window', '?')}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    if phased:
        bx = axes[0][1]
        names = list(phased[0][1])
        bottom = np.zeros(len(phased))
        for name in names:
            vals = np.array([p.get(name, 0.0) for _, p in phased])
            bx.bar(range(len(phased)), vals, bottom=bottom, label=name)
            bottom += vals
        bx.set_xticks(range(len(phased)), [r.get("label", r.get("backend")) for r, _ in phased], rotation=20, ha="right", fontsize=8)
        bx.set_ylabel("time per step (ms, median of each phase)")
        bx.set_title("end-to-end step: where the time goes")
        bx.legend(fontsize=8)
        bx.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


# --- replay ---------------------------------------------------------------------------------------

def plot_replay(report: Mapping[str, Any], path: str | Path) -> Path:
    """Streaming vs full-window reference action per dimension over the episode, and the per-step error against atol."""
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
    ax.semilogy(idx, np.maximum(err, 1e-12), marker="o", color=colors[2], label="max abs error per step")
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
    return _save(fig, path)


# --- parity --locate --------------------------------------------------------------------------------

def plot_locate(report: Mapping[str, Any], path: str | Path) -> Path:
    """The per-layer error curve: relative max abs error (log) and 1 - cosine per module, in execution order."""
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
    ax.semilogy(x, np.maximum(rel, floor), marker="o", label="max abs error / max |reference|")
    ax.semilogy(x, np.maximum(cos_gap, floor), marker="s", linestyle="--", label="1 - cosine similarity")
    tol = report.get("tolerance", {})
    if tol.get("rtol"):
        ax.axhline(tol["rtol"], color="red", linestyle=":", label=f"tolerance: rtol {tol['rtol']:g} ({report.get('precision')})")
    if tol.get("min_cosine") is not None:
        ax.axhline(max(1.0 - tol["min_cosine"], floor), color="purple", linestyle=":", label=f"1 - min cosine {1 - tol['min_cosine']:.2g}")
    first = report.get("first_over")
    for i, p in enumerate(points):
        if p["module"] == first:
            ax.axvline(i, color="red", alpha=0.3, linewidth=6, label=f"first over tolerance: {first}")
            break
    labels = [p["module"].replace("kosmos_model.", "k.").replace("text_model.model.", "text.").replace("vision_model.model.", "vision.")
              .replace("encoder.layers.", "L").replace("layers.", "L") for p in points]
    ax.set_xticks(x, labels, rotation=70, ha="right", fontsize=7 if len(points) > 30 else 8)
    ax.set_xlabel("module output, in execution order (k. = kosmos_model, L = layer)")
    ax.set_ylabel("error vs PyTorch (relative, log)")
    ax.set_title(f"where {Path(str(report.get('artifact', ''))).name} diverges from PyTorch ({report.get('level')}, {report.get('samples')} samples)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)
