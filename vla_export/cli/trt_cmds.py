"""``vla-export episodes``, ``calib``, ``quantize`` and ``trt``: thin layers over vla_export.data and vla_export.export."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from vla_export import schemas
from vla_export.errors import ExitCode
from vla_export.cli.common import console, err_console, write_json
from vla_export.cli.render import fmt_bytes, render_parity
from vla_export.cli.loading import with_loading_options
from vla_export.models.resolve import LoadOptions
from vla_export.cli import checks
from vla_export.errors import ConfigError

JsonOpt = typer.Option(None, "--json", help="Also write the report as JSON.")
#: Held-out windows the MAE budget evaluates on unless --eval-samples says: all distinct ones, at most this many.
MAE_BUDGET_WINDOWS = 32


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


def render_quantize(r: dict[str, Any]) -> None:
    kept = ", ".join(f"{n} {k}" for k, n in r["kept_fp32"].items()) or "none"
    q, dq = r["nodes"].get("QuantizeLinear", 0), r["nodes"].get("DequantizeLinear", 0)
    extra = f"; {q} QuantizeLinear, {dq} DequantizeLinear" if r["precision"] == "int8" else ""
    w = r["options"].get("weight_bytes")
    if w:
        extra += (f"; weight-only: {w['quantized_tensors']} weights INT8 ({100 * w['int8_share_of_weight_elements']:.1f}% of weight "
                  f"elements), weights {fmt_bytes(w['float_bytes_before'])} -> {fmt_bytes(w['bytes_after'])}")
    console.print(f"wrote {r['output']} ({r['precision']}, {fmt_bytes(r['bytes'])}, {r['seconds']:.1f} s); kept in FP32: {kept}{extra}", markup=False)


def quantize(
    onnx: Path = typer.Argument(..., help="The exported fp32 ONNX."),
    int8: bool = typer.Option(False, "--int8", help="Static INT8 Q/DQ (needs --calib)."),
    int8_weights: bool = typer.Option(False, "--int8-weights", help="Weight-only INT8: per-channel INT8 MatMul/Gemm/Conv weights behind DequantizeLinear, activations float (no calibration)."),
    fp16: bool = typer.Option(False, "--fp16", help="FP16 weights and compute with fp32 inputs/outputs."),
    calib_path: Optional[Path] = typer.Option(None, "--calib", help="Calibration set (.npz from `vla-export calib`)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output ONNX (default MODEL.int8.onnx / MODEL.fp16.onnx)."),
    method: str = typer.Option("minmax", "--method", help="INT8 calibration: minmax, entropy or percentile."),
    per_channel: bool = typer.Option(True, "--per-channel/--per-tensor", help="Per-channel INT8 weights."),
    keep_fp32: bool = typer.Option(True, "--keep-fp32/--all-low-precision", help="Keep LayerNorm, Softmax, mask arithmetic (and residual adds for INT8) out of low precision."),
    exclude: Optional[list[str]] = typer.Option(None, "--exclude", help="Also keep this ONNX node out of INT8 (repeatable)."),
    max_action_error: Optional[float] = typer.Option(None, "--max-action-error", help="INT8 budget: actions max abs error on held-out windows; the most sensitive layers stay float until it holds."),
    min_cosine: Optional[float] = typer.Option(None, "--min-cosine", help="INT8 budget: minimum cosine of the actions."),
    max_feature_rel_error: Optional[float] = typer.Option(None, "--max-feature-rel-error", help="INT8 budget: worst frame's relative error of the features (models exported with --debug-outputs)."),
    max_mae_increase: Optional[float] = typer.Option(None, "--max-mae-increase", help="INT8 budget: MAE against the recorded actions of held-out windows may rise at most this over the float model's, in every action dimension (as `vla-export evaluate` measures it)."),
    action_scale: Optional[float] = typer.Option(None, "--action-scale", help="With --max-mae-increase: divide the recorded actions by this first (default 1)."),
    data: Optional[list[Path]] = typer.Option(None, "--data", help="With a budget: episodes to evaluate on (default: the calibration set's episodes, other frames)."),
    eval_samples: Optional[int] = typer.Option(None, "--eval-samples", help="With a budget: held-out windows to evaluate on (default 8; with --max-mae-increase every distinct one, at most 32)."),
    granularity: Optional[str] = typer.Option(None, "--granularity", help="With a budget: layer, block, or auto (the default: blocks, then the layers of the worst blocks)."),
    json_path: Optional[Path] = JsonOpt,
) -> None:
    """Explicit quantization: a Q/DQ INT8 or an FP16 ONNX that ONNX Runtime (CPU) and TensorRT (strongly typed) both run."""
    from vla_export.export.quantize import convert_fp16, quantize_int8
    from vla_export.artifacts.kinds import default_output

    if int8 + fp16 + int8_weights != 1:
        raise ConfigError("choose one of --int8, --int8-weights or --fp16")
    precision = "int8" if int8 else "int8w" if int8_weights else "fp16"
    output = output or default_output(onnx, precision)
    if int8_weights and calib_path is not None:
        raise ConfigError("--int8-weights needs no --calib: only the weights are quantized")
    budget_given = [flag for flag, v in (("--max-action-error", max_action_error), ("--min-cosine", min_cosine),
                                         ("--max-feature-rel-error", max_feature_rel_error), ("--max-mae-increase", max_mae_increase))
                    if v is not None]
    search_given = [flag for flag, v in (("--data", data), ("--eval-samples", eval_samples), ("--granularity", granularity)) if v is not None]
    if not int8 and budget_given + search_given:
        raise ConfigError(f"{', '.join(budget_given + search_given)}: only with --int8 (the budget search keeps layers of a W8A8 model "
                          f"float); --{precision.replace('int8w', 'int8-weights')} has no budget: check the result with "
                          "`vla-export parity CHECKPOINT OUTPUT`")
    if search_given and not budget_given:
        raise ConfigError(f"{', '.join(search_given)}: only with a budget (--max-action-error, --min-cosine, --max-feature-rel-error, "
                          "--max-mae-increase)")
    if action_scale is not None and max_mae_increase is None:
        raise ConfigError("--action-scale scales the recorded actions the --max-mae-increase budget compares with: give that budget too")
    if action_scale is not None and not (math.isfinite(action_scale) and action_scale > 0):
        raise ConfigError(f"--action-scale must be a finite number > 0, got {action_scale}")
    checks.at_least(1, eval_samples=eval_samples)
    budget = None
    if budget_given:
        from vla_export.export.sensitivity import GRANULARITIES, Budget

        budget = Budget(max_action_error, min_cosine, max_feature_rel_error, max_mae_increase)  # a NaN, an inf or a negative value: refused here
        if granularity is not None and granularity not in GRANULARITIES:
            raise ConfigError(f"--granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    checks.input_file(onnx, "ONNX")
    checks.input_file(calib_path, "calibration set")
    checks.artifact_output(output, json_path)
    if budget is not None:
        from vla_export.artifacts.onnxfile import PROTOBUF_LIMIT
        from vla_export.artifacts.onnxfile import file_tensor_bytes

        size = file_tensor_bytes(onnx)
        if size > PROTOBUF_LIMIT - (64 << 20):
            raise ConfigError(f"{', '.join(budget_given)}: the budget search runs every model variant from memory, and {onnx} holds "
                              f"{size / 1e9:.2f} GB of weights, over protobuf's 2 GB limit: quantize it with --int8 alone and "
                              f"check it with `vla-export parity CHECKPOINT {output}`")
    if max_feature_rel_error is not None:
        from vla_export.artifacts.onnxfile import io_signature

        outputs = [o["name"] for o in io_signature(onnx)["outputs"]]
        if "features" not in outputs:
            raise ConfigError(f"--max-feature-rel-error measures the features output, and {onnx} has only {', '.join(outputs)}: "
                              "export it with --debug-outputs, or use --max-action-error/--min-cosine")
    if int8_weights:
        from vla_export.export.weight_only import quantize_int8_weights

        result = quantize_int8_weights(onnx, output, keep_sensitive_fp32=keep_fp32, exclude=exclude or ())
    elif int8:
        if calib_path is None:
            raise ConfigError("--int8 needs --calib DATA (make it with `vla-export calib`): INT8 without calibration data is guesswork")
        from vla_export.data.calibration import load_calibration_set

        calib_set = load_calibration_set(calib_path)
        if budget is not None:
            from vla_export.cli.quant_cmds import eval_feeds, render_budget
            from vla_export.export.sensitivity import quantize_int8_with_budget

            mae_budget = max_mae_increase is not None
            samples = eval_samples or (MAE_BUDGET_WINDOWS if mae_budget else 8)
            feeds, record = eval_feeds(onnx, data, calib_set.frames_used(), samples, calib_meta=calib_set.meta,
                                       option="--eval-samples", at_most=mae_budget and eval_samples is None)
            targets = None
            if mae_budget:
                import numpy as np

                record["action_scale"] = action_scale or 1.0
                targets = np.asarray(record["recorded_actions"], dtype=np.float64) / record["action_scale"]
            result, search, _ = quantize_int8_with_budget(
                onnx, calib_set, output, budget, feeds, data=record, granularity=granularity or "auto", per_channel=per_channel,
                method=method, keep_sensitive_fp32=keep_fp32, exclude=exclude or (), targets=targets)
            render_quantize(result.to_dict())
            if mae_budget:
                console.print(f"MAE budget measured on {record['windows']} held-out windows (of {record['candidate_windows']} distinct) against "
                              f"the recorded actions{'' if record['action_scale'] == 1 else ' / ' + format(record['action_scale'], 'g')}, "
                              "relative to the float ONNX", markup=False)
                from vla_export.cli.evaluate_cmds import render_evaluate_discrimination

                render_evaluate_discrimination({"discrimination": result.options["mae_discrimination"], "strict": False},
                                               what="quantized model", strict_hint=False)
            render_budget(search.to_dict(), result.options["int8_share_of_weight_elements"], result.options["int8_share_before_budget"])
            if json_path:
                write_json(json_path, result.to_dict(), schemas.QUANTIZE)
            if not search.met:
                raise typer.Exit(1)
            return
        result = quantize_int8(onnx, calib_set, output, per_channel=per_channel, method=method,
                               keep_sensitive_fp32=keep_fp32, exclude=exclude or ())
    else:
        result = convert_fp16(onnx, output, keep_sensitive_fp32=keep_fp32)
    render_quantize(result.to_dict())
    from vla_export.cli.quant_cmds import parity_command

    console.print(f"check it: {parity_command(output)}", style="dim", markup=False)
    if json_path:
        write_json(json_path, result.to_dict(), schemas.QUANTIZE)


def render_layers(layers: dict[str, Any] | None) -> None:
    """The engine's layers by precision (TensorRT-RTX build log), one line each for all layers and the GEMMs."""
    if not layers:
        return
    fmt = lambda d: ", ".join(f"{n} {k}" for k, n in sorted(d.items(), key=lambda kv: -kv[1])) or "none"  # noqa: E731
    console.print(f"engine layers by precision ({layers['total']}): {fmt(layers['by_precision'])}", markup=False)
    console.print(f"  GEMM/convolution layers: {fmt(layers['gemm_by_precision'])}", markup=False)


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
    min_shapes: Optional[str] = typer.Option(None, "--minShapes", help="trtexec's spelling: NAME:DIMS,... (with --optShapes and --maxShapes; becomes --shape)."),
    opt_shapes: Optional[str] = typer.Option(None, "--optShapes", help="trtexec's spelling, see --minShapes."),
    max_shapes: Optional[str] = typer.Option(None, "--maxShapes", help="trtexec's spelling, see --minShapes."),
    mem_pool: Optional[str] = typer.Option(None, "--memPoolSize", help="trtexec's spelling of --workspace: workspace:SIZE[K|M|G] (default unit M)."),
    strongly_typed: bool = typer.Option(False, "--stronglyTyped", help="trtexec's spelling of --typing strong."),
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
        precision="int8" if int8 else "fp16" if fp16 else "fp32", fp16_all=fp16_all, typing=typing_,
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
