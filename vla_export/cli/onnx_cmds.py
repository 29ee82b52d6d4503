"""``vla-export onnx`` and ``vla-export parity``: thin layers over vla_export.export.onnx and vla_export.verify.parity."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Optional

import typer

from vla_export import schemas
from vla_export.cli import checks
from vla_export.cli.common import JunitOpt, console, write_json, wrote
from vla_export.cli.junit import parity_cases, write_reports
from vla_export.cli.render import fmt_bytes, render_completeness, render_next_steps, render_parity, render_saved
from vla_export.cli.runtime_cmds import export_split_cmd
from vla_export.errors import ConfigError, ExitCode
from vla_export.cli.loading import with_loading_options
from vla_export.models.resolve import LoadOptions




@with_loading_options
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
        return export_split_cmd(
            checkpoint, output, loader_options={"options": load},
            unsupported={"--dynamic-window": dynamic_window, "--debug-outputs": debug_outputs, "--simplify": simplify, "--no-ort-check": not ort_check},
            json_path=json_path, opset=opset, exporter=exporter, window=window, external_data=external_data, optimize=optimize,
        )
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


@with_loading_options
def parity(
    checkpoint: Path = typer.Argument(..., help="The reference: the PyTorch policy checkpoint, a saved reference (.npz from --save-reference, or the Polygraphy outputs .json from --save-outputs), or another artifact (.onnx, .engine: artifact against artifact)."),
    artifact: Path = typer.Argument(..., help="The artifact to check: .onnx, .engine/.plan, or another checkpoint."),
    samples: Optional[int] = typer.Option(None, "--samples", help="Number of samples (default 8; with a saved reference: the saved ones)."),
    data: Optional[list[Path]] = typer.Option(None, "--data", help="Episode files or folders (HDF5) instead of synthetic inputs."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the input source (default 0)."),
    batch: Optional[int] = typer.Option(None, "--batch", help="Batch size per sample (default 1)."),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32, fp16 or int8: picks default tolerances (default: from the manifest, else fp32)."),
    atol: Optional[list[str]] = typer.Option(None, "--atol", metavar="[OUTPUT:]VALUE", help="Override the absolute tolerance: VALUE for every output, or OUTPUT:VALUE for one (repeatable; Polygraphy's spelling, e.g. --atol actions:0.05)."),
    rtol: Optional[list[str]] = typer.Option(None, "--rtol", metavar="[OUTPUT:]VALUE", help="Override the relative tolerance: VALUE or OUTPUT:VALUE, as --atol."),
    min_cosine: Optional[float] = typer.Option(None, "--min-cosine", help="Override the minimum cosine similarity."),
    min_sign_agreement: Optional[float] = typer.Option(None, "--min-sign-agreement", help="Override the minimum sign agreement of actions."),
    max_rel_error: Optional[float] = typer.Option(None, "--max-rel-error", help="Override the per-row relative error bound of intermediate outputs (INT8 features)."),
    qdq: str = typer.Option("exact", "--qdq", help="Q/DQ ONNX: exact (the quantization's own arithmetic, the default), kernels (onnxruntime's fused int8 CPU kernels) or both (verdict on exact)."),
    providers: Optional[list[str]] = typer.Option(None, "--provider", help="onnxruntime execution provider (repeatable; default CUDA if available, else CPU)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the result as JSON (- for standard output)."),
    junit: Optional[Path] = JunitOpt,
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
    recorded = [(m.precision if m else None) or "fp32" for m in ((read_manifest(checkpoint, required=False), manifest) if pair else (manifest,))]
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
        from vla_export.cli.locate_cmds import render_locate
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
    if not result.passed and report["precision"] in ("int8", "int8w"):
        from vla_export.verify.next_steps import int8_next_steps

        steps = int8_next_steps(artifact, manifest, precision=report["precision"], reference=checkpoint,
                                tolerance=result.tolerance, data=data, outputs=list(report["outputs"]), located=locate)
        report["next_steps"] = steps.to_dict()
        render_next_steps(report["next_steps"])
    write_reports(report, json_path, junit, suite=f"parity {artifact.name}", cases=parity_cases, classname="vla-export.parity",
                  schema=schemas.PARITY)
    if not result.passed:
        raise typer.Exit(ExitCode.CHECK_FAILED)
