"""Parity: does a candidate backend compute what the PyTorch policy computes, on the same inputs?

One code path for every backend: a reference runner and a candidate runner (ONNX Runtime, TensorRT,
another torch precision) are fed the same samples and every output they share is compared. The
result is a value (:class:`ParityResult`, ``to_dict`` -> JSON); rendering belongs to the CLI.

The comparison rules (elementwise bounds, cosine, sign agreement, the INT8 feature rule) are
:mod:`vla_export.compare.comparator`'s; this module picks the runners and the samples and runs it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vla_export.data.iospec import FEATURES, PIXEL_VALUES
from vla_export.choices import Precision, QdqMode
from vla_export.artifacts.manifest import Manifest, read_manifest
from vla_export.compare.comparator import ParityResult, check_against_config, compare_runners
from vla_export.compare.tolerance import Tolerance, tolerance_for
from vla_export.errors import ConfigError
from vla_export.models.config import check_same_config


def feeds_from(source, samples: int) -> list[dict[str, np.ndarray]]:
    """``source.sample(i)`` for i < samples (any object with the SyntheticSource ``sample`` interface)."""
    return [source.sample(i) for i in range(samples)]


def artifact_window(candidate, default: int) -> int:
    """The fixed window of the candidate's ``pixel_values`` when it declares one, else ``default``."""
    shapes: Sequence[Any] = candidate.input_shapes.get(PIXEL_VALUES, [])
    if len(shapes) == 5 and isinstance(shapes[1], int):
        return shapes[1]
    return default


def candidate_options(artifact, qdq: str, runner_opts: dict | None) -> tuple[dict, bool]:
    """(runner options, is an ONNX) for a parity candidate: ``qdq`` (exact, kernels or both) checked, and an ONNX
    run with the verdict's Q/DQ arithmetic (exact unless kernels; ``both`` adds the kernels run after)."""
    from vla_export.backends.select import artifact_kind

    if qdq not in QdqMode.values():
        raise ConfigError(f"qdq must be exact, kernels or both, got {qdq!r}")
    opts = dict(runner_opts or {})
    is_onnx = artifact_kind(artifact) == "onnx"
    if is_onnx:
        opts.setdefault("qdq", QdqMode.KERNELS if qdq == QdqMode.KERNELS else QdqMode.EXACT)
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
    qdq: str = QdqMode.EXACT,
    wrap_reference: Any = None,
    output_tolerances: Mapping[str, Tolerance] | None = None,
    manifest: Manifest | None = None,
) -> ParityResult:
    """PyTorch policy (from ``policy_loader()``) vs the runner for ``artifact`` on ``samples`` inputs.

    The artifact's recorded config must equal the reference's (:func:`~vla_export.models.config.check_same_config`). With
    ``strict``, a comparison that cannot tell a broken artifact apart (:func:`undiscriminating_outputs`)
    fails instead of passing with a note.

    Inputs come from :class:`~vla_export.data.source.SyntheticSource` or, with ``data`` (episode files
    or folders), from recorded frames. ``precision`` defaults to the one the artifact's manifest
    records, else fp32; ``manifest`` is that manifest when the caller has read it (read here otherwise).
    Per-frame ``features`` are compared too when the artifact exports them.

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

    manifest = manifest if manifest is not None else read_manifest(artifact, required=False)
    precision = precision or (manifest.precision if manifest else None) or Precision.FP32
    tol = tolerance or tolerance_for(precision)
    opts, is_onnx = candidate_options(artifact, qdq, runner_opts)
    loaded = policy_loader()
    cfg = loaded.config
    config_check = check_same_config(artifact, manifest.config if manifest else None, cfg)
    with runner_for_artifact(artifact, **opts) as cand:
        check_against_config(cand, cfg)
        window = artifact_window(cand, cfg.window)
        held_out = None
        if data:
            from vla_export.data.episodes import EpisodeSource

            source = EpisodeSource(data, cfg, seed=seed, window=window, batch=batch)
            if manifest is not None and manifest.quantization:
                source, held_out = held_out_source(source, manifest)
        else:
            source = SyntheticSource(cfg, seed=seed, window=window, batch=batch)
            if manifest is not None and manifest.quantization:
                held_out = {"status": "synthetic", "note": "seeded synthetic inputs, not calibration frames"}
        feeds = feeds_from(source, samples)
        torch_ref = TorchRunner(loaded.policy, debug_outputs=FEATURES in cand.output_names)
        with (wrap_reference(torch_ref) if wrap_reference else torch_ref) as ref:
            result = compare_runners(ref, cand, feeds, precision=precision, tolerance=tol, output_tolerances=output_tolerances)
            if qdq == QdqMode.BOTH and is_onnx:
                with runner_for_artifact(artifact, **(opts | {"qdq": QdqMode.KERNELS})) as kernels:
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


def held_out_source(source, manifest: Manifest):
    """``(source, record)``: for a quantized artifact, the episode source restricted to windows that
    share no frame with the calibration set its manifest records. When that is impossible (no such
    window, or no record) the unrestricted source and a record saying so, loudly, in ``status``."""
    from vla_export.errors import DataError

    options = (manifest.quantization or {}).get("options") or {}
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
