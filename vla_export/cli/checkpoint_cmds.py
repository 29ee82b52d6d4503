"""``vla-export init``, the options shared by commands that load a checkpoint, and the checkpoint part of ``inspect``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

import typer

from vla_export import schemas
from vla_export.cli.common import console, err_console, write_json, wrote
from vla_export.cli.render import fmt_bytes, render_components
from vla_export.data.fit import FitOptions, FitResult, fit_policy
from vla_export.errors import ConfigError, VlaExportError
from vla_export.models.resolve import LoadOptions
from vla_export.cli import checks


def init(
    output: Path = typer.Option(..., "-o", "--output", help="Checkpoint to write (Mobile VLA training format)."),
    preset: str = typer.Option("tiny", "--preset", help="Architecture preset: tiny, tiny-kosmos, small, mobile-vla, mobile-vla-kosmos."),
    seed: int = typer.Option(0, "--seed", help="Random seed for the weights (and, with --fit, for the order of the training windows)."),
    fit: Optional[list[Path]] = typer.Option(None, "--fit", help="Train the policy on these recorded episodes (HDF5 files or folders of them)."),
    steps: Optional[int] = typer.Option(None, "--steps", help=f"Optimizer steps for --fit (default {FitOptions.steps})."),
    val: Optional[list[Path]] = typer.Option(None, "--val", help="Held-out episodes for --fit: the checkpoint's val_mae is measured on them."),
) -> None:
    """Write a policy checkpoint: randomly initialised, or with --fit trained on recorded episodes (CPU, seeded)."""
    from vla_export.models.config import get_preset
    from vla_export.models.loader import init_policy, save_training_checkpoint

    cfg = get_preset(preset)
    if not fit:
        if steps is not None or val:
            raise ConfigError(f"{'--steps' if steps is not None else '--val'} only acts with --fit EPISODES (a random policy is not trained)")
        checks.output_file(output)
        policy = init_policy(cfg, seed=seed)
        n = sum(p.numel() for p in policy.parameters())
        save_training_checkpoint(policy, output)
        console.print(f"wrote {output} (preset {preset}, {n:,} parameters, {output.stat().st_size / 1e6:.1f} MB)")
        return
    if preset not in FITTABLE:
        raise ConfigError(f"--fit trains on CPU and is for the {', '.join(FITTABLE[:-1])} and {FITTABLE[-1]} presets; {preset} "
                          f"({'1.8B' if preset.startswith('mobile-vla') else 'another size'}) is not fitted here")
    options = FitOptions(seed=seed) if steps is None else FitOptions(steps=steps, seed=seed)
    checks.output_file(output)
    result = fit_policy(cfg, fit, options, val_episodes=val or None)
    args = argparse.Namespace(data_path=" ".join(map(str, fit)), batch_size=options.batch, num_epochs=result.epochs,
                              output_dir=str(output.parent), save_interval=result.epochs)
    save_training_checkpoint(result.policy, output, epoch=result.epochs, val_mae=result.val_mae, args=args,
                             extra={"fit": result.record()})
    render_fit(result)
    console.print(f"wrote {output} (preset {preset}, fitted, val_mae {result.val_mae:.4f}, {output.stat().st_size / 1e6:.1f} MB)")


#: Presets small enough to fit on a CPU in seconds to minutes.
FITTABLE = ("tiny", "tiny-kosmos", "small")


def render_fit(r: FitResult) -> None:
    o = r.options
    console.print(f"fitted {r.config.name} in {r.seconds:.1f} s: {o.steps} steps of {o.batch} windows, seed {o.seed}, lr {o.lr:g}, "
                  f"{o.threads} thread(s); loss {r.losses[0]:.4f} -> {r.losses[-1]:.4f}", markup=False)
    rows = [("fit episodes", r.train, r.untrained_train)] + ([("held-out (--val)", r.val, r.untrained_val)] if r.val else [])
    for label, acc, untrained in rows:
        console.print(f"  {label}: {acc.windows} windows, action MAE {acc.mae:.4f} (untrained {untrained.mae:.4f}, "
                      f"{acc.mae / max(untrained.mae, 1e-12):.2f}x), spread across windows {acc.spread:.3f} "
                      f"(untrained {untrained.spread:.3f})", markup=False)
    if not r.val:
        console.print("  val_mae is the MAE on the fit episodes: no held-out episodes were given (--val)", markup=False)


def render_inspect(report: dict[str, Any]) -> None:
    console.print(f"[bold]{report['path']}[/]  {fmt_bytes(report['file_size'])}  format={report['format']}  layout={report['layout']}")
    if report["metadata"]:
        meta = ", ".join(f"{k}={v}" for k, v in report["metadata"].items())
        console.print(f"training metadata: {meta}", markup=False)
    if report.get("key_layout"):
        kl = report["key_layout"]
        renames = f" (renames: {' '.join(kl['renames'])})" if kl["renames"] else ""
        console.print(f"key layout: {kl['description']}{renames}", markup=False)
    render_components("parameters by component", report["components"], report["component_bytes"], report["total_params"], report["total_bytes"])
    dtypes = ", ".join(f"{k}: {v:,}" for k, v in report["dtypes"].items())
    console.print(f"dtypes: {dtypes}; optimizer state: {fmt_bytes(report['optimizer_state_bytes'])}")
    if report.get("params_note"):
        console.print(f"parameters: {report['params_note']}", markup=False)
    if report["config"]:
        c = report["config"]
        clip = c["clip_vision"]
        heads = "/".join(str(t["num_heads"]) for t in (c["kosmos_vision"], c["kosmos_text"], clip) if t)
        console.print(
            f"config ({report.get('config_source')}; preset structure: {report['matched_preset'] or 'none'}): "
            f"Kosmos-2 vision {c['kosmos_vision']['hidden_size']}x{c['kosmos_vision']['num_layers']}, "
            f"text {c['kosmos_text']['embed_dim']}x{c['kosmos_text']['num_layers']} vocab {c['kosmos_text']['vocab_size']}, "
            f"CLIP {str(clip['hidden_size']) + 'x' + str(clip['num_layers']) if clip else 'none'}, heads {heads}, "
            f"LSTM {c['lstm_hidden']}x{c['lstm_layers']}, head {c['head_hidden']}, action_dim {c['action_dim']}, "
            f"tanh {c['head_tanh']}, pooling {c['pooling']}, window {c['window']}, image {c['kosmos_vision']['image_size']}",
            markup=False,
        )
    for f in report["assumptions"]:
        style = "yellow" if f["warn"] else "dim" if f["basis"] == "derived" else None
        note = f"  -> unconfirmed; confirm or correct with {f['confirm_with']}" if f["warn"] else ""
        console.print(f"  {f['basis']}: {f['field']} = {_value(f['value'])} ({f['source']}){note}", style=style, markup=False)
    if report["config"] and not report["assumptions"]:
        console.print(f"  nothing assumed: the config was {report['config_source']}", markup=False)
    if "load" in report:
        ld = report["load"]
        ratio = ld["peak_rss_bytes"] / max(ld["weights_bytes"], 1)
        console.print(f"full load (all weights read): {ld['seconds']:.2f} s, peak RSS {fmt_bytes(ld['peak_rss_bytes'])} ({ratio:.2f}x the weights)")
    verdict = "[green]loadable (strict)[/]" if report["loadable"] else "[red]NOT loadable[/]"
    bad = report.get("nonfinite") or {}
    if bad:
        per = ", ".join(f"{comp} {n:,}" for comp, n in bad.items())
        verdict += f", [red]but {sum(bad.values()):,} non-finite weights (NaN/Inf): {per}[/]"
    console.print(f"verdict: {verdict}")


def _value(v: Any) -> str:
    import json

    return v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))


def inspect_checkpoint_cmd(checkpoint: Path, *, json_path: Optional[Path], save_config: Optional[Path], load: LoadOptions, full_load: bool) -> None:
    """``vla-export inspect CHECKPOINT``: sizes per component, training metadata, the key layout, the
    resolved config (every assumption listed) and the strict-load verdict."""
    from vla_export.models.inspect import inspect_checkpoint

    checks.input_file(checkpoint, "checkpoint")
    checks.output_file(json_path, save_config)
    report = inspect_checkpoint(checkpoint, options=load, load=full_load)
    render_inspect(report)
    if json_path:
        write_json(json_path, report, schemas.INSPECT)
        wrote(json_path)
    if not report["loadable"]:
        reason = report["reason"].removeprefix(f"{report['path']}: ")  # layout errors already name the file
        raise VlaExportError(f"{checkpoint}: cannot be loaded as a policy: {reason}")
    if report["nonfinite"]:
        raise VlaExportError(f"{checkpoint}: {sum(report['nonfinite'].values()):,} non-finite weights (NaN/Inf); "
                             "exports of it are refused")
    for line in report["warnings"]:
        err_console.print(f"warning: {line}", style="yellow", markup=False)
    if save_config:
        write_json(save_config, report["record"])
        console.print(f"wrote {save_config}: pass it as --config to every command to load exactly this model")
