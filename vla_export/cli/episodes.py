"""``vla-export episodes``: synthetic episodes in the recorded HDF5 format (vla_export.data.episodes)."""

from __future__ import annotations

from pathlib import Path

import typer

from vla_export.cli import checks
from vla_export.cli.common import console
from vla_export.cli.render import fmt_bytes
from vla_export.errors import ConfigError


def _size(text: str) -> tuple[int, int]:
    from vla_export.export.trt import parse_shape

    dims = parse_shape(text)
    if len(dims) != 2:
        raise ConfigError(f"--size takes HEIGHTxWIDTH, got {text!r}")
    return dims[0], dims[1]


def episodes(
    output: Path = typer.Option(Path("episodes"), "-o", "--output", help="Folder for the episode files."),
    count: int = typer.Option(4, "--count", help="Number of episodes (cycling through the scenarios)."),
    frames: int = typer.Option(18, "--frames", help="Frames per episode (the recorded episodes have 18)."),
    size: str = typer.Option("720x1280", "--size", help="Frame size HEIGHTxWIDTH (the robot's camera: 720x1280)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the scenes."),
) -> None:
    """Write synthetic episodes in the recorded HDF5 format (moving scenes, key-press actions)."""
    from vla_export.data.episodes import instruction_for, write_synthetic_episodes

    checks.at_least(1, count=count, frames=frames)
    checks.output_dir(output)
    paths = write_synthetic_episodes(output, count, seed=seed, frames=frames, frame_hw=_size(size))
    for p in paths:
        console.print(f"wrote {p} ({fmt_bytes(p.stat().st_size)}): \"{instruction_for(p.stem)}\"", markup=False)
