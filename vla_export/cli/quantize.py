"""``vla-export quantize``: a thin layer over vla_export.export.quantize, weight_only and sensitivity (the accuracy budget)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import typer

from vla_export import schemas
from vla_export.choices import CalibrationMethod, Precision
from vla_export.cli import checks
from vla_export.cli.common import console, write_json
from vla_export.cli.options import JsonOpt
from vla_export.cli.render import fmt_bytes, render_evaluate_discrimination
from vla_export.data.iospec import FEATURES
from vla_export.errors import ConfigError


#: Held-out windows the MAE budget evaluates on unless --eval-samples says: all distinct ones, at most this many.
MAE_BUDGET_WINDOWS = 32


def render_quantize(r: dict[str, Any]) -> None:
    kept = ", ".join(f"{n} {k}" for k, n in r["kept_fp32"].items()) or "none"
    q, dq = r["nodes"].get("QuantizeLinear", 0), r["nodes"].get("DequantizeLinear", 0)
    extra = f"; {q} QuantizeLinear, {dq} DequantizeLinear" if r["precision"] == Precision.INT8 else ""
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
    method: CalibrationMethod = typer.Option(CalibrationMethod.MINMAX, "--method", help="INT8 calibration: minmax, entropy or percentile."),
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
    precision = Precision.INT8 if int8 else Precision.INT8W if int8_weights else Precision.FP16
    output = output or default_output(onnx, precision)
    if int8_weights and calib_path is not None:
        raise ConfigError("--int8-weights needs no --calib: only the weights are quantized")
    budget_given = [flag for flag, v in (("--max-action-error", max_action_error), ("--min-cosine", min_cosine),
                                         ("--max-feature-rel-error", max_feature_rel_error), ("--max-mae-increase", max_mae_increase))
                    if v is not None]
    search_given = [flag for flag, v in (("--data", data), ("--eval-samples", eval_samples), ("--granularity", granularity)) if v is not None]
    if not int8 and budget_given + search_given:
        raise ConfigError(f"{', '.join(budget_given + search_given)}: only with --int8 (the budget search keeps layers of a W8A8 model "
                          f"float); --{'int8-weights' if precision == Precision.INT8W else precision} has no budget: check the result with "
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
    if int8 and calib_path is None:
        raise ConfigError("--int8 needs --calib DATA (make it with `vla-export calib`): INT8 without calibration data is guesswork")
    from vla_export.artifacts.onnxfile import OnnxFile

    source = OnnxFile(onnx)  # read once: every step below takes it (the weights load when a transform asks)
    if budget is not None:
        from vla_export.artifacts.onnxfile import PROTOBUF_LIMIT

        size = source.tensor_bytes()
        if size > PROTOBUF_LIMIT - (64 << 20):
            raise ConfigError(f"{', '.join(budget_given)}: the budget search runs every model variant from memory, and {onnx} holds "
                              f"{size / 1e9:.2f} GB of weights, over protobuf's 2 GB limit: quantize it with --int8 alone and "
                              f"check it with `vla-export parity CHECKPOINT {output}`")
    if max_feature_rel_error is not None:
        outputs = [o["name"] for o in source.io()["outputs"]]
        if FEATURES not in outputs:
            raise ConfigError(f"--max-feature-rel-error measures the features output, and {onnx} has only {', '.join(outputs)}: "
                              "export it with --debug-outputs, or use --max-action-error/--min-cosine")
    if int8_weights:
        from vla_export.export.weight_only import quantize_int8_weights

        result = quantize_int8_weights(source, output, keep_sensitive_fp32=keep_fp32, exclude=exclude or ())
    elif int8:
        from vla_export.data.calibration import load_calibration_set

        calib_set = load_calibration_set(calib_path)
        if budget is not None:
            from vla_export.export.sensitivity import eval_feeds, quantize_int8_with_budget

            mae_budget = max_mae_increase is not None
            samples = eval_samples or (MAE_BUDGET_WINDOWS if mae_budget else 8)
            feeds, record = eval_feeds(source, data, calib_set.frames_used(), samples, calib_meta=calib_set.meta,
                                       option="--eval-samples", at_most=mae_budget and eval_samples is None)
            targets = None
            if mae_budget:
                import numpy as np

                record["action_scale"] = action_scale or 1.0
                targets = np.asarray(record["recorded_actions"], dtype=np.float64) / record["action_scale"]
            result, search, _ = quantize_int8_with_budget(
                source, calib_set, output, budget, feeds, data=record, granularity=granularity or "auto", per_channel=per_channel,
                method=method, keep_sensitive_fp32=keep_fp32, exclude=exclude or (), targets=targets)
            render_quantize(result.to_dict())
            if mae_budget:
                console.print(f"MAE budget measured on {record['windows']} held-out windows (of {record['candidate_windows']} distinct) against "
                              f"the recorded actions{'' if record['action_scale'] == 1 else ' / ' + format(record['action_scale'], 'g')}, "
                              "relative to the float ONNX", markup=False)
                render_evaluate_discrimination({"discrimination": result.options["mae_discrimination"], "strict": False},
                                               what="quantized model", strict_hint=False)
            render_budget(search.to_dict(), result.options["int8_share_of_weight_elements"], result.options["int8_share_before_budget"])
            if json_path:
                write_json(json_path, result.to_dict(), schemas.QUANTIZE)
            if not search.met:
                raise typer.Exit(1)
            return
        result = quantize_int8(source, calib_set, output, per_channel=per_channel, method=method,
                               keep_sensitive_fp32=keep_fp32, exclude=exclude or ())
    else:
        result = convert_fp16(source, output, keep_sensitive_fp32=keep_fp32)
    render_quantize(result.to_dict())
    console.print(f"check it: {parity_command(output)}", style="dim", markup=False)
    if json_path:
        write_json(json_path, result.to_dict(), schemas.QUANTIZE)


def parity_command(artifact: Path) -> str:
    """``vla-export parity CKPT ARTIFACT`` with the checkpoint that ``artifact``'s manifest records, where it is found here."""
    import shlex

    from vla_export.artifacts.manifest import read_manifest, recorded_checkpoint

    manifest = read_manifest(artifact, required=False)
    found = recorded_checkpoint(artifact, manifest)
    recorded = ((manifest.source if manifest else None) or {}).get("checkpoint")
    why = (f"the manifest records {recorded!r}, not found here" if recorded else "the manifest records no checkpoint")
    ckpt, note = (shlex.quote(str(found)), "") if found is not None else ("CHECKPOINT", f" (CHECKPOINT: the one it was exported from; {why})")
    part = manifest.part if manifest else None
    if part in ("backbone", "head"):  # a split part runs in the streaming policy: replay checks it
        origin = Path(str((manifest.extra.get("quantized_from") or {}).get("path") or artifact))
        record = origin.with_name(origin.name.removesuffix(f".{part}.onnx") + ".split.json")
        split = record if record.is_file() else "NAME.split.json"
        return f"vla-export replay {ckpt} {shlex.quote(str(split))} EPISODE.h5 --{part} {shlex.quote(str(artifact))}{note}"
    return f"vla-export parity {ckpt} {shlex.quote(str(artifact))}{note}"


def render_budget(search: dict[str, Any], share: float, before: float) -> None:
    b = search["budget"]
    want = ", ".join(f"{k} {v:g}" for k, v in b.items() if v is not None)
    for step in search["steps"]:
        out = ", ".join(step["kept_float"][-1:]) or "(all INT8)"
        rel = step["features_max_row_rel"]
        feats = "" if rel is None else f", features rel {rel:.3g}"
        rise = step.get("actions_mae_increase")
        mae = "" if rise is None else f", MAE rise {rise:+.4g}"
        console.print(f"  {len(step['kept_float'])} out: +{out}: actions max abs {step['actions_max_abs']:.4g}, "
                      f"cosine {step['actions_cosine']:.6f}{feats}{mae} -> {'holds' if step['holds'] else 'over budget'}", markup=False)
    verdict = "met" if search["met"] else "NOT met (every unit is out and it still does not hold)"
    console.print(f"budget ({want}) {verdict}: {len(search['kept_float'])} units kept out of INT8; "
                  f"{100 * share:.1f}% of weight elements INT8 (W8A8 before the budget: {100 * before:.1f}%)",
                  style=None if search["met"] else "red", markup=False)
