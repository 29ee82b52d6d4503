"""``vla-export replay``: a thin layer over vla_export.runtime.replay (and vla_export.verify.reference for saved references)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from vla_export import schemas
from vla_export.artifacts.manifest import read_split
from vla_export.choices import ParityPrecision
from vla_export.cli import checks
from vla_export.cli.common import console, wrote
from vla_export.cli.junit import replay_cases, write_reports
from vla_export.cli.options import ReplayReportOptions, with_loading_options, with_option_groups
from vla_export.errors import ExitCode
from vla_export.models.resolve import LoadOptions


def _vec(values: list[float]) -> str:
    return " ".join(f"{v:+.4f}" for v in values)


def render_replay(r: dict[str, Any]) -> None:
    ep = r["episode"]
    table = Table(
        title=f"replay {ep.get('name', '?')} ({ep.get('num_frames', len(r['steps']))} frames, window {r['policy']['window']}): "
        f"{r['policy']['backbone']['name']} + {r['policy']['head']['name']} vs {r['reference']['name']} full window, atol {r['atol']:g}"
    )
    for col in ("step", "frames", "streaming action", "full-window action", "max abs err", "recorded", "step ms", "model ms"):
        table.add_column(col, justify="right" if col in ("step", "max abs err", "step ms", "model ms") else "left")
    for s in r["steps"]:
        ok = s["max_abs_err"] <= r["atol"]
        err = f"[{'green' if ok else 'red'}]{s['max_abs_err']:.2e}[/]"
        table.add_row(str(s["index"]), ",".join(map(str, s["window"])), _vec(s["action"]), _vec(s["reference"]), err,
                      _vec(s["recorded"]), f"{s['latency_ms']:.2f}", f"{s['model_ms']:.2f}")
    console.print(table)
    console.print(f"instruction: {ep.get('instruction')!r}; warm-up: {r['policy']['warmup']}; "
                  "step ms includes preprocessing the camera frame, model ms is backbone + head", markup=False)
    if r["mae_vs_recorded"] is not None:
        console.print(
            f"MAE vs the recorded actions (first {r['mae_dims']} dims, for information only): {r['mae_vs_recorded']:.4f}", markup=False
        )
    if not r.get("conclusive", True):
        console.print(
            f"inconclusive: the reference's actions vary across the {len(r['steps'])} steps by {r['spread']:.3g}, less than "
            f"{r['discrimination']:g}x atol ({r['discrimination'] * r['atol']:g}), so this replay cannot tell a broken runtime apart; "
            + ("--strict makes this a failure" if r.get("strict") else "replay a more varied episode or a fitted policy (--strict fails here)"),
            style="red" if r.get("strict") else "yellow", markup=False,
        )
    failed = f"FAIL at steps {r['failed_steps']}" if r["failed_steps"] else "FAIL (inconclusive, --strict)"
    verdict = "[green]pass[/]" if r["passed"] else f"[red]{failed}[/]"
    console.print(f"replay: {verdict}: max abs error {r['max_abs_err']:.3g} over {len(r['steps'])} steps; median step {r['median_step_ms']:.2f} ms")


@with_loading_options
@with_option_groups
def replay(
    checkpoint: Path = typer.Argument(..., help="The PyTorch policy checkpoint (the full-window reference), or a saved replay reference (.npz)."),
    artifacts: Path = typer.Argument(..., help="The split export: NAME.split.json, its prefix NAME, or its folder (`vla-export onnx --split`)."),
    episode: Path = typer.Argument(..., help="A recorded episode (HDF5, Mobile VLA format)."),
    backbone: Optional[Path] = typer.Option(None, "--backbone", help="Run this artifact as the backbone instead (e.g. NAME.backbone.engine)."),
    head: Optional[Path] = typer.Option(None, "--head", help="Run this artifact as the head instead (e.g. NAME.head.engine)."),
    precision: Optional[ParityPrecision] = typer.Option(None, "--precision", help="fp32, fp16 or int8: picks the default tolerance (default: from the parts' manifests)."),
    atol: Optional[float] = typer.Option(None, "--atol", help="Maximum absolute action error per step (overrides --precision)."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="Local Kosmos-2 tokenizer directory (the tiny and small presets have their own)."),
    text_len: Optional[int] = typer.Option(None, "--text-len", help="Pad the prompt to this many tokens (engines with a static text shape)."),
    providers: Optional[list[str]] = typer.Option(None, "--provider", help="onnxruntime execution provider for ONNX parts (repeatable)."),
    reports: ReplayReportOptions = ReplayReportOptions(),
    load: LoadOptions = LoadOptions(),
    save_reference: Optional[Path] = typer.Option(None, "--save-reference", help="Also save the per-step full-window PyTorch actions (+ config, checkpoint sha256) to this .npz, for `vla-export replay REF.npz ...` on the device."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Draw streaming vs reference actions per step and the per-step error against the tolerance into this PNG (needs matplotlib)."),
    strict: bool = typer.Option(False, "--strict", help="Fail (exit 1) when the reference's actions vary too little across the steps to tell a broken runtime apart; for CI."),
) -> None:
    """Stream an episode through the split runtime; at every step compare with the full-window PyTorch policy (or a saved reference). Exit 1 on a failed step."""
    json_path, junit = reports.json_path, reports.junit
    from vla_export.verify import reference as saved

    checks.input_file(checkpoint, "saved reference" if checkpoint.suffix == ".npz" else "checkpoint")
    read_split(artifacts)  # the record, its prefix or its folder: refused now, not after loading the policy
    checks.input_file(episode, "episode")
    checks.input_file(backbone, "backbone artifact")
    checks.input_file(head, "head artifact")
    checks.input_dir(tokenizer, "tokenizer")
    checks.output_file(json_path, junit, plot, save_reference)
    if save_reference is not None:
        saved.check_reference_path(save_reference)
    opts = dict(backbone=backbone, head=head, precision=precision, atol=atol, tokenizer_dir=tokenizer, text_len=text_len, providers=providers)
    if checkpoint.suffix == ".npz":  # a saved reference: no checkpoint, no torch
        if save_reference:
            from vla_export.errors import ConfigError

            raise ConfigError("--save-reference needs the checkpoint, not a saved reference")
        result = saved.replay_against_reference(checkpoint, artifacts, episode, **opts)
    else:
        from vla_export.models.loader import PolicyFromCheckpoint
        from vla_export.runtime.replay import replay_check

        loader = PolicyFromCheckpoint(checkpoint, options=load)
        if save_reference is None:
            result = replay_check(loader, artifacts, episode, **opts)
        else:
            result = saved.replay_with_saved_reference(loader, artifacts, episode, save_reference, **opts)
            console.print(f"wrote {save_reference} (check on the device: vla-export replay {save_reference} SPLIT EPISODE)", markup=False)
    result.strict = strict
    report = result.to_dict()
    render_replay(report)
    write_reports(report, json_path, junit, suite=f"replay {episode.name}", cases=replay_cases, classname="vla-export.replay",
                  schema=schemas.REPLAY)
    if plot:
        from vla_export.plots import plot_replay

        wrote(plot_replay(report, plot), "plot")
    if not result.passed:
        raise typer.Exit(ExitCode.CHECK_FAILED)
