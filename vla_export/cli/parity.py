"""``vla-export parity`` (and its ``--locate`` table): a thin layer over vla_export.verify.parity, pair, reference and locate."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from vla_export.choices import ParityPrecision, Precision, QdqMode
from vla_export import schemas
from vla_export.cli import checks
from vla_export.cli.common import console
from vla_export.cli.junit import parity_cases, write_reports
from vla_export.cli.render import render_next_steps, render_parity, render_saved
from vla_export.errors import ConfigError, ExitCode
from vla_export.cli.options import InputOptions, ReportOptions, ToleranceOptions, with_loading_options, with_option_groups
from vla_export.models.resolve import LoadOptions


@with_loading_options
@with_option_groups
def parity(
    checkpoint: Path = typer.Argument(..., help="The reference: the PyTorch policy checkpoint, a saved reference (.npz from --save-reference, or the Polygraphy outputs .json from --save-outputs), or another artifact (.onnx, .engine: artifact against artifact)."),
    artifact: Path = typer.Argument(..., help="The artifact to check: .onnx, .engine/.plan, or another checkpoint."),
    inputs: InputOptions = InputOptions(),
    precision: Optional[ParityPrecision] = typer.Option(None, "--precision", help="fp32, fp16 or int8: picks default tolerances (default: from the manifest, else fp32)."),
    tol: ToleranceOptions = ToleranceOptions(),
    qdq: QdqMode = typer.Option(QdqMode.EXACT, "--qdq", help="Q/DQ ONNX: exact (the quantization's own arithmetic, the default), kernels (onnxruntime's fused int8 CPU kernels) or both (verdict on exact)."),
    providers: Optional[list[str]] = typer.Option(None, "--provider", help="onnxruntime execution provider (repeatable; default CUDA if available, else CPU)."),
    reports: ReportOptions = ReportOptions(),
    strict: bool = typer.Option(False, "--strict", help="Fail (exit 1) when the comparison cannot tell a broken artifact apart (reference outputs vary too little across samples); for CI."),
    load: LoadOptions = LoadOptions(),
    save_reference: Optional[Path] = typer.Option(None, "--save-reference", help="Also save the inputs and PyTorch outputs (+ config, checkpoint sha256) to this .npz, for `vla-export parity REF.npz ARTIFACT` on the device."),
    save_inputs: Optional[Path] = typer.Option(None, "--save-inputs", help="Also save the inputs in Polygraphy's JSON format (`polygraphy run MODEL --load-inputs FILE.json`)."),
    save_outputs: Optional[Path] = typer.Option(None, "--save-outputs", help="With --save-inputs: also save the reference's outputs as Polygraphy's RunResults JSON (`polygraphy run MODEL --load-inputs IN.json --load-outputs FILE.json`; `vla-export parity FILE.json ARTIFACT` on the device)."),
    save_trtexec_inputs: Optional[Path] = typer.Option(None, "--save-trtexec-inputs", help="Also write the first sample's inputs as raw .bin files into this new folder, and print trtexec's --loadInputs/--shapes for them."),
    locate: bool = typer.Option(False, "--locate", help="Also compare every component boundary (each layer of each tower, projection, text model, CLIP, LSTM, head) and name where the error first exceeds the tolerance (ONNX artifacts); on a quantized ONNX also rank the layers by the error each adds alone."),
    locate_all: bool = typer.Option(False, "--locate-all", help="With --locate: compare the output of every module, not only the boundaries."),
    locate_samples: int = typer.Option(2, "--locate-samples", help="Samples for --locate (each keeps every intermediate tensor)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="With --locate: draw the per-layer error curve into this PNG (needs matplotlib)."),
    locate_float: Optional[Path] = typer.Option(None, "--locate-float", help="With --locate on a quantized ONNX: the float ONNX it was quantized from (default: its manifest's record), to rank layers by the error each adds."),
) -> None:
    """Compare an artifact with the PyTorch policy (or a saved reference) on the same inputs; exit 0 on pass, 1 on fail.

    A pair exported with a different config (heads, Tanh, widths, window, ...) is refused first (exit 2)."""
    samples, data, seed, batch = inputs.samples, inputs.data, inputs.seed, inputs.batch
    atol, rtol, min_cosine, min_sign_agreement, max_rel_error = tol.atol, tol.rtol, tol.min_cosine, tol.min_sign_agreement, tol.max_rel_error
    json_path, junit = reports.json_path, reports.junit
    from vla_export.backends.select import artifact_kind
    from vla_export.compare.tolerance import output_tolerances, tolerance_specs
    from vla_export.verify.parity import parity_check
    from vla_export.compare.tolerance import tolerance_for

    checks.at_least(1, samples=samples, batch=batch)
    atol_all, atol_per = tolerance_specs(atol, "--atol")
    rtol_all, rtol_per = tolerance_specs(rtol, "--rtol")
    if (atol_per or rtol_per) and locate:
        raise ConfigError("--locate compares every layer under one tolerance: give --atol/--rtol without an output name")
    if save_outputs is not None and save_inputs is None:
        raise ConfigError("--save-outputs goes with --save-inputs (the outputs file names the inputs it was made on)")
    from vla_export.data.interop import check_json_path, check_trtexec_dir

    check_json_path(save_inputs, "--save-inputs")
    check_json_path(save_outputs, "--save-outputs")
    if save_trtexec_inputs is not None:
        check_trtexec_dir(save_trtexec_inputs)
    saves = {"--save-reference": save_reference, "--save-inputs": save_inputs, "--save-outputs": save_outputs,
             "--save-trtexec-inputs": save_trtexec_inputs}
    if (locate_all or plot or locate_float) and not locate:
        raise ConfigError("--locate-all, --locate-float and --plot go with --locate")
    checks.input_file(locate_float, "float ONNX")
    saved = checkpoint.suffix in (".npz", ".json")
    pair = not saved and artifact_kind(checkpoint) in ("onnx", "engine")  # artifact against artifact
    if (pair or saved) and load != LoadOptions():
        raise ConfigError(f"--config, --rename, --set and --trust-checkpoint load a checkpoint; {checkpoint} is not one "
                          "(its config is the one recorded with it)")
    if pair and locate:
        raise ConfigError(f"--locate runs the PyTorch policy layer by layer and needs the checkpoint as the reference, not {checkpoint}")
    if saved:  # the inputs, their number and batch are the saved ones: an option that cannot act is refused
        given = [flag for flag, value in (("--samples", samples), ("--batch", batch), ("--seed", seed), ("--data", data),
                                          *saves.items()) if value is not None]
        if given:
            raise ConfigError(f"with a saved reference the inputs are the saved ones (their number and batch too): drop {', '.join(given)}")
        if locate:
            raise ConfigError(f"--locate runs the PyTorch policy layer by layer and needs the checkpoint; {checkpoint} holds only "
                              "the saved inputs and outputs: run `vla-export parity CKPT ARTIFACT --locate` where the checkpoint is")
    if save_reference is not None:
        from vla_export.verify.reference import check_reference_path

        check_reference_path(save_reference)
    samples, batch, seed = samples or 8, batch or 1, seed or 0
    checks.input_file(checkpoint, "saved reference" if saved else "reference artifact" if pair else "checkpoint")
    checks.input_file(artifact, "artifact")
    checks.input_paths(data, "data")
    checks.output_file(json_path, junit, plot, save_reference, save_inputs, save_outputs)
    from vla_export.verify.preflight import check_parity_pair

    check_parity_pair(checkpoint, artifact, load)  # a wrong pair is told before the checkpoint loads, with the right command
    from vla_export.artifacts.manifest import read_manifest
    from vla_export.precision import loosest

    # The manifest is read once here; the precision it records (the loosest of a pair's, fp32 where none) decides the tolerance.
    manifest = read_manifest(artifact, required=False)
    recorded = [(m.precision if m else None) or Precision.FP32 for m in ((read_manifest(checkpoint, required=False), manifest) if pair else (manifest,))]
    precision = precision or loosest(recorded)
    tolerance = per_output = None
    if atol_per or rtol_per or any(v is not None for v in (atol_all, rtol_all, min_cosine, min_sign_agreement, max_rel_error)):
        tolerance = tolerance_for(precision, atol=atol_all, rtol=rtol_all, min_cosine=min_cosine, min_sign_agreement=min_sign_agreement,
                                  max_row_rel_error=max_rel_error)
        per_output = output_tolerances(tolerance, atol=atol_per, rtol=rtol_per) or None
    runner_opts = {"providers": providers} if providers and (artifact_kind(artifact) == "onnx" or pair) else {}
    saving = {"save_to": save_reference, "save_inputs": save_inputs, "save_outputs": save_outputs, "save_trtexec": save_trtexec_inputs}
    if pair:  # artifact against artifact: no checkpoint, no torch
        from vla_export.verify.pair import parity_artifacts

        kwargs = dict(samples=samples, data=list(data) if data else None, seed=seed, batch=batch, precision=precision,
                      tolerance=tolerance, output_tolerances=per_output, runner_opts=runner_opts, strict=strict, qdq=qdq)
        if any(v is not None for v in saving.values()):
            from vla_export.fileio import sha256_file
            from vla_export.verify.reference import parity_with_saved_reference

            result = parity_with_saved_reference(checkpoint, artifact, run=parity_artifacts, **saving, **kwargs,
                                                 checkpoint={"path": str(checkpoint), "sha256": sha256_file(checkpoint),
                                                             "kind": artifact_kind(checkpoint)})
        else:
            result = parity_artifacts(checkpoint, artifact, **kwargs)
    elif saved:  # a saved reference: no checkpoint, no torch
        from vla_export.verify.reference import parity_against_reference

        result = parity_against_reference(checkpoint, artifact, precision=precision, tolerance=tolerance, runner_opts=runner_opts,
                                          qdq=qdq, strict=strict, output_tolerances=per_output, manifest=manifest)
    else:
        from vla_export.models.loader import PolicyFromCheckpoint
        from vla_export.verify.reference import parity_with_saved_reference

        run = parity_check if all(v is None for v in saving.values()) else partial(parity_with_saved_reference, **saving)
        result = run(
            PolicyFromCheckpoint(checkpoint, options=load), artifact,
            samples=samples, data=list(data) if data else None, seed=seed, batch=batch, precision=precision,
            tolerance=tolerance, runner_opts=runner_opts, qdq=qdq, strict=strict, output_tolerances=per_output, manifest=manifest,
        )
    report = result.to_dict()
    render_parity(report)
    if result.candidate.get("saved"):
        render_saved(result.candidate["saved"], artifact, result)
    if locate:
        from vla_export.verify.locate import locate as locate_layers
        from vla_export.models.loader import PolicyFromCheckpoint

        found = locate_layers(
            PolicyFromCheckpoint(checkpoint, options=load), artifact,
            level="all" if locate_all else "boundaries", samples=locate_samples, data=list(data) if data else None, seed=seed,
            precision=precision, tolerance=tolerance, providers=providers, float_onnx=locate_float,
        )
        report["locate"] = found.to_dict()
        render_locate(report["locate"])
        if plot:
            from vla_export.plots import plot_locate

            console.print(f"wrote {plot_locate(report['locate'], plot)}")
    if not result.passed and report["precision"] in (Precision.INT8, Precision.INT8W):
        from vla_export.verify.next_steps import int8_next_steps

        steps = int8_next_steps(artifact, manifest, precision=report["precision"], reference=checkpoint,
                                tolerance=result.tolerance, data=data, outputs=list(report["outputs"]), located=locate)
        report["next_steps"] = steps.to_dict()
        render_next_steps(report["next_steps"])
    write_reports(report, json_path, junit, suite=f"parity {artifact.name}", cases=parity_cases, classname="vla-export.parity",
                  schema=schemas.PARITY)
    if not result.passed:
        raise typer.Exit(ExitCode.CHECK_FAILED)


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
