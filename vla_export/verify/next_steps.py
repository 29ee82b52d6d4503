"""What to do when INT8 parity fails: the commands that exist, filled in from the artifact's manifest.

A failed INT8 check used to end the road. The quantized model's manifest records the float ONNX it was
quantized from (``quantized_from``) and, for W8A8, its calibration set (``quantization.options.calibration``),
so every next step can be given as a command that runs as printed: rank the layers by the error each adds
(``sensitivity``), keep the worst ones in float until the parity tolerance holds (``quantize --int8
--max-action-error``), weight-only INT8 (``--int8-weights``) or FP16, each followed by its parity check.
A value the manifest does not hold is written as a placeholder in capitals and said so.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vla_export.data.iospec import ACTIONS, FEATURES
from vla_export.choices import Precision
from vla_export.artifacts.manifest import Manifest
from vla_export.artifacts.kinds import default_output
from vla_export.compare.tolerance import Tolerance

QUANTIZED = (Precision.INT8, Precision.INT8W)


@dataclass(frozen=True)
class NextStep:
    what: str
    commands: list[str]
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class NextSteps:
    artifact: str
    steps: list[NextStep] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # what the manifest did not record (placeholders in the commands)

    def to_dict(self) -> dict[str, Any]:
        return {"artifact": self.artifact, "steps": [s.to_dict() for s in self.steps], "missing": self.missing}


def _cmd(*words: Any) -> str:
    return shlex.join(str(w) for w in words if w is not None)


def int8_next_steps(artifact: str | Path, manifest: Manifest | None, *, reference: str | Path, tolerance: Tolerance,
                    data: Sequence[str | Path] | None = None, outputs: Sequence[str] = (ACTIONS,), located: bool = False,
                    precision: str | None = None) -> NextSteps:
    """The next steps after a failed parity check of the quantized ``artifact`` against ``reference`` (the
    checkpoint or saved reference the check used), with the tolerance it failed and the ``data`` it ran on.
    ``precision`` (the check's) stands in for the manifest's only where there is no manifest."""
    artifact = Path(artifact)
    precision = manifest.precision if manifest is not None else precision
    recorded = {} if manifest is None else {"quantized_from": manifest.extra.get("quantized_from"), "quantization": manifest.quantization}
    out = NextSteps(str(artifact))
    if precision not in QUANTIZED:
        return out
    float_onnx = (recorded.get("quantized_from") or {}).get("path")
    if not float_onnx:
        out.missing.append("the float ONNX it was quantized from (quantized_from): FLOAT.onnx below")
        float_onnx = "FLOAT.onnx"
    calib = (((recorded.get("quantization") or {}).get("options") or {}).get("calibration") or {}).get("path")
    data_args = [w for d in data or [] for w in ("--data", str(d))]
    float_path = Path(float_onnx)

    def check(candidate: Path) -> str:
        return _cmd("vla-export", "parity", reference, candidate, *data_args)

    budget = ["--max-action-error", f"{tolerance.atol:g}", "--min-cosine", f"{tolerance.min_cosine:g}"]
    if FEATURES in outputs and tolerance.max_row_rel_error is not None:
        budget += ["--max-feature-rel-error", f"{tolerance.max_row_rel_error:g}"]
    budgeted = float_path.with_name(f"{float_path.stem}.int8-budget.onnx")
    if not located:
        out.steps.append(NextStep("see where it diverges and which layer adds the most error",
                                  [_cmd("vla-export", "parity", reference, artifact, *data_args, "--locate")]))
    if precision == Precision.INT8:
        if not calib:
            out.missing.append("the calibration set (quantization.options.calibration): CALIB.npz below")
            calib = "CALIB.npz"
        out.steps.append(NextStep("rank the quantized layers by the error each adds alone (held-out windows)",
                                  [_cmd("vla-export", "sensitivity", float_onnx, artifact, *data_args)]))
        out.steps.append(NextStep(
            "keep the most sensitive layers in float until the parity tolerance holds (an accuracy budget)",
            [_cmd("vla-export", "quantize", float_onnx, "--int8", "--calib", calib, *budget, *data_args, "-o", budgeted), check(budgeted)],
            note=("the budget picks its layers on these --data windows: check parity on other held-out episodes too for an independent verdict"
                  if data else "the budget is judged on the calibration episodes' other frames (--data EPISODES to choose)")))
        weight_only = default_output(float_onnx, Precision.INT8W)
        out.steps.append(NextStep("weight-only INT8 (activations stay float, no calibration; most of INT8's batch-1 speed)",
                                  [_cmd("vla-export", "quantize", float_onnx, "--int8-weights"), check(weight_only)]))
    else:  # weight-only failed: W8A8 will not do better without a budget, and needs a calibration set
        episodes = [str(d) for d in data or []] or ["EPISODES"]
        if not data:
            out.missing.append("episodes to calibrate on: EPISODES below")
        calib_path = f"calibration/{float_path.stem}.npz"
        out.steps.append(NextStep(
            "W8A8 with an accuracy budget: calibrate, then keep the most sensitive layers in float until the tolerance holds",
            [_cmd("vla-export", "calib", *episodes, "--onnx", float_onnx, "-o", calib_path),
             _cmd("vla-export", "quantize", float_onnx, "--int8", "--calib", calib_path, *budget, *data_args, "-o", budgeted), check(budgeted)],
            note="use episodes for calibration other than the ones parity evaluates on"))
    out.steps.append(NextStep("FP16 (no calibration; half the weight bytes)",
                              [_cmd("vla-export", "quantize", float_onnx, "--fp16"), check(default_output(float_onnx, Precision.FP16))]))
    return out
