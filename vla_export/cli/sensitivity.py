"""``vla-export sensitivity``: a thin layer over vla_export.export.sensitivity (``eval_feeds`` is shared with ``quantize``'s budget)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from vla_export.choices import Precision
from vla_export.artifacts.manifest import Manifest
from vla_export.cli.common import console, write_json
from vla_export.errors import ConfigError




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


def model_role(manifest: Manifest) -> str:
    """What an ONNX manifest says the model is: float, w8a8 (static Q/DQ), int8-weights or fp16."""
    precision = manifest.precision
    options = (manifest.quantization or {}).get("options") or {}
    if precision == Precision.FP16:
        return Precision.FP16
    if precision == Precision.INT8:
        return "int8-weights" if "weights" in options and "calibration" not in options else "w8a8"
    return "float" if not manifest.extra.get("quantized_from") else str(precision)


ROLE_NAMES = {"float": "a float ONNX", "w8a8": "a W8A8 Q/DQ model (quantize --int8)", Precision.FP16: "an FP16 model (quantize --fp16)",
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
    from vla_export.artifacts.onnxfile import OnnxFile, load_onnx
    from vla_export.export.sensitivity import eval_feeds, layer_sensitivity

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
    float_file = OnnxFile(float_onnx)  # read once: the manifest for the windows, the model for the ranking
    feeds, record = eval_feeds(float_file, data, calib.get("frames"), samples, calib_meta=meta)
    float_model = float_file.model()
    ensure_node_names(float_model)
    result = layer_sensitivity(float_model, load_onnx(qdq_onnx), feeds, granularity=granularity, refine=refine,
                               names=(str(float_onnx), str(qdq_onnx)))
    result.data = record
    report = result.to_dict()
    render_sensitivity(report)
    if json_path:
        write_json(json_path, report)
