"""``vla-export calib``: a calibration set of recorded windows (vla_export.data.calibration)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vla_export import schemas
from vla_export.cli import checks
from vla_export.cli.common import console, write_json
from vla_export.cli.options import JsonOpt
from vla_export.cli.render import fmt_bytes
from vla_export.errors import ConfigError


def _calib_config(onnx: Optional[Path], preset: Optional[str], config: Optional[Path]):
    """The policy config a calibration set is made for: from the ONNX manifest, a preset or a config file."""
    from vla_export.models.config import get_preset, load_config

    if sum(x is not None for x in (onnx, preset, config)) != 1:
        raise ConfigError("give exactly one of --onnx MODEL.onnx, --preset NAME or --config FILE")
    if preset:
        return get_preset(preset), None
    if config:
        return load_config(config), None
    from vla_export.artifacts.manifest import read_manifest

    manifest = read_manifest(onnx, kind="onnx")
    if manifest.config is None:
        raise ConfigError(f"{onnx}: its manifest records no policy config; pass --preset or --config")
    return manifest.config, manifest.window


def calib(
    data: list[Path] = typer.Argument(..., help="Episode files (HDF5) or folders of them."),
    output: Path = typer.Option(Path("calibration/calib.npz"), "-o", "--output", help="Calibration set to write (.npz)."),
    onnx: Optional[Path] = typer.Option(None, "--onnx", help="The ONNX to calibrate: config and window from its manifest; the set is checked against its inputs."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Or a config preset."),
    config: Optional[Path] = typer.Option(None, "--config", help="Or a policy config JSON."),
    samples: int = typer.Option(32, "--samples", help="Number of windows to sample across the episodes."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed."),
    window: Optional[int] = typer.Option(None, "--window", help="Frames per sample (default: the ONNX's or the config's window)."),
    text_len: Optional[int] = typer.Option(None, "--text-len", help="Pad prompts to this length (default: the longest prompt)."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="Local Kosmos-2 tokenizer directory (needed for the full-size vocabulary)."),
    json_path: Optional[Path] = JsonOpt,
) -> None:
    """Sample N windows of recorded frames, preprocessed exactly as at run time, into a calibration set."""
    from vla_export.data.calibration import make_calibration_set
    from vla_export.data.tokenizer import tokenizer_for

    checks.at_least(1, samples=samples, window=window, text_len=text_len)
    checks.input_paths(data, "data")
    checks.input_file(onnx, "ONNX")
    checks.input_file(config, "config")
    checks.input_dir(tokenizer, "tokenizer")
    checks.output_file(output, json_path)
    cfg, onnx_window = _calib_config(onnx, preset, config)
    calib_set = make_calibration_set(
        data, cfg, output, count=samples, seed=seed, tokenizer=tokenizer_for(cfg, tokenizer),
        window=onnx_window if window is None else window, text_len=text_len,
    )
    if onnx is not None:
        from vla_export.artifacts.onnxfile import io_signature

        calib_set.check_inputs(io_signature(onnx)["inputs"], onnx)
    report = calib_set.to_dict()
    shapes = ", ".join(f"{k} {v}" for k, v in report["shapes"].items())
    console.print(f"wrote {output} ({fmt_bytes(output.stat().st_size)}): {len(calib_set)} samples from "
                  f"{len(report['episodes'])} episodes, tokenizer {report['tokenizer']}; per sample {shapes}", markup=False)
    if json_path:
        write_json(json_path, report, schemas.CALIB)
