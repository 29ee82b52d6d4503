"""``vla-export init`` and ``vla-export inspect``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from vla_export.cli import checks
from vla_export.cli.common import console, write_json
from vla_export.errors import VlaExportError

RenameOpt = typer.Option(None, "--rename", help="Rename key prefixes, OLD=NEW (repeatable), for checkpoints from other code bases.")
ConfigOpt = typer.Option(None, "--config", help="Policy config JSON; overrides inference from tensor shapes.")
TrustOpt = typer.Option(False, "--trust-checkpoint", help="Allow full unpickling (runs code from the file: only for files you trust).")


def policy_source_options(config: Optional[Path], rename: Optional[list[str]]):
    """Turn the shared --config/--rename options into API arguments."""
    from vla_export.models.checkpoint import parse_renames
    from vla_export.models.config import load_config

    checks.input_file(config, "config")
    return (load_config(config) if config else None), parse_renames(rename or [])


def init(
    output: Path = typer.Option(..., "-o", "--output", help="Checkpoint to write (Mobile VLA training format)."),
    preset: str = typer.Option("tiny", "--preset", help="Architecture preset: tiny, tiny-kosmos, small, mobile-vla, mobile-vla-kosmos."),
    seed: int = typer.Option(0, "--seed", help="Random seed for the weights."),
) -> None:
    """Write a randomly initialised policy checkpoint (the demo's default input and the tests' fixture)."""
    from vla_export.models.config import get_preset
    from vla_export.models.loader import init_policy, save_training_checkpoint

    cfg = get_preset(preset)
    checks.output_file(output)
    policy = init_policy(cfg, seed=seed)
    n = sum(p.numel() for p in policy.parameters())
    save_training_checkpoint(policy, output)
    console.print(f"wrote {output} (preset {preset}, {n:,} parameters, {output.stat().st_size / 1e6:.1f} MB)")


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return str(n)


def render_inspect(report: dict[str, Any]) -> None:
    console.print(f"[bold]{report['path']}[/]  {_fmt_bytes(report['file_size'])}  format={report['format']}  layout={report['layout']}")
    if report["metadata"]:
        meta = ", ".join(f"{k}={v}" for k, v in report["metadata"].items())
        console.print(f"training metadata: {meta}", markup=False)
    table = Table(title="parameters by component")
    table.add_column("component")
    table.add_column("parameters", justify="right")
    table.add_column("bytes", justify="right")
    for name, count in report["components"].items():
        table.add_row(name, f"{count:,}", _fmt_bytes(report["component_bytes"][name]))
    table.add_row("[bold]total[/]", f"[bold]{report['total_params']:,}[/]", f"[bold]{_fmt_bytes(report['total_bytes'])}[/]")
    console.print(table)
    dtypes = ", ".join(f"{k}: {v:,}" for k, v in report["dtypes"].items())
    console.print(f"dtypes: {dtypes}; optimizer state: {_fmt_bytes(report['optimizer_state_bytes'])}")
    if report["config"]:
        c = report["config"]
        clip = c["clip_vision"]
        console.print(
            f"config ({report.get('config_source')}; preset match: {report['matched_preset'] or 'none'}): "
            f"Kosmos-2 vision {c['kosmos_vision']['hidden_size']}x{c['kosmos_vision']['num_layers']}, "
            f"text {c['kosmos_text']['embed_dim']}x{c['kosmos_text']['num_layers']} vocab {c['kosmos_text']['vocab_size']}, "
            f"CLIP {str(clip['hidden_size']) + 'x' + str(clip['num_layers']) if clip else 'none'}, "
            f"LSTM {c['lstm_hidden']}x{c['lstm_layers']}, head {c['head_hidden']}, action_dim {c['action_dim']}",
            markup=False,
        )
    for note in report["assumptions"]:
        console.print(f"  assumed: {note}", style="yellow", markup=False)
    if "load" in report:
        ld = report["load"]
        ratio = ld["peak_rss_bytes"] / max(ld["weights_bytes"], 1)
        console.print(f"full load (all weights read): {ld['seconds']:.2f} s, peak RSS {_fmt_bytes(ld['peak_rss_bytes'])} ({ratio:.2f}x the weights)")
    verdict = "[green]loadable (strict)[/]" if report["loadable"] else "[red]NOT loadable[/]"
    bad = report.get("nonfinite") or {}
    if bad:
        per = ", ".join(f"{comp} {n:,}" for comp, n in bad.items())
        verdict += f", [red]but {sum(bad.values()):,} non-finite weights (NaN/Inf): {per}[/]"
    console.print(f"verdict: {verdict}")


def inspect(
    checkpoint: Path = typer.Argument(..., help="Checkpoint (.pt/.pth/.ckpt or .safetensors)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the report as JSON."),
    config: Optional[Path] = ConfigOpt,
    rename: Optional[list[str]] = RenameOpt,
    trust_checkpoint: bool = TrustOpt,
    load: bool = typer.Option(False, "--load", help="Also load the full policy; report load time and peak RSS."),
) -> None:
    """Sizes per component, training metadata, the inferred config and the strict-load verdict."""
    from vla_export.models.inspect import inspect_checkpoint

    checks.input_file(checkpoint, "checkpoint")
    checks.output_file(json_path)
    cfg, renames = policy_source_options(config, rename)
    report = inspect_checkpoint(checkpoint, config=cfg, renames=renames, trust=trust_checkpoint, load=load)
    render_inspect(report)
    if json_path:
        write_json(json_path, report)
        console.print(f"wrote {json_path}")
    if not report["loadable"]:
        raise VlaExportError(f"{checkpoint}: cannot be loaded as a policy: {report['reason']}")
    if report["nonfinite"]:
        raise VlaExportError(f"{checkpoint}: {sum(report['nonfinite'].values()):,} non-finite weights (NaN/Inf); "
                             "exports of it are refused")
