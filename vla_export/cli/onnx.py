"""``vla-export onnx``: a thin layer over vla_export.export.onnx (and vla_export.export.split for ``--split``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from vla_export import schemas
from vla_export.choices import Exporter
from vla_export.cli import checks
from vla_export.cli.common import console, write_json, wrote
from vla_export.cli.options import with_loading_options
from vla_export.cli.render import fmt_bytes, render_completeness, render_parity
from vla_export.models.resolve import LoadOptions


@with_loading_options
def onnx(
    checkpoint: Path = typer.Argument(..., help="Policy checkpoint (.pt/.pth/.ckpt or .safetensors)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="ONNX file to write (default engines/CHECKPOINT.onnx)."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset."),
    exporter: Exporter = typer.Option(Exporter.DYNAMO, "--exporter", help="dynamo (torch.onnx.export(dynamo=True)) or torchscript (fallback)."),
    window: Optional[int] = typer.Option(None, "--window", help="Frames per window T (default: the config's window)."),
    dynamic_window: bool = typer.Option(False, "--dynamic-window", help="Make T a dynamic axis too."),
    debug_outputs: bool = typer.Option(False, "--debug-outputs", help="Also output per-frame features [B, T, F] (parity compares them)."),
    external_data: Optional[bool] = typer.Option(None, "--external-data/--no-external-data", help="Weights in one NAME.onnx.data file (default: only over 2 GB)."),
    simplify: bool = typer.Option(False, "--simplify", help="Simplify with onnxslim, then re-check parity."),
    optimize: bool = typer.Option(True, "--optimize/--no-optimize", help="Run the dynamo exporter's graph optimiser."),
    ort_check: bool = typer.Option(True, "--ort-check/--no-ort-check", help="Run ONNX Runtime at batch 1 and 3 and compare with PyTorch."),
    samples: int = typer.Option(2, "--samples", help="Parity samples per batch size in the ORT check."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the export report as JSON."),
    split: bool = typer.Option(False, "--split", help="Streaming parts instead: NAME.backbone.onnx (one frame -> feature), NAME.head.onnx (window of features -> action), NAME.split.json."),
    load: LoadOptions = LoadOptions(),
) -> None:
    """Export the whole policy to ONNX, prove the graph holds all its weights, check it and record a manifest."""
    from vla_export.export.onnx import OnnxExportOptions, OnnxFromPolicy, check_opset, check_target
    from vla_export.models.loader import PolicyFromCheckpoint

    checks.at_least(1, window=window, samples=samples)
    checks.input_file(checkpoint, "checkpoint")
    output = output or Path("engines") / f"{checkpoint.stem}.onnx"
    if split:
        from vla_export.export.split import split_paths

        check_opset(opset, exporter)
        checks.output_file(json_path, *split_paths(output).values())
    else:
        checks.artifact_output(output, json_path)
        check_target(output, opset, exporter)
    if split:
        from vla_export.errors import ConfigError
        from vla_export.export.split import SplitOptions, export_split

        unsupported = {"--dynamic-window": dynamic_window, "--debug-outputs": debug_outputs, "--simplify": simplify, "--no-ort-check": not ort_check}
        given = [flag for flag, on in unsupported.items() if on]
        if given:
            raise ConfigError(f"--split does not take {', '.join(given)} (each part is always checked against PyTorch)")
        split_options = SplitOptions(opset=opset, exporter=exporter, window=window, external_data=external_data, optimize=optimize)
        split_result = export_split(PolicyFromCheckpoint(checkpoint, options=load)(), output, split_options)
        split_report = split_result.to_dict()
        render_split_export(split_report)
        console.print(f"wrote {split_result.manifest_path} in {split_result.seconds:.1f} s")
        if json_path:
            write_json(json_path, split_report, schemas.SPLIT_EXPORT)
            wrote(json_path)
        return
    options = OnnxExportOptions(
        opset=opset, exporter=exporter, window=window, dynamic_window=dynamic_window, debug_outputs=debug_outputs,
        external_data=external_data, simplify=simplify, optimize=optimize, ort_check=ort_check, parity_samples=samples,
    )
    result = OnnxFromPolicy(PolicyFromCheckpoint(checkpoint, options=load), output, options)()
    report = result.to_dict()
    render_completeness(report["completeness"])
    for p in report["parity"]:
        render_parity(p)
    if not ort_check:
        console.print("ONNX Runtime check skipped (--no-ort-check): run `vla-export parity` before trusting this model", style="yellow")
    files = ", ".join(f"{f['name']} ({fmt_bytes(f['bytes'])})" for f in report["files"])
    console.print(f"wrote {result.path} in {result.seconds:.1f} s: {files}; manifest {result.manifest_path}")
    if json_path:
        write_json(json_path, report, schemas.ONNX_EXPORT)
        wrote(json_path)


def render_split_export(report: dict[str, Any]) -> None:
    """``vla-export onnx --split``: each part's completeness and parity, the parameter sum and the streaming check."""
    for part, p in report["parts"].items():
        console.print(f"[bold]{part}[/]: {p['path']}")
        render_completeness(p["completeness"])
        render_parity(p["parity"])
    n = report["parameters"]
    console.print(f"parameters: backbone {n['backbone']:,} + head {n['head']:,} = {n['backbone'] + n['head']:,} = the policy's {n['policy']:,} "
                  "(all tensors; the tables above count each part's distinct tensors)")
    check = report["stream_check"]
    console.print(
        f"streaming check (ONNX parts in the runtime vs the full PyTorch policy, {len(check['steps'])} steps incl. warm-up): "
        f"max abs error {check['max_abs_err']:.3g} <= {check['atol']:g}"
    )
