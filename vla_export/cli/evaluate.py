"""``vla-export evaluate``: a thin layer over vla_export.verify.evaluate (accuracy on recorded episodes per artifact)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from vla_export.choices import EvaluateQdq
from vla_export.cli import checks
from vla_export.cli.common import console
from vla_export.cli.junit import evaluate_cases, write_reports
from vla_export.cli.render import render_evaluate_discrimination
from vla_export.cli.options import ReportOptions, with_loading_options, with_option_groups
from vla_export.errors import ArtifactError, ConfigError, ExitCode
from vla_export.models.resolve import LoadOptions


def _num(v: float | None, fmt: str = ".4f", signed: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:+{fmt}}" if signed else f"{v:{fmt}}"


def _pct(v: float | None, signed: bool = False) -> str:
    return "-" if v is None else (f"{100 * v:+.1f} pt" if signed else f"{100 * v:.1f}%")


def render_evaluate(r: dict[str, Any]) -> None:
    """One row per artifact and action dimension (then the overall figures), the checkpoint first."""
    d = r["data"]
    gate = r["gate"]["max_mae_increase"]
    table = Table(title=f"evaluate: {d['windows']} windows of {len(d['episodes'])} episodes against the recorded actions"
                        + (f" (divided by {d['action_scale']:g})" if d["action_scale"] != 1 else "")
                        + (f"; gate: MAE rise <= {gate:g} per dimension" if gate is not None else ""))
    for col in ("artifact", "precision", "dimension", "MAE", "change", "± se", "RMSE", "change", "sign agreement", "change", "result"):
        table.add_column(col, justify="left" if col in ("artifact", "precision", "dimension", "result") else "right", no_wrap=True)
    for a in r["artifacts"]:
        ch = a["change"] or {}
        over = set((a["gate"] or {}).get("over", []))
        for i, dim in enumerate([*r["dims"], "overall"]):
            sign = a["sign_agreement"].get(dim)
            pressed = a["pressed_windows"].get(dim)
            if a["nonfinite"]:
                result = f"[red]FAIL: {a['nonfinite']} non-finite[/]" if i == 0 else ""
            elif a["change"] is None:
                result = "reference" if i == 0 else ""
            elif a["gate"] is None:
                result = ""
            elif dim == "overall":
                result = "[green]pass[/]" if a["gate"]["passed"] else "[red]FAIL[/]"
            else:
                result = "[red]over[/]" if dim in over else "[green]within[/]"
            table.add_row(
                a["label"] if i == 0 else "", a["precision"] if i == 0 else "", dim,
                _num(a["mae"][dim]), _num(ch.get("mae", {}).get(dim), signed=True) if ch else "",
                _num(ch.get("mae_se", {}).get(dim), ".2g") if ch and dim != "overall" else "",
                _num(a["rmse"][dim]), _num(ch.get("rmse", {}).get(dim), signed=True) if ch else "",
                "" if dim == "overall" else (f"{_pct(sign)} of {pressed}" if sign is not None else "- (no press)"),
                _pct(ch.get("sign_agreement", {}).get(dim), signed=True) if ch and dim != "overall" else "",
                result,
            )
        table.add_section()
    console.print(table)
    console.print("MAE/RMSE in action units; change = artifact minus checkpoint on the same windows (± se: its standard error, "
                  "paired over windows); sign agreement over the windows where that key was pressed; overall MAE = mean over "
                  f"dimensions; windows: {d['windowing']}", markup=False)
    meta = r["checkpoint"].get("recorded_metadata") or {}
    if "val_mae" in meta:
        console.print(f"the checkpoint records val_mae {meta['val_mae']} (its training's own validation, not measured here)", markup=False)
    for a in r["artifacts"]:
        check = a.get("config_check") or ""
        if check.startswith("not possible"):
            console.print(f"{a['label']}: config check {check}", style="yellow", markup=False)
        if a["window"] != r["artifacts"][0]["window"]:
            console.print(f"{a['label']}: runs a window of {a['window']} frames, the checkpoint {r['artifacts'][0]['window']}", style="yellow", markup=False)
        close = (a["gate"] or {}).get("unresolved") or []
        if close:
            console.print(f"{a['label']}: the MAE rise of {', '.join(close)} lies within {r['discrimination']['z']:g} standard errors of the "
                          f"gate {gate:g}: these windows do not resolve which side of it the artifact is", style="yellow", markup=False)
    render_evaluate_discrimination(r)
    console.print(f"evaluate: {'[green]pass[/]' if r['passed'] else '[red]FAIL[/]'}")


@with_loading_options
@with_option_groups
def evaluate(
    checkpoint: Path = typer.Argument(..., help="The PyTorch policy checkpoint (the reference)."),
    artifacts: Optional[list[Path]] = typer.Argument(None, help="Artifacts to score beside it: .onnx (fp32, fp16, int8, int8w), "
                                                               "NAME.split.json (through the streaming runtime), .engine/.plan, or another checkpoint."),
    data: Optional[list[Path]] = typer.Option(None, "--data", help="Recorded episodes (HDF5 files or folders of them); every control step is a window."),
    max_mae_increase: Optional[float] = typer.Option(None, "--max-mae-increase", help="Gate: fail (exit 1) when an artifact's MAE of any action dimension rises more than this over the checkpoint's."),
    strict: bool = typer.Option(False, "--strict", help="Fail (exit 1) when the episodes cannot tell a broken artifact apart (see the README's honesty rule); for CI."),
    action_scale: Optional[float] = typer.Option(None, "--action-scale", help="Divide the recorded actions by this before comparing (default: the checkpoint's fit record's action_scale, else 1)."),
    qdq: EvaluateQdq = typer.Option(EvaluateQdq.EXACT, "--qdq", help="Q/DQ ONNX: exact (the quantization's own arithmetic, as parity) or kernels (onnxruntime's fused int8 CPU kernels)."),
    providers: Optional[list[str]] = typer.Option(None, "--provider", help="onnxruntime execution provider for ONNX artifacts and parts (repeatable)."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="Local Kosmos-2 tokenizer directory (the tiny and small presets have their own)."),
    reports: ReportOptions = ReportOptions(),
    load: LoadOptions = LoadOptions(),
) -> None:
    """Score the checkpoint and each artifact against the recorded actions of episodes, per action dimension; exit 1 on a failed gate."""
    json_path, junit = reports.json_path, reports.junit
    from vla_export.artifacts.kinds import detect_kind
    from vla_export.verify.evaluate import KINDS, evaluate as run_evaluate

    if not data:
        raise ConfigError("evaluate needs --data EPISODES (recorded HDF5 episodes; `vla-export episodes` writes synthetic ones)")
    if checkpoint.suffix.lower() == ".npz":
        raise ConfigError(f"{checkpoint}: evaluate runs the checkpoint itself over the episodes; a saved reference holds only parity's inputs")
    checks.input_file(checkpoint, "checkpoint")
    seen: set[str] = set()
    for a in artifacts or []:
        detect_kind(a, allowed=KINDS)
        checks.input_file(a, "artifact")
        key = str(a.resolve())
        if key in seen:
            raise ArtifactError(f"{a}: named twice")
        seen.add(key)
    checks.input_paths(data, "data")
    checks.input_dir(tokenizer, "tokenizer")
    checks.output_file(json_path, junit)
    from vla_export.models.loader import PolicyFromCheckpoint

    result = run_evaluate(
        PolicyFromCheckpoint(checkpoint, options=load), list(artifacts or []), list(data), max_mae_increase=max_mae_increase,
        strict=strict, action_scale=action_scale, qdq=qdq, providers=providers, tokenizer_dir=tokenizer,
    )
    report = result.to_dict()
    render_evaluate(report)
    write_reports(report, json_path, junit, suite=f"evaluate {checkpoint.name}", cases=evaluate_cases, classname="vla-export.evaluate")
    if not result.passed:
        raise typer.Exit(ExitCode.CHECK_FAILED)
