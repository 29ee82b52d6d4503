"""``vla-export onnx`` and ``vla-export parity``: thin layers over vla_export.export.onnx and vla_export.parity."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from vla_export.cli.checkpoint_cmds import ConfigOpt, RenameOpt, TrustOpt, _fmt_bytes, policy_source_options
from vla_export.cli import checks
from vla_export.cli.common import console, write_json


def render_completeness(c: dict[str, Any]) -> None:
    table = Table(title="completeness: parameters held by the graph")
    for col, justify in (("component", "left"), ("parameters", "right"), ("in graph", "right"), ("coverage", "right")):
        table.add_column(col, justify=justify)
    for name, comp in c["components"].items():
        table.add_row(name, f"{comp['parameters']:,}", f"{comp['in_graph']:,}", f"{100 * comp['coverage']:.2f}%")
    style = "green" if c["passed"] else "red"
    table.add_row("[bold]total[/]", f"[bold]{c['parameters']:,}[/]", f"[bold]{c['attributed']:,}[/]", f"[bold {style}]{100 * c['coverage']:.2f}%[/]")
    console.print(table)
    console.print(
        f"graph tensors: {c['graph_elements']:,} elements ({c['by_name']:,} matched by name, {c['by_count']:,} by element count, "
        f"{c['unattributed']:,} unattributed, {c['buffers']:,} in buffers, {c['other_constants']:,} in integer constants)"
    )


def render_parity(p: dict[str, Any]) -> None:
    tol = p["tolerance"]
    table = Table(title=f"{p.get('label', 'parity')}: {p['reference']['name']} vs {p['candidate']['name']}, {p['samples']} samples, {p['precision']} "
                        f"(atol {tol['atol']:g}, rtol {tol['rtol']:g}, cosine >= {tol['min_cosine']:g})")
    # Abs errors, then max rel, cosine and the reference's spread across samples (parity of a constant proves little).
    for col in ("output", "max abs", "mean abs", "p99 abs", "max rel", "cosine", "spread", "result"):
        table.add_column(col, justify="left" if col == "output" else "right", no_wrap=True)
    for o in p["outputs"].values():
        table.add_row(o["name"], f"{o['max_abs']:.2g}", f"{o['mean_abs']:.2g}", f"{o['p99_abs']:.2g}", f"{o['max_rel']:.2g}",
                      f"{o['cosine']:.6f}", f"{o['ref_std']:.2g}", "[green]pass[/]" if o["passed"] else "[red]FAIL[/]")
    console.print(table)
    for o in p["outputs"].values():
        if o.get("failure"):
            console.print(f"{o['name']}: {o['failure']}", style="red", markup=False)
        elif not o["passed"]:
            console.print(f"{o['name']}: {o['violations']} elements out of tolerance", style="red")
    actions = p["outputs"].get("actions")
    if actions and actions["mae_per_dim"] is not None and not actions.get("failure"):
        dims = ", ".join(f"[{i}] MAE {m:.3g} sign {100 * s:.1f}%" for i, (m, s) in enumerate(zip(actions["mae_per_dim"], actions["sign_agreement"])))
        console.print(f"actions per dimension: {dims}")
    if p["candidate"].get("fallback"):
        console.print(f"warning: {p['candidate']['name']} fell back from {p['candidate']['requested_providers'][0]}", style="yellow")
    console.print(f"parity: {'[green]pass[/]' if p['passed'] else '[red]FAIL[/]'}")


def onnx(
    checkpoint: Path = typer.Argument(..., help="Policy checkpoint (.pt/.pth/.ckpt or .safetensors)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="ONNX file to write (default engines/CHECKPOINT.onnx)."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset."),
    exporter: str = typer.Option("dynamo", "--exporter", help="dynamo (torch.onnx.export(dynamo=True)) or torchscript (fallback)."),
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
    config: Optional[Path] = ConfigOpt,
    rename: Optional[list[str]] = RenameOpt,
    trust_checkpoint: bool = TrustOpt,
) -> None:
    """Export the whole policy to ONNX, prove the graph holds all its weights, check it and record a manifest."""
    from vla_export.export.onnx import OnnxExportOptions, OnnxFromPolicy, check_opset, check_target
    from vla_export.models.loader import PolicyFromCheckpoint

    checks.at_least(1, window=window, samples=samples)
    checks.input_file(checkpoint, "checkpoint")
    output = output or Path("engines") / f"{checkpoint.stem}.onnx"
    checks.output_file(json_path)
    if split:
        from vla_export.export.split import split_paths

        check_opset(opset, exporter)
        checks.output_file(*split_paths(output).values())
    else:
        check_target(output, opset, exporter)
    cfg, renames = policy_source_options(config, rename)
    if split:
        from vla_export.cli.runtime_cmds import export_split_cmd

        return export_split_cmd(
            checkpoint, output, loader_options={"config": cfg, "renames": renames, "trust": trust_checkpoint},
            unsupported={"--dynamic-window": dynamic_window, "--debug-outputs": debug_outputs, "--simplify": simplify, "--no-ort-check": not ort_check},
            json_path=json_path, opset=opset, exporter=exporter, window=window, external_data=external_data, optimize=optimize,
        )
    options = OnnxExportOptions(
        opset=opset, exporter=exporter, window=window, dynamic_window=dynamic_window, debug_outputs=debug_outputs,
        external_data=external_data, simplify=simplify, optimize=optimize, ort_check=ort_check, parity_samples=samples,
    )
    result = OnnxFromPolicy(PolicyFromCheckpoint(checkpoint, config=cfg, renames=renames, trust=trust_checkpoint), output, options)()
    report = result.to_dict()
    render_completeness(report["completeness"])
    for p in report["parity"]:
        render_parity(p)
    if not ort_check:
        console.print("ONNX Runtime check skipped (--no-ort-check): run `vla-export parity` before trusting this model", style="yellow")
    files = ", ".join(f"{f['name']} ({_fmt_bytes(f['bytes'])})" for f in report["files"])
    console.print(f"wrote {result.path} in {result.seconds:.1f} s: {files}; manifest {result.manifest_path}")
    if json_path:
        write_json(json_path, report)
        console.print(f"wrote {json_path}")


def parity(
    checkpoint: Path = typer.Argument(..., help="The PyTorch policy checkpoint (the reference)."),
    artifact: Path = typer.Argument(..., help="The artifact to check: .onnx, .engine/.plan, or another checkpoint."),
    samples: int = typer.Option(8, "--samples", help="Number of samples."),
    data: Optional[list[Path]] = typer.Option(None, "--data", help="Episode files or folders (HDF5) instead of synthetic inputs."),
    seed: int = typer.Option(0, "--seed", help="Seed of the input source."),
    batch: int = typer.Option(1, "--batch", help="Batch size per sample."),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32, fp16 or int8: picks default tolerances (default: from the manifest, else fp32)."),
    atol: Optional[float] = typer.Option(None, "--atol", help="Override the absolute tolerance."),
    rtol: Optional[float] = typer.Option(None, "--rtol", help="Override the relative tolerance."),
    min_cosine: Optional[float] = typer.Option(None, "--min-cosine", help="Override the minimum cosine similarity."),
    min_sign_agreement: Optional[float] = typer.Option(None, "--min-sign-agreement", help="Override the minimum sign agreement of actions."),
    providers: Optional[list[str]] = typer.Option(None, "--provider", help="onnxruntime execution provider (repeatable; default CUDA if available, else CPU)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the result as JSON."),
    config: Optional[Path] = ConfigOpt,
    rename: Optional[list[str]] = RenameOpt,
    trust_checkpoint: bool = TrustOpt,
) -> None:
    """Compare an artifact with the PyTorch policy on the same inputs; exit 0 on pass, 1 on fail."""
    from vla_export.backends.select import artifact_kind
    from vla_export.models.loader import PolicyFromCheckpoint
    from vla_export.parity import parity_check, tolerance_for

    checks.at_least(1, samples=samples, batch=batch)
    checks.input_file(checkpoint, "checkpoint")
    checks.input_file(artifact, "artifact")
    checks.input_paths(data, "data")
    checks.output_file(json_path)
    cfg, renames = policy_source_options(config, rename)
    tolerance = None
    if precision or any(v is not None for v in (atol, rtol, min_cosine, min_sign_agreement)):
        from vla_export.export.manifest import read_manifest

        base = precision or (read_manifest(artifact, required=False) or {}).get("precision", "fp32")
        tolerance = tolerance_for(base, atol=atol, rtol=rtol, min_cosine=min_cosine, min_sign_agreement=min_sign_agreement)
    runner_opts = {"providers": providers} if providers and artifact_kind(artifact) == "onnx" else {}
    result = parity_check(
        PolicyFromCheckpoint(checkpoint, config=cfg, renames=renames, trust=trust_checkpoint), artifact,
        samples=samples, data=list(data) if data else None, seed=seed, batch=batch, precision=precision,
        tolerance=tolerance, runner_opts=runner_opts,
    )
    report = result.to_dict()
    render_parity(report)
    if json_path:
        write_json(json_path, report)
        console.print(f"wrote {json_path}")
    if not result.passed:
        raise typer.Exit(1)
