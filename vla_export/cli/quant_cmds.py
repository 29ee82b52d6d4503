"""``vla-export sensitivity`` and the accuracy-budget part of ``quantize``: thin layers over vla_export.export.sensitivity."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from vla_export.artifacts.manifest import Manifest
from vla_export.cli.common import console, write_json
from vla_export.errors import ConfigError, DataError


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


def eval_feeds(onnx: Path, data: Optional[list[Path]], calib_frames, samples: int, *, calib_meta=None, option: str = "--samples",
               at_most: bool = False):
    # calib_meta: the calibration set's meta (its windows name the episode files it sampled)
    """Held-out windows for ``onnx``'s policy: from ``data``, else the calibration set's own episodes,
    in both cases disjoint from ``calib_frames``. Config and window come from the ONNX manifest."""
    from vla_export.artifacts.manifest import read_manifest
    from vla_export.export.sensitivity import held_out_feeds

    manifest = read_manifest(onnx, kind="onnx")
    if manifest.config is None:
        raise ConfigError(f"{onnx}: its manifest records no policy config")
    config = manifest.config
    window = manifest.window or config.window
    if not data:
        episodes = sorted({w["episode"] for w in (calib_meta or {}).get("windows", [])})
        if not episodes:
            raise ConfigError("give --data EPISODES to evaluate on (held-out windows)")
        data = [Path(e) for e in episodes]
    try:
        return held_out_feeds(list(data), config, calib_frames, count=samples, window=window, option=option, at_most=at_most)
    except DataError as exc:
        raise DataError(f"{exc}; pass --data with episodes the calibration set did not use") from None


def render_sensitivity(r: dict[str, Any], limit: int = 20) -> None:
    """One line per unit (names are long module paths: a fixed-width table would cut them)."""
    def errs(e: dict[str, Any]) -> str:
        rel = "-" if e["features_max_row_rel"] is None else f"{e['features_max_row_rel']:.3g}"
        return (f"actions max abs {e['actions_max_abs']:.3g}, mean abs {e['actions_mean_abs']:.3g}, "
                f"cosine {e['actions_cosine']:.6f}, features rel {rel}")

    console.print(f"INT8 sensitivity ({r['granularity']}): each unit alone in INT8 against the float model, "
                  f"{r['windows']} held-out windows, exact Q/DQ arithmetic; worst first", markup=False)
    for i, u in enumerate(r["ranking"][:limit], 1):
        console.print(f"{i:3d}. {u['name']} ({len(u['nodes'])} nodes, {u['weight_elements']:,} weights): {errs(u)}", markup=False)
    if len(r["ranking"]) > limit:
        console.print(f"     ({len(r['ranking']) - limit} more units in the JSON)", markup=False)
    console.print(f"all INT8: {errs(r['full_int8'])}; {r['evaluations']} evaluations in {r['seconds']:.1f} s", markup=False)


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


def model_role(manifest: Manifest) -> str:
    """What an ONNX manifest says the model is: float, w8a8 (static Q/DQ), int8-weights or fp16."""
    precision = manifest.precision
    options = (manifest.quantization or {}).get("options") or {}
    if precision == "fp16":
        return "fp16"
    if precision == "int8":
        return "int8-weights" if "weights" in options and "calibration" not in options else "w8a8"
    return "float" if not manifest.extra.get("quantized_from") else str(precision)


ROLE_NAMES = {"float": "a float ONNX", "w8a8": "a W8A8 Q/DQ model (quantize --int8)", "fp16": "an FP16 model (quantize --fp16)",
              "int8-weights": "a weight-only INT8 model (quantize --int8-weights: its activations are float, nothing to rank)"}


def check_pair(float_onnx: Path, float_manifest: Manifest, qdq_onnx: Path, manifest: Manifest) -> None:
    """``sensitivity FLOAT QDQ``: the first a float ONNX, the second a W8A8 model quantized from it; else say what each is."""
    roles = model_role(float_manifest), model_role(manifest)
    if roles == ("w8a8", "float"):
        raise ConfigError(f"the arguments are swapped: {float_onnx} is {ROLE_NAMES['w8a8']}, {qdq_onnx} {ROLE_NAMES['float']}; "
                          f"give the float one first: vla-export sensitivity {qdq_onnx} {float_onnx}")
    if roles[0] != "float":
        raise ConfigError(f"{float_onnx}: {ROLE_NAMES.get(roles[0], roles[0])}; the first argument is the float ONNX the "
                          "W8A8 model was quantized from")
    if roles[1] != "w8a8":
        raise ConfigError(f"{qdq_onnx}: {ROLE_NAMES.get(roles[1], roles[1])}; the second argument is a W8A8 Q/DQ model "
                          f"(vla-export quantize {float_onnx} --int8 --calib SET)")
    source = manifest.extra.get("quantized_from") or {}
    if source.get("sha256"):
        from vla_export.fileio import sha256_file

        if source["sha256"] != sha256_file(float_onnx):
            raise ConfigError(f"{qdq_onnx} was quantized from {source.get('path')}, not from {float_onnx} (sha256 differs)")


def sensitivity(
    float_onnx: Path = typer.Argument(..., help="The float ONNX the Q/DQ model was quantized from."),
    qdq_onnx: Path = typer.Argument(..., help="The W8A8 Q/DQ ONNX (vla-export quantize --int8)."),
    data: Optional[list[Path]] = typer.Option(None, "--data", help="Episodes to evaluate on (default: the calibration set's, other frames)."),
    samples: int = typer.Option(8, "--samples", help="Held-out windows."),
    granularity: str = typer.Option("auto", "--granularity", help="layer, block, or auto (blocks, then the layers of the worst blocks)."),
    refine: int = typer.Option(2, "--refine", help="With auto: how many of the worst blocks are split into layers."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the ranking as JSON."),
) -> None:
    """Rank the quantized layers of a Q/DQ model by the error each adds alone, on held-out windows."""
    from vla_export.cli import checks
    from vla_export.artifacts.manifest import read_manifest
    from vla_export.artifacts.graph import ensure_node_names
    from vla_export.artifacts.onnxfile import load_onnx
    from vla_export.export.sensitivity import layer_sensitivity

    from vla_export.export.sensitivity import GRANULARITIES

    checks.at_least(1, samples=samples)
    checks.at_least(0, refine=refine)
    if granularity not in GRANULARITIES:
        raise ConfigError(f"--granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    checks.input_file(float_onnx, "ONNX")
    checks.input_file(qdq_onnx, "ONNX")
    checks.input_paths(data, "data")
    checks.output_file(json_path)
    float_manifest, manifest = read_manifest(float_onnx, kind="onnx"), read_manifest(qdq_onnx, kind="onnx")
    check_pair(float_onnx, float_manifest, qdq_onnx, manifest)
    calib = ((manifest.quantization or {}).get("options") or {}).get("calibration")
    if not isinstance(calib, dict):
        raise ConfigError(f"{qdq_onnx}: a W8A8 model whose manifest records no calibration set (quantize it again with this version)")
    meta = None
    if not data and calib.get("path") and Path(calib["path"]).is_file():
        from vla_export.data.calibration import load_calibration_set

        meta = load_calibration_set(calib["path"]).meta
    feeds, record = eval_feeds(float_onnx, data, calib.get("frames"), samples, calib_meta=meta)
    float_model = load_onnx(float_onnx)
    ensure_node_names(float_model)
    result = layer_sensitivity(float_model, load_onnx(qdq_onnx), feeds, granularity=granularity, refine=refine,
                               names=(str(float_onnx), str(qdq_onnx)))
    result.data = record
    report = result.to_dict()
    render_sensitivity(report)
    if json_path:
        write_json(json_path, report)
