"""``vla-export parity --locate``: the per-layer error curve, rendered (the work is vla_export.verify.locate)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from vla_export.cli.common import console


def render_locate(r: dict[str, Any]) -> None:
    tol = r["tolerance"]
    ranked = r.get("ranking_by_added_error") or []
    rank = {m: i for i, m in enumerate(ranked, 1)}
    table = Table(title=f"where does it diverge? {r['level']}, {r['samples']} samples, {r['precision']} "
                        f"(over: max abs > {tol['atol']:g} + {tol['rtol']:g} x max|ref|, or cosine < {tol['min_cosine']:g})")
    columns = ["#", "module", "component", "max abs", "max |ref|", "relative", "cosine", *(("adds alone", "of tol", "rank") if ranked else ()), ""]
    for col in columns:
        table.add_column(col, justify="left" if col in ("module", "component", "") else "right", no_wrap=True)
    first = r["first_over"]
    for i, p in enumerate(r["points"]):
        flag = "[red]FIRST OVER[/]" if p["module"] == first else "[red]over[/]" if p["over"] else ""
        added = p.get("added")
        extra = () if not ranked else (
            (f"{added['rel_err']:.2e}", f"{added['of_tolerance']:.2f}x",
             f"[bold]{rank[p['module']]}[/]" if rank[p["module"]] == 1 else str(rank[p["module"]]))
            if added else ("-", "-", "-"))
        table.add_row(str(i), p["module"], p["component"], f"{p['max_abs']:.2e}", f"{p['ref_max_abs']:.3g}", f"{p['rel_err']:.2e}",
                      f"{p['cosine']:.6f}", *extra, flag)
    # Piped into a log, Rich would squeeze the module names out of an 80-column table: give it room there.
    (console if console.is_terminal else Console(file=console.file, width=max(console.width, 160), highlight=False)).print(table)
    for module, why in r["skipped"].items():
        console.print(f"  not compared: {module}: {why}", style="dim", markup=False)
    if r.get("added_note"):
        console.print(f"  {'adds alone' if ranked else 'note'}: {r['added_note']}" + ("; adds alone = its relative error (max abs / max|ref|), "
                      "of tol = its max abs over its tolerance atol + rtol x max|ref|, ranked by that" if ranked else ""),
                      style="dim" if ranked else "yellow", markup=False)
    style = "red" if first or ranked else "green"
    console.print(f"locate: [{style}]{r['summary']}[/]")
