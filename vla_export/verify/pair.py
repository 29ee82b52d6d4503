"""Artifact against artifact (``parity A.onnx B.engine``): two runtimes on the same inputs, no checkpoint.

As ``polygraphy run --onnxrt --trt`` compares two runtimes, A is the reference and B the candidate;
both go through :func:`~vla_export.backends.select.runner_for_artifact` and the comparison is
:func:`~vla_export.verify.parity.compare_runners`, as for a checkpoint. The inputs are the seeded
synthetic ones or recorded episodes (``data``) built from the policy config both manifests record;
a pair whose configs differ, an artifact without a recorded config (nothing to build inputs from or to
check), a part of a split export, or two artifacts whose fixed windows differ, are refused before
anything runs. The tolerance is that of the less exact precision of the two (fp16 against fp32: fp16's).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vla_export.data.iospec import FEATURES
from vla_export.choices import Precision, QdqMode, RUNNER_QDQ_MODES
from vla_export.artifacts.manifest import Manifest, read_manifest
from vla_export.errors import ArtifactError, ConfigError
from vla_export.compare.tolerance import Tolerance, tolerance_for
from vla_export.precision import loosest

log = logging.getLogger(__name__)
KINDS = ("onnx", "engine")


def check_pair(reference: str | Path, candidate: str | Path) -> tuple[Manifest, Manifest]:
    """Both manifests, after checking the pair can be compared: whole policies (not split parts), each with a
    recorded config, the same config. Raises ArtifactError naming what differs and what to do."""
    from vla_export.backends.select import artifact_kind
    from vla_export.models.config import config_differences

    manifests = []
    for path in (reference, candidate):
        kind = artifact_kind(path)
        if kind not in KINDS:
            raise ArtifactError(f"{path}: parity of two artifacts compares ONNX models and TensorRT engines; a {kind} is the "
                                "reference only as the first argument of `parity CKPT ARTIFACT`")
        manifest = read_manifest(path, required=False)
        if manifest is not None and manifest.part:
            raise ArtifactError(f"{path}: the {manifest.part} part of a split export; parity compares whole policies "
                                "(check split parts with `vla-export replay CKPT NAME.split.json EPISODE`)")
        if manifest is None or manifest.config is None:
            raise ArtifactError(f"{path}: no manifest with a policy config beside it ({Path(str(path) + '.json').name}): the "
                                "inputs are built from the config and the pair's configs must be checked; keep the manifest "
                                "vla-export wrote beside the artifact")
        manifests.append(manifest)
    diffs = config_differences(manifests[0].config.to_dict(), manifests[1].config.to_dict())
    if diffs:
        shown = "; ".join(f"{k}: {Path(reference).name} {a!r}, {Path(candidate).name} {b!r}" for k, a, b in diffs[:6])
        raise ArtifactError(f"{reference} and {candidate} were exported from different policy configs ({len(diffs)} "
                            f"field{'s' if len(diffs) > 1 else ''}: {shown}): the comparison would say nothing")
    return manifests[0], manifests[1]


def pair_precision(ref_manifest: Manifest, cand_manifest: Manifest) -> str:
    """The less exact of the two recorded precisions (fp32 where none is recorded)."""
    return loosest(m.precision or Precision.FP32 for m in (ref_manifest, cand_manifest))


def parity_artifacts(
    reference: str | Path,
    candidate: str | Path,
    *,
    samples: int = 8,
    data: Any = None,
    seed: int = 0,
    batch: int = 1,
    precision: str | None = None,
    tolerance: Tolerance | None = None,
    output_tolerances: Mapping[str, Tolerance] | None = None,
    runner_opts: Mapping[str, Any] | None = None,
    strict: bool = False,
    qdq: str = QdqMode.EXACT,
    wrap_reference: Any = None,
):
    """``candidate`` against ``reference`` (both .onnx or .engine) on ``samples`` inputs; a ParityResult.

    ``runner_opts`` go to both runners (``providers`` only to ONNX ones); ``qdq`` ("exact" or "kernels")
    picks how a Q/DQ ONNX runs (see :func:`vla_export.verify.parity.parity_check`).
    ``wrap_reference`` wraps the reference runner (e.g. a RecordingRunner, to save what it was fed and gave).
    """
    from vla_export.backends.select import artifact_kind, runner_for_artifact
    from vla_export.data.source import SyntheticSource
    from vla_export.verify.parity import artifact_window, feeds_from, held_out_source
    from vla_export.compare.comparator import check_against_config, compare_runners

    if qdq not in RUNNER_QDQ_MODES:
        raise ConfigError(f"--qdq {qdq}: with two artifacts pick exact or kernels (both measures onnxruntime's kernels beside a "
                          "PyTorch reference)")
    ref_manifest, cand_manifest = check_pair(reference, candidate)
    precision = precision or pair_precision(ref_manifest, cand_manifest)
    tol = tolerance or tolerance_for(precision)
    cfg = ref_manifest.require_config()

    def opts_for(path: str | Path) -> dict[str, Any]:
        opts = dict(runner_opts or {})
        if artifact_kind(path) == "onnx":
            opts.setdefault("qdq", qdq)
        else:
            opts.pop("providers", None)
        return opts

    with runner_for_artifact(reference, **opts_for(reference)) as ref_runner, \
            runner_for_artifact(candidate, **opts_for(candidate)) as cand:
        for runner in (ref_runner, cand):
            check_against_config(runner, cfg)
        window, other = artifact_window(ref_runner, cfg.window), artifact_window(cand, cfg.window)
        if window != other:
            raise ArtifactError(f"{reference} takes windows of {window} frames, {candidate} of {other}: export both with the same --window")
        held_out = None
        quantized = next((m for m in (cand_manifest, ref_manifest) if m.quantization), None)
        if data:
            from vla_export.data.episodes import EpisodeSource

            source = EpisodeSource(data, cfg, seed=seed, window=window, batch=batch)
            if quantized:
                source, held_out = held_out_source(source, quantized)
        else:
            source = SyntheticSource(cfg, seed=seed, window=window, batch=batch)
            if quantized:
                held_out = {"status": "synthetic", "note": "seeded synthetic inputs, not calibration frames"}
        feeds = feeds_from(source, samples)
        if FEATURES in ref_runner.output_names and FEATURES not in cand.output_names:
            log.warning("%s has features, %s does not: comparing actions only", reference, candidate)
        ref_runner.config = cfg  # what a recording of the reference saves
        with (wrap_reference(ref_runner) if wrap_reference else _Active(ref_runner)) as ref:
            result = compare_runners(ref, cand, feeds, precision=precision, tolerance=tol, output_tolerances=output_tolerances)
    result.reference["artifact"] = str(reference)
    result.candidate["artifact"] = str(candidate)
    result.candidate["config_check"] = f"same config as {Path(reference).name}"
    result.candidate["data"] = f"episodes {data}" if data else f"synthetic (seed {seed})"
    result.strict = strict
    if held_out is not None:
        result.candidate["held_out"] = held_out
    return result


class _Active:
    """An already active runner as a context manager that leaves it active (its own ``with`` closes it)."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner

    def __enter__(self) -> Any:
        return self.runner

    def __exit__(self, *exc: object) -> None:
        return None
