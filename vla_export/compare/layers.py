"""Locate's per-layer rule: how far one layer's output is from the reference's, judged on the layer's scale.

Not the parity rule. Parity judges every element of an output (``|cand - ref| <= atol + rtol * |ref|``, see
:mod:`vla_export.compare.comparator`); a layer deep in the graph has activations in its own units, so locate
judges the layer's largest error against the bound scaled by the layer's largest reference magnitude:
``max|cand - ref| <= atol + rtol * max|ref|``, and the cosine against ``min_cosine``. Its name says which rule it is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vla_export.compare.comparator import cosine
from vla_export.compare.tolerance import Tolerance

_TINY = 1e-12


def layer_bound(tol: Tolerance, ref_max_abs: float) -> float:
    """The largest error a layer whose reference reaches ``ref_max_abs`` may have: ``atol + rtol * max|ref|``."""
    return tol.atol + tol.rtol * ref_max_abs


def share_of_bound(max_abs: float, ref_max_abs: float, tol: Tolerance) -> float:
    """``max_abs`` as a share of the layer's bound (1.0 = exactly at it)."""
    return max_abs / max(layer_bound(tol, ref_max_abs), _TINY)


@dataclass(frozen=True)
class LayerError:
    """One layer's error over all samples, by the per-layer rule."""

    max_abs: float
    mean_abs: float
    ref_max_abs: float
    rel_err: float  # max_abs / ref_max_abs: comparable across layers of different scale
    cosine: float
    over: bool  # max_abs > atol + rtol * ref_max_abs, or cosine < min_cosine


def layer_error(refs: Sequence[np.ndarray], cands: Sequence[np.ndarray], tol: Tolerance) -> LayerError:
    """Compare a layer's outputs (one array per sample) with the reference's by the per-layer rule."""
    ref = np.concatenate([r.ravel() for r in refs]).astype(np.float64)
    cand = np.concatenate([c.ravel() for c in cands]).astype(np.float64)
    diff = np.abs(cand - ref)
    max_abs = math.inf if np.isnan(diff).any() else float(diff.max()) if diff.size else 0.0
    ref_max = float(np.abs(ref).max()) if ref.size else 0.0
    cos = cosine(ref, cand) if np.isfinite(cand).all() else 0.0
    return LayerError(max_abs=max_abs, mean_abs=float(np.nanmean(diff)) if diff.size else 0.0, ref_max_abs=ref_max,
                      rel_err=max_abs / max(ref_max, _TINY), cosine=cos,
                      over=bool(not max_abs <= layer_bound(tol, ref_max) or cos < tol.min_cosine))
