"""Parity: does a candidate backend compute what the PyTorch policy computes, on the same inputs?

One code path for every backend: a reference runner and a candidate runner (ONNX Runtime, TensorRT,
another torch precision) are fed the same samples and every output they share is compared. The
result is a value (:class:`ParityResult`, ``to_dict`` -> JSON); rendering belongs to the CLI.

An element passes when ``|cand - ref| <= atol + rtol * |ref|`` (numpy's allclose rule); an output
passes when every element does and the cosine similarity of the whole output is at least
``min_cosine``. For ``actions`` the sign of each action must also agree on at least
``min_sign_agreement`` of the elements whose reference magnitude exceeds ``atol`` (a sign flip
drives the robot the other way; signs of near-zero actions are noise and not counted).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vla_export.errors import ArtifactError, ConfigError

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    min_cosine: float
    min_sign_agreement: float

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


DEFAULT_TOLERANCES: Mapping[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-3, min_cosine=0.9999, min_sign_agreement=1.0),
    "fp16": Tolerance(atol=1e-2, rtol=1e-2, min_cosine=0.999, min_sign_agreement=0.99),
    "int8": Tolerance(atol=5e-2, rtol=5e-2, min_cosine=0.99, min_sign_agreement=0.95),
}


def tolerance_for(precision: str, **overrides: float | None) -> Tolerance:
    """The default tolerance for ``precision`` with any non-None overrides applied."""
    if precision not in DEFAULT_TOLERANCES:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return dataclasses.replace(DEFAULT_TOLERANCES[precision], **{k: v for k, v in overrides.items() if v is not None})


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

    @property
    def passed(self) -> bool:
        return bool(self.outputs) and all(o.passed for o in self.outputs.values())

    def summary(self) -> str:
        parts = [f"{o.name}: " + (o.failure or f"max abs {o.max_abs:.3g}, cosine {o.cosine:.6f}") + ("" if o.passed else " FAIL")
                 for o in self.outputs.values()]
        return f"{'pass' if self.passed else 'FAIL'} over {self.samples} samples ({'; '.join(parts)})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "passed": self.passed,
            "precision": self.precision,
            "tolerance": self.tolerance.to_dict(),
            "samples": self.samples,
            "reference": self.reference,
            "candidate": self.candidate,
            "outputs": {k: v.to_dict() for k, v in self.outputs.items()},
        }


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


def _rows(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([a.reshape(-1, a.shape[-1]) if a.ndim > 1 else a.reshape(-1, 1) for a in arrays])


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
    passed = violations == 0 and cos >= tol.min_cosine and not any(nonfinite.values())
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
        nonfinite=nonfinite if any(nonfinite.values()) else None,
    )


def check_compatible(reference, candidate) -> list[str]:
    """Outputs to compare: those the two runners share. Raises :class:`ArtifactError` on mismatched I/O."""
    what = getattr(candidate, "path", None) or candidate.name
    if set(reference.input_names) != set(candidate.input_names):
        raise ArtifactError(
            f"{what}: inputs {list(candidate.input_names)} do not match the policy's {list(reference.input_names)}"
        )
    shared = [n for n in reference.output_names if n in candidate.output_names]
    if "actions" not in shared:
        raise ArtifactError(f"{what}: outputs {list(candidate.output_names)} have no 'actions'")
    return shared


def compare_runners(
    reference,
    candidate,
    feeds: Iterable[Mapping[str, np.ndarray]],
    *,
    precision: str = "fp32",
    tolerance: Tolerance | None = None,
    label: str = "parity",
) -> ParityResult:
    """Run both (already active) runners on every feed and compare the outputs they share."""
    tol = tolerance or tolerance_for(precision)
    names = check_compatible(reference, candidate)
    refs: dict[str, list[np.ndarray]] = {n: [] for n in names}
    cands: dict[str, list[np.ndarray]] = {n: [] for n in names}
    samples = 0
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
    if samples == 0:
        raise ConfigError("parity needs at least one sample")
    # Rows of the last axis (frames for features [B, T, F]): samples may differ in batch and window.
    outputs = {
        n: compare_output(n, _rows(refs[n]), _rows(cands[n]), tol, shape=list(refs[n][0].shape[1:])) for n in names
    }
    return ParityResult(reference.describe(), candidate.describe(), precision, tol, samples, outputs, label)


def feeds_from(source, samples: int) -> list[dict[str, np.ndarray]]:
    """``source.sample(i)`` for i < samples (any object with the SyntheticSource ``sample`` interface)."""
    return [source.sample(i) for i in range(samples)]


def artifact_window(candidate, default: int) -> int:
    """The fixed window of the candidate's ``pixel_values`` when it declares one, else ``default``."""
    shapes: Sequence[Any] = getattr(candidate, "input_shapes", {}).get("pixel_values", [])
    if len(shapes) == 5 and isinstance(shapes[1], int):
        return shapes[1]
    return default


def check_against_config(candidate, config) -> None:
    """Static checks that an artifact fits a policy config, where the runner exposes shapes."""
    ins: dict[str, list[Any]] = getattr(candidate, "input_shapes", {})
    outs: dict[str, list[Any]] = getattr(candidate, "output_shapes", {})
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
) -> ParityResult:
    """PyTorch policy (from ``policy_loader()``) vs the runner for ``artifact`` on ``samples`` inputs.

    Inputs come from :class:`~vla_export.data.source.SyntheticSource` or, with ``data`` (episode files
    or folders), from recorded frames. ``precision`` defaults to the one the artifact's manifest
    records, else fp32. Per-frame ``features`` are compared too when the artifact exports them.
    """
    from vla_export.backends.select import runner_for_artifact
    from vla_export.backends.torch_runner import TorchRunner
    from vla_export.data.source import SyntheticSource
    from vla_export.export.manifest import read_manifest

    manifest = read_manifest(artifact, required=False)
    precision = precision or (manifest or {}).get("precision", "fp32")
    tol = tolerance or tolerance_for(precision)
    loaded = policy_loader()
    cfg = loaded.config
    with runner_for_artifact(artifact, **dict(runner_opts or {})) as cand:
        check_against_config(cand, cfg)
        window = artifact_window(cand, cfg.window)
        if data:
            from vla_export.data.episodes import EpisodeSource

            source = EpisodeSource(data, cfg, seed=seed, window=window, batch=batch)
        else:
            source = SyntheticSource(cfg, seed=seed, window=window, batch=batch)
        with TorchRunner(loaded.policy, debug_outputs="features" in cand.output_names) as ref:
            result = compare_runners(ref, cand, feeds_from(source, samples), precision=precision, tolerance=tol)
    result.reference["checkpoint"] = str(loaded.checkpoint.path)
    result.candidate["artifact"] = str(artifact)
    result.candidate["data"] = f"episodes {data}" if data else f"synthetic (seed {seed})"
    return result
