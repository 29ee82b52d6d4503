"""``vla-export init``: a checkpoint with random (or, with --fit, fitted) weights in the Mobile VLA training format."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

import typer

from vla_export.cli.common import console
from vla_export.data.fit import FitOptions, FitResult, fit_policy
from vla_export.errors import ConfigError
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
