"""``vla-export trt``: a thin layer over vla_export.export.trt (engine build, or the trtexec command line)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from vla_export import schemas
from vla_export.choices import Precision
from vla_export.errors import ExitCode
from vla_export.cli.common import console, err_console, write_json
from vla_export.cli.render import fmt_bytes, render_layers, render_parity
from vla_export.cli.options import JsonOpt, with_loading_options, with_option_groups
from vla_export.cli.trtexec_spellings import TrtexecSpellings
from vla_export.models.resolve import LoadOptions
from vla_export.cli import checks
from vla_export.errors import ConfigError



def render_build(r: dict[str, Any]) -> None:
    plan = r["plan"]
    if r.get("flavor") == "rtx":
        targets = ", ".join(plan.get("compute_capabilities") or []) or "the library's defaults"
        where = r["gpu"].get("name") or "no GPU here: built ahead of time"
        title = f"{r['engine']}: TensorRT-RTX {r['tensorrt']} via {r['builder']} ({where}), compute capability targets {targets}"
    else:
        title = f"{r['engine']}: TensorRT {r['tensorrt']} via {r['builder']} on {r['gpu'].get('name')} (sm {r['gpu'].get('compute_capability')})"
    table = Table(title=title)
    table.add_column("setting")
    table.add_column("value")
    precision = r.get("onnx_precision") or plan["precision"]
    table.add_row("precision", f"{precision}{' (strongly typed, from the ONNX)' if plan['strongly_typed'] else ''}")
    table.add_row("flags", ", ".join(plan["flags"]) or "none")
    for name, prof in plan["profiles"].items():
        table.add_row(f"profile {name}", f"min {prof['min']} opt {prof['opt']} max {prof['max']}")
    for rule in plan["layer_rules"]:
        table.add_row(f"keep {rule['precision']}", f"{rule['reason']} ({r['layer_rules_applied'].get(rule['reason'], 0)} layers)")
    console.print(table)
    render_layers(r.get("layers"))
    console.print(f"built in {r['seconds']:.1f} s, {fmt_bytes(r['bytes'])}; manifest {r['manifest']}", markup=False)


@with_loading_options
@with_option_groups
def trt(
    onnx: Path = typer.Argument(..., help="The ONNX to build (external data is read from beside it)."),
    output: Path = typer.Option(..., "-o", "--output", "--saveEngine", help="Engine to write, e.g. engines/NAME.engine (manifest NAME.engine.json beside it)."),
    fp16: bool = typer.Option(False, "--fp16", help="FP16 (LayerNorm, Softmax and mask arithmetic stay FP32 unless --fp16-all)."),
    int8: bool = typer.Option(False, "--int8", help="INT8 with FP16 fallback: calibrated with --calib, or from the ONNX's Q/DQ nodes."),
    fp16_all: bool = typer.Option(False, "--fp16-all", help="Drop the FP32 layer precision constraints."),
    calib_path: Optional[Path] = typer.Option(None, "--calib", help="Calibration set for implicit INT8 (entropy calibration; cache in its folder)."),
    calib_cache: Optional[Path] = typer.Option(None, "--calib-cache", help="Calibration cache file (default: beside the calibration set)."),
    typing_: str = typer.Option("auto", "--typing", help="auto (strongly typed for Q/DQ or FP16 ONNX, and on TensorRT 11), strong or weak."),
    shape: Optional[list[str]] = typer.Option(None, "--shape", help="Profile NAME=MIN:OPT:MAX, e.g. input_ids=1x1:1x16:1x64 (repeatable; default from the ONNX)."),
    trtexec: TrtexecSpellings = TrtexecSpellings(),
    max_batch: int = typer.Option(1, "--max-batch", help="Largest batch in the default profiles."),
    workspace: Optional[int] = typer.Option(None, "--workspace", help="Workspace limit in MiB (default 2048)."),
    timing_cache: Optional[Path] = typer.Option(None, "--timing-cache", "--timingCacheFile", help="Timing cache file, read if present and updated after the build."),
    opt_level: Optional[int] = typer.Option(None, "--opt-level", help="Builder optimization level 0-5 (TensorRT default 3)."),
    version_compatible: bool = typer.Option(False, "--version-compatible", help="Engine runs on later TensorRT versions of the same major."),
    exclude_lean_runtime: bool = typer.Option(False, "--exclude-lean-runtime", help="With --version-compatible: do not embed the lean runtime."),
    hardware_compat: str = typer.Option("none", "--hardware-compat", help="none or ampere+ (runs on any Ampere or newer GPU)."),
    dla_core: Optional[int] = typer.Option(None, "--dla-core", "--useDLACore", help="Run on this DLA core (Jetson), with GPU fallback."),
    profiling_verbosity: Optional[str] = typer.Option(None, "--profiling-verbosity", "--profilingVerbosity", help="layer_names_only (TensorRT's default) or detailed: the engine keeps each layer's precision, formats and tactic (`vla-export inspect` on the device; with --print-trtexec also --exportLayerInfo=ENGINE.layers.json). TensorRT-RTX builds are always detailed."),
    compute_capability: Optional[str] = typer.Option(None, "--compute-capability", help="TensorRT-RTX only: target compute capabilities, e.g. 86,89,120 (of 75, 80, 86, 89, 120, 121; default: the library's)."),
    print_trtexec: bool = typer.Option(False, "--print-trtexec", help="Print the equivalent trtexec command and exit (needs no TensorRT)."),
    trt_version: Optional[str] = typer.Option(None, "--trt-version", help="With --print-trtexec: the TensorRT the line is for (default: the installed one, else 10.3.0 as on JetPack 6)."),
    parity_ckpt: Optional[Path] = typer.Option(None, "--parity", help="After building, check parity against this checkpoint (loaded with --config/--rename/--set) and record it in the manifest."),
    load: LoadOptions = LoadOptions(),
    samples: int = typer.Option(8, "--samples", min=1, help="Parity samples."),
    json_path: Optional[Path] = JsonOpt,
) -> None:
    """Build a TensorRT engine for this GPU from an ONNX, with its manifest."""
    min_shapes, opt_shapes, max_shapes, mem_pool, strongly_typed = (trtexec.min_shapes, trtexec.opt_shapes, trtexec.max_shapes,
                                                                     trtexec.mem_pool, trtexec.strongly_typed)
    from vla_export.export.trt import (
        EngineFromOnnx, TrtBuildOptions, make_plan, parse_compute_capabilities, parse_profile, read_onnx_facts, record_parity, target_trt_version,
        trtexec_command,
    )

    if fp16 and int8:
        raise ConfigError("choose one of --fp16 or --int8 (INT8 already enables FP16 for the layers kept out of INT8)")
    from vla_export.cli import trtexec_spellings as spelled

    shape = spelled.shapes_from_trtexec(min_shapes, opt_shapes, max_shapes, shape)
    workspace = spelled.workspace_from_mem_pool(mem_pool, workspace if workspace is not None else 2048, workspace is not None)
    typing_ = spelled.typing_from_strongly_typed(strongly_typed, typing_)
    checks.input_file(onnx, "ONNX")
    checks.input_file(calib_path, "calibration set")
    checks.at_least(1, samples=samples, max_batch=max_batch)
    checks.input_file(parity_ckpt, "checkpoint")
    if not print_trtexec:
        checks.artifact_output(output, json_path, calib_cache, timing_cache)
    options = TrtBuildOptions(
        precision=Precision.INT8 if int8 else Precision.FP16 if fp16 else Precision.FP32, fp16_all=fp16_all, typing=typing_,
        shapes=dict(parse_profile(s) for s in shape or []), max_batch=max_batch, workspace_mib=workspace,
        timing_cache=timing_cache, optimization_level=opt_level, version_compatible=version_compatible,
        exclude_lean_runtime=exclude_lean_runtime, hardware_compatibility=hardware_compat, dla_core=dla_core,
        calib=calib_path, calib_cache=calib_cache,
        compute_capabilities=parse_compute_capabilities(compute_capability) if compute_capability is not None else (),
        profiling_verbosity=profiling_verbosity,
    )
    if print_trtexec:
        facts = read_onnx_facts(onnx)
        calib_shapes = None
        if calib_path is not None and int8:
            from vla_export.data.calibration import load_calibration_set

            calib_shapes = {k: tuple(v.shape[1:]) for k, v in load_calibration_set(calib_path).arrays.items()}
        version, source = target_trt_version(trt_version)
        plan = make_plan(facts, options, trt_version=version, calib_shapes=calib_shapes)
        import shlex

        console.print(shlex.join(trtexec_command(plan, onnx, output)), markup=False, soft_wrap=True)
        err_console.print(f"(for trtexec {version}, from {source})", style="dim", markup=False)
        return
    result = EngineFromOnnx(onnx, output, options)()
    report = result.to_dict()
    render_build(report)
    if parity_ckpt is not None:
        from vla_export.models.loader import PolicyFromCheckpoint
        from vla_export.verify.parity import parity_check

        parity = parity_check(PolicyFromCheckpoint(parity_ckpt, options=load), output, samples=samples)
        record_parity(output, parity.to_dict())
        report["parity"] = parity.to_dict()
        render_parity(report["parity"])
    if json_path:  # written before the verdict, so a failed parity still leaves the report
        write_json(json_path, report, schemas.TRT_BUILD)
    if not report.get("parity", {"passed": True})["passed"]:
        raise typer.Exit(ExitCode.CHECK_FAILED)
