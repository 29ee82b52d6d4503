"""Parity: does a candidate backend compute what the PyTorch policy computes, on the same inputs?

One code path for every backend: a reference runner and a candidate runner (ONNX Runtime, TensorRT,
another torch precision) are fed the same samples and every output they share is compared. The
result is a value (:class:`ParityResult`, ``to_dict`` -> JSON); rendering belongs to the CLI.

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
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vla_export.errors import ArtifactError, ConfigError
from vla_export.models.config import check_same_config  # noqa: F401 - parity's API (used by parity_check)
from vla_export.precision import DEFAULT_TOLERANCES, DISCRIMINATION, PRECISIONS, Tolerance, tolerance_for  # noqa: F401 - parity's API
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


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
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
    cos = _cosine(ref.ravel(), cand.ravel())
    rel = diff / np.maximum(np.abs(ref), 1e-6)
    violations += int(np.count_nonzero(~(finite_r & finite_c))) if any(nonfinite.values()) else 0
    max_row_rel = _max_row_rel(ref, cand)
    rule = "relative" if name != "actions" and tol.max_row_rel_error is not None else "elementwise"
    if rule == "relative":
        passed = bool(max_row_rel <= tol.max_row_rel_error) and cos >= tol.min_cosine
    else:
        passed = violations == 0 and cos >= tol.min_cosine
    passed = passed and not any(nonfinite.values())
    mae = signs = None
    if name == "actions":
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
    precision: str = "fp32",
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


def feeds_from(source, samples: int) -> list[dict[str, np.ndarray]]:
    """``source.sample(i)`` for i < samples (any object with the SyntheticSource ``sample`` interface)."""
    return [source.sample(i) for i in range(samples)]


def artifact_window(candidate, default: int) -> int:
    """The fixed window of the candidate's ``pixel_values`` when it declares one, else ``default``."""
    shapes: Sequence[Any] = candidate.input_shapes.get("pixel_values", [])
    if len(shapes) == 5 and isinstance(shapes[1], int):
        return shapes[1]
    return default


def check_against_config(candidate, config) -> None:
    """Static checks that an artifact fits a policy config, where the runner exposes shapes."""
    ins, outs = candidate.input_shapes, candidate.output_shapes
    pv = ins.get("pixel_values")
    if pv and len(pv) == 5 and all(isinstance(d, int) for d in pv[2:]) and tuple(pv[2:]) != (3, config.image_size, config.image_size):
        raise ArtifactError(f"{candidate.name}: takes images {pv[2:]}, the checkpoint's policy takes [3, {config.image_size}, {config.image_size}]")
    checks = (("actions", config.action_dim, "action_dim"), ("features", config.frame_feature_dim, "feature width"))
    for name, expected, what in checks:
        shape = outs.get(name)
        if shape and isinstance(shape[-1], int) and shape[-1] != expected:
            raise ArtifactError(
                f"{candidate.name}: output '{name}' has {what} {shape[-1]}, the checkpoint's policy has {expected}: "
                "the artifact was not exported from this checkpoint"
            )


def candidate_options(artifact, qdq: str, runner_opts: dict | None) -> tuple[dict, bool]:
    """(runner options, is an ONNX) for a parity candidate: ``qdq`` (exact, kernels or both) checked, and an ONNX
    run with the verdict's Q/DQ arithmetic (exact unless kernels; ``both`` adds the kernels run after)."""
    from vla_export.backends.select import artifact_kind

    if qdq not in ("exact", "kernels", "both"):
        raise ConfigError(f"qdq must be exact, kernels or both, got {qdq!r}")
    opts = dict(runner_opts or {})
    is_onnx = artifact_kind(artifact) == "onnx"
    if is_onnx:
        opts.setdefault("qdq", "kernels" if qdq == "kernels" else "exact")
    return opts, is_onnx


def parity_check(
    policy_loader,
    artifact,
    *,
    samples: int = 8,
    data=None,
    seed: int = 0,
    batch: int = 1,
    precision: str | None = None,
    tolerance: Tolerance | None = None,
    runner_opts: Mapping[str, Any] | None = None,
    strict: bool = False,
    qdq: str = "exact",
    wrap_reference: Any = None,
    output_tolerances: Mapping[str, Tolerance] | None = None,
) -> ParityResult:
    """PyTorch policy (from ``policy_loader()``) vs the runner for ``artifact`` on ``samples`` inputs.

    The artifact's recorded config must equal the reference's (:func:`~vla_export.models.config.check_same_config`). With
    ``strict``, a comparison that cannot tell a broken artifact apart (:func:`undiscriminating_outputs`)
    fails instead of passing with a note.

    Inputs come from :class:`~vla_export.data.source.SyntheticSource` or, with ``data`` (episode files
    or folders), from recorded frames. ``precision`` defaults to the one the artifact's manifest
    records, else fp32. Per-frame ``features`` are compared too when the artifact exports them.

    ``qdq`` (ONNX artifacts): "exact" runs Q/DQ graphs with onnxruntime's int8 fusions off, so the
    verdict measures the quantization and not the CPU's int8 kernels (see
    :data:`vla_export.backends.onnxrt.QDQ_MODES`); "kernels" measures the fused kernels instead;
    "both" decides on exact and records the kernels' errors in ``also_measured``.
    ``wrap_reference`` wraps the PyTorch runner (e.g. :class:`vla_export.verify.reference.RecordingRunner`).
    ``output_tolerances``: per-output tolerances (see :func:`compare_runners`).
    """
    from vla_export.backends.select import runner_for_artifact
    from vla_export.backends.torch_runner import TorchRunner
    from vla_export.data.source import SyntheticSource
    from vla_export.manifest import read_manifest

    manifest = read_manifest(artifact, required=False)
    precision = precision or (manifest or {}).get("precision", "fp32")
    tol = tolerance or tolerance_for(precision)
    opts, is_onnx = candidate_options(artifact, qdq, runner_opts)
    loaded = policy_loader()
    cfg = loaded.config
    config_check = check_same_config(artifact, (manifest or {}).get("config"), cfg)
    with runner_for_artifact(artifact, **opts) as cand:
        check_against_config(cand, cfg)
        window = artifact_window(cand, cfg.window)
        held_out = None
        if data:
            from vla_export.data.episodes import EpisodeSource

            source = EpisodeSource(data, cfg, seed=seed, window=window, batch=batch)
            if (manifest or {}).get("quantization"):
                source, held_out = held_out_source(source, manifest)
        else:
            source = SyntheticSource(cfg, seed=seed, window=window, batch=batch)
            if (manifest or {}).get("quantization"):
                held_out = {"status": "synthetic", "note": "seeded synthetic inputs, not calibration frames"}
        feeds = feeds_from(source, samples)
        torch_ref = TorchRunner(loaded.policy, debug_outputs="features" in cand.output_names)
        with (wrap_reference(torch_ref) if wrap_reference else torch_ref) as ref:
            result = compare_runners(ref, cand, feeds, precision=precision, tolerance=tol, output_tolerances=output_tolerances)
            if qdq == "both" and is_onnx:
                with runner_for_artifact(artifact, **(opts | {"qdq": "kernels"})) as kernels:
                    other = compare_runners(ref, kernels, feeds, precision=precision, tolerance=tol,
                                            output_tolerances=output_tolerances)
                result.also_measured["qdq_kernels"] = {
                    "note": "onnxruntime's fused int8 kernels on this CPU; not used for the verdict",
                    "passed": other.passed, "outputs": {k: v.to_dict() for k, v in other.outputs.items()},
                }
    result.reference["checkpoint"] = str(loaded.checkpoint.path)
    result.candidate["artifact"] = str(artifact)
    result.candidate["config_check"] = config_check
    result.strict = strict
    result.candidate["data"] = f"episodes {data}" if data else f"synthetic (seed {seed})"
    if held_out is not None:
        result.candidate["held_out"] = held_out
    return result


def held_out_source(source, manifest: Mapping[str, Any]):
    """``(source, record)``: for a quantized artifact, the episode source restricted to windows that
    share no frame with the calibration set its manifest records. When that is impossible (no such
    window, or no record) the unrestricted source and a record saying so, loudly, in ``status``."""
    from vla_export.errors import DataError

    options = (manifest.get("quantization") or {}).get("options") or {}
    if options.get("mode") == "weight-only":
        return source, {"status": "no calibration", "note": "weight-only INT8 is made without calibration data"}
    calib = options.get("calibration")
    if not isinstance(calib, dict) or "frames" not in calib:
        return source, {"status": "unknown", "note": "the manifest records no calibration frames (quantized by an older "
                                                     "vla-export?): the evaluation windows may include calibration frames"}
    restricted = dataclasses.replace(source, exclude_frames=calib["frames"])
    record = {"calibration": calib.get("path"), "calibration_sha256": calib.get("sha256"),
              "calibration_frames": sum(len(f) for f in calib["frames"].values())}
    try:
        windows = len(restricted.allowed_windows)
    except DataError as exc:
        return source, record | {"status": "NOT held out", "note": f"{exc}: evaluated on windows that may include calibration frames"}
    return restricted, record | {"status": "held out", "windows": windows,
                                 "note": "evaluation windows share no frame with the calibration set"}
