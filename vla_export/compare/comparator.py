"""The comparator: one output of a reference against a candidate, and two runners over the same feeds.

An element passes when ``|cand - ref| <= atol + rtol * |ref|`` (numpy's allclose rule); an output
passes when every element does and the cosine similarity of the whole output is at least
``min_cosine``. For ``actions`` the sign of each action must also agree on at least
``min_sign_agreement`` of the elements whose reference magnitude exceeds ``atol`` (a sign flip
drives the robot the other way; signs of near-zero actions are noise and not counted).

Intermediate outputs (``features``) of an INT8 artifact are judged differently: an INT8 model is a
different model by design, and an elementwise ``atol`` on an internal feature in arbitrary units
flags harmless rounding in large elements while saying nothing about direction. With
``Tolerance.max_row_rel_error`` set (the int8 default), such an output passes when every row (one
frame's feature vector) has a relative L2 error ``||cand - ref|| / ||ref||`` of at most that bound and
the whole output reaches ``min_cosine``; actions, in physical units, keep the elementwise rule.

Used by verify (parity, pair, saved references), export (split, sensitivity) and bench (the parity column).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sized
from dataclasses import dataclass, field
import dataclasses
from typing import Any

import numpy as np

from vla_export.data.iospec import ACTIONS, FEATURES, PIXEL_VALUES
from vla_export.choices import Precision
from vla_export.compare.tolerance import DISCRIMINATION, Tolerance, tolerance_for
from vla_export.errors import ArtifactError, ConfigError
from vla_export.progress import counted


@dataclass
class OutputParity:
    """Errors of one output over all samples (candidate minus reference)."""

    name: str
    shape: list[int]  # of one sample
    max_abs: float
    mean_abs: float
    p99_abs: float
    max_rel: float
    cosine: float
    ref_std: float  # spread of the reference across samples: a near-constant output proves little
    violations: int  # elements outside atol + rtol * |ref|
    passed: bool
    mae_per_dim: list[float] | None = None  # actions only, in action units
    sign_agreement: list[float] | None = None  # actions only, per dimension
    max_row_rel: float = 0.0  # worst ||cand - ref|| / ||ref|| over rows (one frame's vector, one action)
    rule: str = "elementwise"  # or "relative" (intermediate outputs under Tolerance.max_row_rel_error)
    #: NaN/Inf elements per side ({"reference": n, "candidate": m}) when there are any: a failure by
    #: itself; the error statistics above are then over the elements finite on both sides.
    nonfinite: dict[str, int] | None = None

    @property
    def failure(self) -> str | None:
        """Why a non-finite output failed, in words (None when all values are finite)."""
        if not self.nonfinite:
            return None
        sides = " and ".join(f"{n:,} in the {side}" for side, n in self.nonfinite.items() if n)
        return f"non-finite values (NaN/Inf): {sides}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"failure": self.failure}


@dataclass
class ParityResult:
    reference: dict[str, Any]
    candidate: dict[str, Any]
    precision: str
    tolerance: Tolerance
    samples: int
    outputs: dict[str, OutputParity] = field(default_factory=dict)
    label: str = "parity"
    #: Other measurements of the same comparison that do NOT decide the verdict (e.g. a Q/DQ model
    #: through onnxruntime's fused int8 kernels, beside the exact Q/DQ arithmetic the verdict uses).
    also_measured: dict[str, Any] = field(default_factory=dict)
    strict: bool = False  # an inconclusive comparison (see ``undiscriminating``) fails
    #: Outputs compared under their own tolerance (``--atol actions:0.05``); the others under ``tolerance``.
    output_tolerances: dict[str, Tolerance] = field(default_factory=dict)

    def tolerance_of(self, name: str) -> Tolerance:
        return self.output_tolerances.get(name, self.tolerance)

    @property
    def undiscriminating(self) -> list[str]:
        return undiscriminating_outputs(self)

    @property
    def conclusive(self) -> bool:
        return not self.undiscriminating

    @property
    def passed(self) -> bool:
        return bool(self.outputs) and all(o.passed for o in self.outputs.values()) and (self.conclusive or not self.strict)

    def summary(self) -> str:
        parts = [f"{o.name}: " + (o.failure or f"max abs {o.max_abs:.3g}, cosine {o.cosine:.6f}") + ("" if o.passed else " FAIL")
                 for o in self.outputs.values()]
        note = "" if self.conclusive else f"; inconclusive: {', '.join(self.undiscriminating)} barely vary across samples"
        return f"{'pass' if self.passed else 'FAIL'} over {self.samples} samples ({'; '.join(parts)}){note}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "passed": self.passed,
            "precision": self.precision,
            "tolerance": self.tolerance.to_dict(),
            "output_tolerances": {k: v.to_dict() for k, v in self.output_tolerances.items()},
            "samples": self.samples,
            "conclusive": self.conclusive,
            "undiscriminating": self.undiscriminating,
            "discrimination": DISCRIMINATION,
            "strict": self.strict,
            "reference": self.reference,
            "candidate": self.candidate,
            "outputs": {k: v.to_dict() for k, v in self.outputs.items()},
            "also_measured": self.also_measured,
        }


def undiscriminating_outputs(result: ParityResult) -> list[str]:
    """Outputs whose reference spread across samples is under ``DISCRIMINATION * atol``.

    On such outputs a pass proves little: an artifact that returns a constant near the reference's mean
    (or one sample run with a wrong config) would pass too. One sample always lands here (spread 0).
    """
    # Outputs judged by relative error per row (INT8 features) have no atol to compare the spread with.
    return [o.name for o in result.outputs.values()
            if o.rule == "elementwise" and not o.ref_std > DISCRIMINATION * result.tolerance_of(o.name).atol]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two flat arrays; 1.0 when both are zero, 0.0 when only one is."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


def _rows(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([a.reshape(-1, a.shape[-1]) if a.ndim > 1 else a.reshape(-1, 1) for a in arrays])


def _max_row_rel(ref: np.ndarray, cand: np.ndarray) -> float:
    """Worst relative L2 error over rows of the last axis; NaN anywhere gives inf (a failure)."""
    if ref.size == 0:
        return 0.0
    r = ref.reshape(-1, ref.shape[-1]) if ref.ndim > 1 else ref.reshape(1, -1)
    c = cand.reshape(r.shape)
    norms = np.linalg.norm(r, axis=1)
    floor = max(1e-6 * float(norms.mean()), 1e-12)  # an all-zero reference row: absolute error instead
    rel = np.linalg.norm(c - r, axis=1) / np.maximum(norms, floor)
    return float(np.max(rel)) if np.isfinite(rel).all() else float("inf")


def compare_output(name: str, ref: np.ndarray, cand: np.ndarray, tol: Tolerance, *, shape: list[int] | None = None) -> OutputParity:
    """Compare stacked outputs ``[N, ...]`` (N rows over all samples); ``shape`` is one sample's, for the report."""
    ref = ref.astype(np.float64)
    cand = cand.astype(np.float64)
    finite_r, finite_c = np.isfinite(ref), np.isfinite(cand)
    nonfinite = {"reference": int((~finite_r).sum()), "candidate": int((~finite_c).sum())}
    if any(nonfinite.values()):  # compare what is finite on both sides; the output fails anyway
        both = finite_r & finite_c
        ref, cand = np.where(both, ref, 0.0), np.where(both, cand, 0.0)
    diff = np.abs(cand - ref)
    bound = tol.atol + tol.rtol * np.abs(ref)
    violations = int(np.count_nonzero(~(diff <= bound)))  # NaN counts as a violation
    cos = cosine(ref.ravel(), cand.ravel())
    rel = diff / np.maximum(np.abs(ref), 1e-6)
    violations += int(np.count_nonzero(~(finite_r & finite_c))) if any(nonfinite.values()) else 0
    max_row_rel = _max_row_rel(ref, cand)
    rule = "relative" if name != ACTIONS and tol.max_row_rel_error is not None else "elementwise"
    if rule == "relative":
        passed = bool(max_row_rel <= tol.max_row_rel_error) and cos >= tol.min_cosine
    else:
        passed = violations == 0 and cos >= tol.min_cosine
    passed = passed and not any(nonfinite.values())
    mae = signs = None
    if name == ACTIONS:
        flat_r, flat_c = ref.reshape(ref.shape[0], -1), cand.reshape(cand.shape[0], -1)
        mae = np.abs(flat_c - flat_r).mean(axis=0).tolist()
        signs = []
        for d in range(flat_r.shape[1]):
            meaningful = np.abs(flat_r[:, d]) > tol.atol
            agree = np.sign(flat_r[meaningful, d]) == np.sign(flat_c[meaningful, d])
            signs.append(float(agree.mean()) if meaningful.any() else 1.0)
        passed = passed and min(signs) >= tol.min_sign_agreement
    return OutputParity(
        name=name, shape=shape if shape is not None else list(ref.shape[1:]),
        max_abs=float(np.nanmax(diff)) if diff.size else 0.0, mean_abs=float(np.nanmean(diff)) if diff.size else 0.0,
        p99_abs=float(np.nanpercentile(diff, 99)) if diff.size else 0.0, max_rel=float(np.nanmax(rel)) if rel.size else 0.0,
        cosine=cos, ref_std=float(ref.std(axis=0).mean()) if ref.shape[0] > 1 else 0.0,
        violations=violations, passed=bool(passed), mae_per_dim=mae, sign_agreement=signs,
        max_row_rel=max_row_rel, rule=rule,
        nonfinite=nonfinite if any(nonfinite.values()) else None,
    )


def check_compatible(reference, candidate) -> list[str]:
    """Outputs to compare: those the two runners share. Raises :class:`ArtifactError` on mismatched I/O,
    or when the candidate lacks the reference's first output (the one that matters)."""
    what = candidate.path or candidate.name
    if set(reference.input_names) != set(candidate.input_names):
        raise ArtifactError(
            f"{what}: inputs {list(candidate.input_names)} do not match the policy's {list(reference.input_names)}"
        )
    shared = [n for n in reference.output_names if n in candidate.output_names]
    primary = reference.output_names[0]  # ``actions`` of a policy, ``feature`` of a backbone part
    if primary not in shared:
        raise ArtifactError(f"{what}: outputs {list(candidate.output_names)} have no {primary!r}")
    return shared


def compare_runners(
    reference,
    candidate,
    feeds: Iterable[Mapping[str, np.ndarray]],
    *,
    precision: str = Precision.FP32,
    tolerance: Tolerance | None = None,
    label: str = "parity",
    output_tolerances: Mapping[str, Tolerance] | None = None,
) -> ParityResult:
    """Run both (already active) runners on every feed and compare the outputs they share.

    ``output_tolerances`` (output name -> Tolerance) overrides ``tolerance`` for those outputs; a name that
    is not a compared output is refused before anything runs."""
    tol = tolerance or tolerance_for(precision)
    names = check_compatible(reference, candidate)
    per_output = dict(output_tolerances or {})
    unknown = sorted(set(per_output) - set(names))
    if unknown:
        raise ConfigError(f"per-output tolerance for {', '.join(map(repr, unknown))}: the compared outputs are "
                          f"{', '.join(map(repr, names))}")
    refs: dict[str, list[np.ndarray]] = {n: [] for n in names}
    cands: dict[str, list[np.ndarray]] = {n: [] for n in names}
    samples = 0
    total = len(feeds) if isinstance(feeds, Sized) else None
    with counted("running the reference and the candidate", total, "samples") as advance:
        for feed in feeds:
            r, c = reference.infer(feed), candidate.infer(feed)
            for n in names:
                if r[n].shape != c[n].shape:
                    raise ArtifactError(
                        f"{candidate.name}: output '{n}' has shape {tuple(c[n].shape)}, the checkpoint's policy gives "
                        f"{tuple(r[n].shape)}: the artifact was not exported from this checkpoint"
                    )
                refs[n].append(r[n])
                cands[n].append(c[n])
            samples += 1
            advance(1)
    if samples == 0:
        raise ConfigError("parity needs at least one sample")
    # Rows of the last axis (frames for features [B, T, F]): samples may differ in batch and window.
    outputs = {
        n: compare_output(n, _rows(refs[n]), _rows(cands[n]), per_output.get(n, tol), shape=list(refs[n][0].shape[1:]))
        for n in names
    }
    return ParityResult(reference.describe(), candidate.describe(), precision, tol, samples, outputs, label,
                        output_tolerances=per_output)


def check_against_config(candidate, config) -> None:
    """Static checks that an artifact fits a policy config, where the runner exposes shapes."""
    ins, outs = candidate.input_shapes, candidate.output_shapes
    pv = ins.get(PIXEL_VALUES)
    if pv and len(pv) == 5 and all(isinstance(d, int) for d in pv[2:]) and tuple(pv[2:]) != (3, config.image_size, config.image_size):
        raise ArtifactError(f"{candidate.name}: takes images {pv[2:]}, the checkpoint's policy takes [3, {config.image_size}, {config.image_size}]")
    checks = ((ACTIONS, config.action_dim, "action_dim"), (FEATURES, config.frame_feature_dim, "feature width"))
    for name, expected, what in checks:
        shape = outs.get(name)
        if shape and isinstance(shape[-1], int) and shape[-1] != expected:
            raise ArtifactError(
                f"{candidate.name}: output '{name}' has {what} {shape[-1]}, the checkpoint's policy has {expected}: "
                "the artifact was not exported from this checkpoint"
            )
