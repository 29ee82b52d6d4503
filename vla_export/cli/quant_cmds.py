"""``vla-export sensitivity`` and the accuracy-budget part of ``quantize``: thin layers over vla_export.export.sensitivity."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from vla_export.cli.common import console, write_json
from vla_export.errors import ConfigError, DataError


def eval_feeds(onnx: Path, data: Optional[list[Path]], calib_frames, samples: int, *, calib_meta=None):
    # calib_meta: the calibration set's meta (its windows name the episode files it sampled)
    """Held-out windows for ``onnx``'s policy: from ``data``, else the calibration set's own episodes,
    in both cases disjoint from ``calib_frames``. Config and window come from the ONNX manifest."""
    from vla_export.manifest import read_manifest
    from vla_export.export.sensitivity import held_out_feeds
    from vla_export.models.config import PolicyConfig

    manifest = read_manifest(onnx, kind="onnx")
    if not manifest.get("config"):
        raise ConfigError(f"{onnx}: its manifest records no policy config")
    config = PolicyConfig.from_dict(manifest["config"])
    window = manifest.get("window") or config.window
    if not data:
        episodes = sorted({w["episode"] for w in (calib_meta or {}).get("windows", [])})
        if not episodes:
            raise ConfigError("give --data EPISODES to evaluate on (held-out windows)")
        data = [Path(e) for e in episodes]
    try:
        return held_out_feeds(list(data), config, calib_frames, count=samples, window=window)
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
        console.print(f"  {len(step['kept_float'])} out: +{out}: actions max abs {step['actions_max_abs']:.4g}, "
                      f"cosine {step['actions_cosine']:.6f}{feats} -> {'holds' if step['holds'] else 'over budget'}", markup=False)
    verdict = "met" if search["met"] else "NOT met (every unit is out and it still does not hold)"
    console.print(f"budget ({want}) {verdict}: {len(search['kept_float'])} units kept out of INT8; "
                  f"{100 * share:.1f}% of weight elements INT8 (W8A8 before the budget: {100 * before:.1f}%)",
                  style=None if search["met"] else "red", markup=False)


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
    from vla_export.manifest import read_manifest
    from vla_export.export.quantize import ensure_node_names
    from vla_export.onnxfile import load_onnx
    from vla_export.export.sensitivity import layer_sensitivity

    manifest = read_manifest(qdq_onnx, kind="onnx")
    calib = ((manifest.get("quantization") or {}).get("options") or {}).get("calibration")
    if not isinstance(calib, dict):
        raise ConfigError(f"{qdq_onnx}: its manifest records no calibration set (quantize it again with this version)")
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
