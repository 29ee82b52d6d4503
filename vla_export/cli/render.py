"""Renderings shared by several commands: the completeness table and the parity table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from vla_export.artifacts.kinds import is_kind
from vla_export.choices import Precision
from vla_export.cli.common import console


def fmt_bytes(n: int) -> str:
    """1234567 -> '1.23 MB' (decimal units, as file sizes are usually given)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return str(n)


def render_completeness(c: dict[str, Any]) -> None:
    table = Table(title="completeness: parameters held by the graph")
    for col, justify in (("component", "left"), ("parameters", "right"), ("in graph", "right"), ("coverage", "right")):
        table.add_column(col, justify=justify)
    for name, comp in c["components"].items():
        table.add_row(name, f"{comp['parameters']:,}", f"{comp['in_graph']:,}", f"{100 * comp['coverage']:.2f}%")
    style = "green" if c["passed"] else "red"
    table.add_row("[bold]total[/]", f"[bold]{c['parameters']:,}[/]", f"[bold]{c['attributed']:,}[/]", f"[bold {style}]{100 * c['coverage']:.2f}%[/]")
    console.print(table)
    same = c["total_parameters"] - c["parameters"]
    console.print(
        f"parameters: the policy has {c['total_parameters']:,}; the table counts {c['parameters']:,} distinct "
        + (f"({same:,} are in tensors bitwise identical to another, e.g. fresh LayerNorm ones/zeros, which exporters store once)"
           if same else "(no tensor repeats another)"),
        markup=False,
    )
    console.print(
        f"graph tensors: {c['graph_elements']:,} elements ({c['by_name']:,} matched by name, {c['by_count']:,} by element count, "
        f"{c['unattributed']:,} unattributed, {c['buffers']:,} in buffers, {c['other_constants']:,} in integer constants)"
    )


def render_parity(p: dict[str, Any]) -> None:
    tol = p["tolerance"]
    ref_name, cand_name = (side["name"] + (f" ({Path(side['artifact']).name})" if side.get("artifact") else "")
                           for side in (p["reference"], p["candidate"]))
    table = Table(title=f"{p.get('label', 'parity')}: {ref_name} vs {cand_name}, {p['samples']} samples, {p['precision']} "
                        f"(atol {tol['atol']:g}, rtol {tol['rtol']:g}, cosine >= {tol['min_cosine']:g})")
    # Abs errors, then max rel, cosine and the reference's spread across samples (parity of a constant proves little).
    for col in ("output", "max abs", "mean abs", "p99 abs", "max rel", "cosine", "spread", "result"):
        table.add_column(col, justify="left" if col == "output" else "right", no_wrap=True)
    for o in p["outputs"].values():
        table.add_row(o["name"], f"{o['max_abs']:.2g}", f"{o['mean_abs']:.2g}", f"{o['p99_abs']:.2g}", f"{o['max_rel']:.2g}",
                      f"{o['cosine']:.6f}", f"{o['ref_std']:.2g}", "[green]pass[/]" if o["passed"] else "[red]FAIL[/]")
    console.print(table)
    for name, t in (p.get("output_tolerances") or {}).items():
        console.print(f"{name}: its own tolerance (atol {t['atol']:g}, rtol {t['rtol']:g}, cosine >= {t['min_cosine']:g})", markup=False)
    for o in p["outputs"].values():
        if o.get("failure"):
            console.print(f"{o['name']}: {o['failure']}", style="red", markup=False)
        elif o.get("rule") == "relative":
            console.print(f"{o['name']}: judged by relative error per row, max {o['max_row_rel']:.3g} "
                          f"(<= {tol['max_row_rel_error']:g}) and cosine; elementwise bounds apply to actions only", markup=False)
        elif not o["passed"]:
            console.print(f"{o['name']}: {o['violations']} elements out of tolerance", style="red")
    actions = p["outputs"].get("actions")
    if actions and actions["mae_per_dim"] is not None and not actions.get("failure"):
        dims = ", ".join(f"[{i}] MAE {m:.3g} sign {100 * s:.1f}%" for i, (m, s) in enumerate(zip(actions["mae_per_dim"], actions["sign_agreement"])))
        console.print(f"actions per dimension: {dims}")
    if p["candidate"].get("fallback"):
        console.print(f"warning: {p['candidate']['name']} fell back from {p['candidate']['requested_providers'][0]}", style="yellow")
    held_out = p["candidate"].get("held_out")
    if held_out:
        style = None if held_out["status"] in ("held out", "synthetic", "no calibration") else "yellow"
        console.print(f"{'warning: ' if style else ''}inputs vs calibration: {held_out['status']}: {held_out['note']}", style=style, markup=False)
    if p["candidate"].get("qdq_arithmetic") and p["precision"] == Precision.INT8:
        console.print(f"Q/DQ arithmetic: {p['candidate']['qdq_arithmetic']} (the verdict's)", markup=False)
    kernels = p.get("also_measured", {}).get("qdq_kernels")
    if kernels:
        a = kernels["outputs"]["actions"]
        console.print(f"also measured, not for the verdict: onnxruntime int8 kernels: actions max abs {a['max_abs']:.3g}, "
                      f"mean abs {a['mean_abs']:.3g}, cosine {a['cosine']:.6f} ({'pass' if kernels['passed'] else 'FAIL'})", markup=False)
    render_discrimination(p)
    console.print(f"parity: {'[green]pass[/]' if p['passed'] else '[red]FAIL[/]'}")


def render_next_steps(n: dict[str, Any]) -> None:
    """The commands to try after a failed INT8 check (vla_export.verify.next_steps), one per line, ready to run."""
    if not n["steps"]:
        return
    console.print(f"INT8 parity failed. Next steps (filled in from {n['artifact']}'s manifest):", style="bold", markup=False)
    for i, step in enumerate(n["steps"], 1):
        console.print(f"  {i}. {step['what']}:", markup=False)
        for command in step["commands"]:
            console.print(f"       {command}", markup=False, soft_wrap=True)
        if step.get("note"):
            console.print(f"       ({step['note']})", style="dim", markup=False)
    for missing in n["missing"]:
        console.print(f"  not in the manifest: {missing}", style="yellow", markup=False)


def render_discrimination(p: dict[str, Any]) -> None:
    """Say when the comparison cannot tell a broken artifact apart (and when the config check was not possible)."""
    check = p["candidate"].get("config_check")
    if check and check.startswith("not possible"):
        console.print(f"config check {check}", style="yellow", markup=False)
    if p.get("undiscriminating"):
        factor = p.get("discrimination", 10.0)
        what = ", ".join(p["undiscriminating"])
        own = p.get("output_tolerances") or {}
        bounds = ", ".join(f"{factor * own.get(n, p['tolerance'])['atol']:g}" for n in p["undiscriminating"])
        console.print(
            f"inconclusive: the reference's {what} vary across the {p['samples']} samples by less than {factor:g}x atol "
            f"({bounds}), so this comparison cannot tell a broken artifact apart; "
            + ("--strict makes this a failure" if p.get("strict") else "use more or more varied samples (--strict fails here)"),
            style="red" if p.get("strict") else "yellow", markup=False,
        )


def render_components(title: str, counts: dict[str, int], sizes: dict[str, int], total_count: int, total_bytes: int,
                      count_label: str = "parameters") -> None:
    """Counts and bytes per component, with their total: checkpoints and ONNX graphs alike."""
    table = Table(title=title)
    table.add_column("component")
    table.add_column(count_label, justify="right")
    table.add_column("bytes", justify="right")
    for name, count in counts.items():
        table.add_row(name, f"{count:,}", fmt_bytes(sizes[name]))
    table.add_row("[bold]total[/]", f"[bold]{total_count:,}[/]", f"[bold]{fmt_bytes(total_bytes)}[/]")
    console.print(table)



def render_saved(saved: dict[str, Any], artifact: Any, result: Any) -> None:
    """Where ``parity --save-*`` wrote, and the commands that read each file (Polygraphy, trtexec, vla-export)."""
    if saved.get("reference"):
        console.print(f"wrote {saved['reference']} (check on the device: vla-export parity {saved['reference']} ARTIFACT)", markup=False)
    if saved.get("inputs"):
        console.print(f"wrote {saved['inputs']} (Polygraphy input data, {result.samples} samples)", markup=False)
    if saved.get("outputs"):
        tols = {name: result.tolerance_of(name) for name in result.outputs}
        spelled = " ".join(f"--atol {n}:{t.atol:g} --rtol {n}:{t.rtol:g}" for n, t in tols.items())
        model = artifact if is_kind(str(artifact), "onnx") else "MODEL.onnx"
        console.print(f"wrote {saved['outputs']} (the reference's outputs as Polygraphy RunResults); check an ONNX with: "
                      f"polygraphy run {model} --onnxrt --load-inputs {saved['inputs']} --load-outputs {saved['outputs']} {spelled}; "
                      f"or: vla-export parity {saved['outputs']} ARTIFACT", markup=False)
    if saved.get("trtexec"):
        t = saved["trtexec"]
        console.print(f"wrote {t['folder']} (the first sample's inputs as raw .bin files); run an engine on them with: "
                      f"trtexec --loadEngine={artifact if is_kind(str(artifact), 'engine') else 'MODEL.engine'} {t['load_inputs']} {t['shapes']}", markup=False)


def render_layers(layers: dict[str, Any] | None) -> None:
    """The engine's layers by precision (TensorRT-RTX build log), one line each for all layers and the GEMMs."""
    if not layers:
        return
    fmt = lambda d: ", ".join(f"{n} {k}" for k, n in sorted(d.items(), key=lambda kv: -kv[1])) or "none"  # noqa: E731
    console.print(f"engine layers by precision ({layers['total']}): {fmt(layers['by_precision'])}", markup=False)
    console.print(f"  GEMM/convolution layers: {fmt(layers['gemm_by_precision'])}", markup=False)


def render_evaluate_discrimination(r: dict[str, Any], *, what: str = "artifact", strict_hint: bool = True) -> None:
    """Whether the windows can tell a broken (collapsed) model apart, per dimension (the honesty rule)."""
    disc = r["discrimination"]
    for name, dim in disc["dims"].items():
        if dim["status"] == "constant":
            console.print(f"note: {name}: {dim['why']}; left out of the verdict", style="yellow", markup=False)
    if disc["conclusive"]:
        found = "; ".join(f"{n}: {v['why']}" for n, v in disc["dims"].items() if v["status"] == "discriminating")
        console.print(f"conclusive: {found}", markup=False)
        return
    reasons = "; ".join(f"{n}: {v['why']}" for n, v in disc["dims"].items() if v["status"] == "undiscriminating") or "no action dimension varies"
    hint = ("; --strict makes this a failure" if r["strict"] else "; --strict fails here") if strict_hint else ""
    console.print(f"inconclusive: these episodes cannot tell a broken {what} apart ({reasons}); use more or more varied episodes, "
                  f"or a checkpoint that has learned them{hint}", style="red" if r["strict"] else "yellow", markup=False)
