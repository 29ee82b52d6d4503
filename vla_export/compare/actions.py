"""Action accuracy against recorded actions: per-dimension MAE/RMSE/sign agreement and the honesty rule
(:func:`discrimination`: can these windows tell a broken artifact apart?).

Shared by ``vla-export evaluate`` (verify) and ``quantize --max-mae-increase`` / sensitivity (export); the rule is
argued in :mod:`vla_export.verify.evaluate`'s docstring.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


#: The recorded action columns of a Mobile VLA episode, in order.
DIM_NAMES = ("linear_x", "linear_y", "angular_z")


#: Fewer windows than this and the standard errors the rule rests on are themselves too noisy
#: (their relative error is about 1/sqrt(2(n-1)), ~24% at 10).
MIN_WINDOWS = 10


#: Standard errors by which the checkpoint must beat the best constant action (~97.7% one-sided).
RESOLUTION_Z = 2.0


#: A recorded value above this magnitude is a key press (presses are +-1.15 on the robot; released is 0).
KEY_PRESS = 0.1


def dim_names(n: int) -> list[str]:
    return [DIM_NAMES[i] if i < len(DIM_NAMES) else f"action_{i}" for i in range(n)]


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def action_metrics(pred: np.ndarray, target: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """MAE, RMSE and key-press sign agreement of ``pred`` [N, D] against ``target`` [N, D], per dimension
    and overall (MAE: mean over dimensions; RMSE: over all elements). Non-finite predictions make the
    figures they enter NaN (reported as null) and are counted."""
    err = pred.astype(np.float64) - target.astype(np.float64)
    mae = np.abs(err).mean(axis=0)
    rmse = np.sqrt((err ** 2).mean(axis=0))
    pressed = np.abs(target) > KEY_PRESS
    signs: dict[str, float | None] = {}
    for d, name in enumerate(names):
        rows = pressed[:, d]
        signs[name] = float((np.sign(pred[rows, d]) == np.sign(target[rows, d])).mean()) if rows.any() else None
    return {
        "mae": {**{n: _finite_or_none(v) for n, v in zip(names, mae)}, "overall": _finite_or_none(float(mae.mean()))},
        "rmse": {**{n: _finite_or_none(v) for n, v in zip(names, rmse)}, "overall": _finite_or_none(float(np.sqrt((err ** 2).mean())))},
        "sign_agreement": signs,
        "pressed_windows": {n: int(pressed[:, d].sum()) for d, n in enumerate(names)},
        "nonfinite": int((~np.isfinite(pred)).sum()),
    }


def _se(x: np.ndarray) -> float:
    return float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("inf")


def discrimination(reference: np.ndarray, target: np.ndarray, names: Sequence[str], gate: float | None) -> dict[str, Any]:
    """Can these windows tell a broken artifact apart? (see the module docstring for the rule)."""
    n = len(target)
    dims: dict[str, Any] = {}
    for d, name in enumerate(names):
        y, p = target[:, d].astype(np.float64), reference[:, d].astype(np.float64)
        const = float(np.median(y))
        paired = np.abs(y - const) - np.abs(y - p)  # per window: how much better than the best constant
        headroom, se = float(paired.mean()), _se(paired)
        if np.ptp(y) == 0:
            status, why = "constant", f"the recorded {name} is {const:g} in every window: it cannot show whether an artifact follows the scene"
        elif n < MIN_WINDOWS:
            status, why = "undiscriminating", f"{n} windows, fewer than {MIN_WINDOWS}"
        elif not headroom > 0:
            status, why = "undiscriminating", (f"the checkpoint's MAE is {-headroom:.3g} above the best constant action's "
                                                f"(always {const:g}): an artifact that outputs one action would score as well or better")
        elif not headroom > RESOLUTION_Z * se:
            status, why = "undiscriminating", (f"the checkpoint beats the best constant action by {headroom:.3g} MAE, within "
                                                f"{RESOLUTION_Z:g} standard errors ({RESOLUTION_Z * se:.3g}): an artifact that outputs one action would score the same")
        elif gate is not None and not headroom > gate:
            status, why = "undiscriminating", (f"the checkpoint beats the best constant action by {headroom:.3g} MAE, no more than the "
                                                f"gate {gate:g}: an artifact that outputs one action would pass it")
        else:
            status, why = "discriminating", f"the checkpoint beats the best constant action by {headroom:.3g} MAE (standard error {se:.2g})"
        dims[name] = {"status": status, "why": why, "constant_action": const, "constant_mae": float(np.abs(y - const).mean()),
                      "headroom": headroom, "headroom_se": se if math.isfinite(se) else None}
    varying = [v for v in dims.values() if v["status"] != "constant"]
    conclusive = bool(varying) and all(v["status"] == "discriminating" for v in varying)
    return {"rule": (f"per dimension: at least {MIN_WINDOWS} windows, and the checkpoint's MAE below the best constant action's "
                     f"(the recorded median) by more than {RESOLUTION_Z:g} standard errors of the paired difference"
                     + (" and by more than the gate" if gate is not None else "")
                     + "; dimensions constant in the recording are left out; conclusive when at least one dimension is left and all left discriminate"),
            "min_windows": MIN_WINDOWS, "z": RESOLUTION_Z, "windows": n, "conclusive": conclusive, "dims": dims}
