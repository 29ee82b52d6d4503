"""Split export for streaming: ``NAME.backbone.onnx`` (one frame + prompt -> feature) and ``NAME.head.onnx``.

Each part goes through the steps of :func:`~vla_export.export.onnx.export_module` and is verified in its
temporary directory before it appears: onnx.checker and shape inference, a completeness proof
against the part's own parameters, no TensorRT-unfriendly ops, and ONNX Runtime vs the PyTorch part.
Each part gets a manifest (``NAME.backbone.onnx.json``, kind ``onnx``, with ``part``). Then:

* the parts' parameter counts must add up to the policy's (each parameter in exactly one part);
* the two ONNX parts, composed by the streaming :class:`~vla_export.runtime.Policy`, must give the
  full PyTorch policy's actions over a short synthetic stream (warm-up steps included).

Only then is ``NAME.split.json`` written; it is what ``vla-export replay`` and ``vla-bench
--streaming`` read. The head has a dynamic window axis, so one head file serves any T.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vla_export.choices import Exporter, Precision
from vla_export.errors import ArtifactError, ConfigError
from vla_export.artifacts.manifest import (
    SCHEMA,
    SPLIT_KIND,
    SplitRecord,
    build_manifest,
    manifest_path,
    split_paths,
    versions,
    write_manifest,
)
from vla_export.export.onnx import (
    DEFAULT_OPSET,
    EXPORT_BATCH,
    MANIFEST_KIND,
    StaticChecks,
    check_opset,
    model_record,
    move_into_place,
    stage_module,
    static_checks,
)
from vla_export.artifacts.onnxfile import data_file, written_opset
from vla_export.data.iospec import ATTENTION_MASK, BACKBONE, FEATURES, HEAD, INPUT_IDS, PIXEL_VALUES, POLICY, dummy_inputs
from vla_export import interrupts
from vla_export.fileio import check_output_path, output_errors, staging_dir
from vla_export.models.finite import require_finite_weights
from vla_export.models.memory import check_window_memory
from vla_export.runtime.policy import BACKBONE_INPUTS, BACKBONE_OUTPUTS, HEAD_INPUTS, HEAD_OUTPUTS
from vla_export.compare.comparator import compare_runners
from vla_export.progress import step

log = logging.getLogger(__name__)

PARTS = ("backbone", "head")
STREAM_CHECK_EXTRA_FRAMES = 2  # frames past the window in the composed check, so the ring wraps


@dataclass(frozen=True)
class SplitOptions:
    opset: int = DEFAULT_OPSET
    exporter: str = Exporter.DYNAMO  # the backbone's
    # The head's exporter. With torch 2.13 the dynamo exporter fixed the head's window axis at the
    # example's T whenever a whole policy had been exported earlier in the same process (dynamo and
    # compiler resets did not help); the legacy exporter keeps it dynamic, and its LSTM is the ONNX LSTM op.
    head_exporter: str = Exporter.TORCHSCRIPT
    window: int | None = None  # the runtime window recorded in the manifest (default: the config's)
    external_data: bool | None = None
    optimize: bool = True
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        import dataclasses

        return dataclasses.asdict(self)


@dataclass
class PartExport:
    part: str
    path: Path
    completeness: Any  # Completeness
    parity: Any  # ParityResult
    io: dict[str, Any]
    ops: dict[str, int]
    parameters: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "part": self.part, "path": str(self.path), "parameters": self.parameters,
            "completeness": self.completeness.to_dict(), "parity": self.parity.to_dict(), "io": self.io, "ops": self.ops,
        }


@dataclass
class SplitExportResult:
    backbone: PartExport
    head: PartExport
    policy_parameters: int
    stream_check: Any  # ReplayResult over synthetic frames
    manifest_path: Path
    seconds: float
    parts: dict[str, PartExport] = field(init=False)

    def __post_init__(self) -> None:
        self.parts = {"backbone": self.backbone, "head": self.head}

    @property
    def passed(self) -> bool:
        return all(p.completeness.passed and p.parity.passed for p in self.parts.values()) and self.stream_check.passed

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "manifest": str(self.manifest_path),
            "seconds": self.seconds,
            "parameters": {"policy": self.policy_parameters, **{k: p.parameters for k, p in self.parts.items()}},
            "parts": {k: p.to_dict() for k, p in self.parts.items()},
            "stream_check": self.stream_check.to_dict(),
        }


def _part_inputs(loaded, *, seed: int, batch: int, window: int, text_len: int | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Inputs of both parts from one synthetic sample: its first frames, and the PyTorch features of its window."""
    import torch

    cfg = loaded.config
    s = dummy_inputs(POLICY, cfg, batch=batch, window=window, text_len=text_len and min(text_len, cfg.max_text_len), seed=seed)
    with torch.no_grad():
        _, feats = loaded.policy(*(torch.from_numpy(s[k]) for k in BACKBONE_INPUTS), return_features=True)
    return {"backbone": {**s, PIXEL_VALUES: s[PIXEL_VALUES][:, 0]}, "head": {FEATURES: feats.numpy()}}


#: Parity feeds (batch, text length, window as a multiple of the runtime window), other than the export's.
PARITY_CASES = ((1, 7, 1.0), (3, 11, 0.5), (1, 5, 2.0))


def export_split(loaded, prefix: str | Path, options: SplitOptions = SplitOptions()) -> SplitExportResult:
    """Export a loaded policy as two verified parts beside ``prefix`` and write ``prefix.split.json``.

    Raises :class:`ArtifactError` when a part is incomplete, fails a check or disagrees with PyTorch,
    when the parts' parameters do not add up to the policy's, or when the composed parts disagree
    with the full policy; ``prefix.split.json`` then does not appear.
    """
    cfg = loaded.config
    window = cfg.window if options.window is None else options.window
    if window < 1:
        raise ConfigError(f"--window must be positive, got {window}")
    require_finite_weights(loaded.policy, loaded.checkpoint.path)
    check_window_memory(cfg, 2 * window, batch=1, factor=2.0)  # the largest parity case: twice the window
    check_opset(options.opset, options.exporter)
    check_opset(options.opset, options.head_exporter)
    paths = split_paths(prefix)
    for p in paths.values():
        check_output_path(p)
    with staging_dir(paths["split"]) as tmpdir:
        return _export_split_staged(loaded, paths, tmpdir, window, options)


def _export_split_staged(loaded, paths: dict[str, Path], tmpdir: Path, window: int, options: SplitOptions) -> SplitExportResult:
    """Export, verify and compose both parts in ``tmpdir``, then publish them as a unit, the record last.

    Until every check has passed nothing at the target changes (an earlier split export there stays
    whole); then the old record goes first, the parts move in, and the new record appears last.
    """
    import torch

    from vla_export.fileio import sha256_file
    from vla_export.runtime.parts import split_policy

    cfg, policy = loaded.config, loaded.policy
    staged = {part: tmpdir / part / paths[part].name for part in PARTS}
    start = time.perf_counter()
    modules = dict(zip(PARTS, split_policy(policy)))
    cases = [_part_inputs(loaded, seed=options.seed + 1 + i, batch=b, window=max(1, round(f * window)), text_len=n)
             for i, (b, n, f) in enumerate(PARITY_CASES)]
    feeds = {part: [c[part] for c in cases] for part in PARTS}
    # batch EXPORT_BATCH: the exporter specialises an axis it sees as 1
    example = {part: {k: torch.from_numpy(v) for k, v in inputs.items()}
               for part, inputs in _part_inputs(loaded, seed=options.seed, batch=EXPORT_BATCH, window=window).items()}
    names = {"backbone": (BACKBONE_INPUTS, BACKBONE_OUTPUTS), "head": (HEAD_INPUTS, HEAD_OUTPUTS)}
    dynamic = {"backbone": BACKBONE.dynamic_axes(), "head": HEAD.dynamic_axes()}
    ckpt = Path(loaded.checkpoint.path)
    source = {"checkpoint": str(ckpt), "sha256": sha256_file(ckpt), "bytes": ckpt.stat().st_size}
    results: dict[str, PartExport] = {}
    extras: dict[str, list[Path]] = {}
    for part in reversed(PARTS):  # the small head first: a failure there costs seconds, not a backbone export
        module, tmp = modules[part], staged[part]
        exporter = options.head_exporter if part == "head" else options.exporter
        log.info("exporting the %s part to %s", part, paths[part])
        tmp.parent.mkdir()
        stage_module(
            module, example[part], tmp, output_names=names[part][1], dynamic_axes=dynamic[part], opset=options.opset,
            exporter=exporter, external_data=options.external_data, optimize=options.optimize,
        )
        checks = static_checks(tmp, module)
        parity = part_parity(part, module, tmp, names[part], feeds[part])
        extras[part] = [write_part_manifest(tmp, part, loaded, window, options, exporter, source, checks, parity)]
        results[part] = PartExport(part, paths[part], checks.completeness, parity, checks.io, checks.ops,
                                   checks.completeness.total_parameters)

    total = sum(p.numel() for p in policy.parameters())
    summed = results["backbone"].parameters + results["head"].parameters
    if summed != total:
        raise ArtifactError(
            f"{paths['split']}: the parts hold {results['backbone'].parameters:,} + {results['head'].parameters:,} = "
            f"{summed:,} parameters, the policy has {total:,}"
        )
    check = stream_check(loaded, staged["backbone"], staged["head"], window=window, seed=options.seed)
    for part in PARTS:  # the record names where the parts are published, not where they were checked
        check.policy[part]["path"] = str(paths[part])
    if not check.passed:
        raise ArtifactError(
            f"{paths['split']}: the ONNX parts composed by the streaming runtime disagree with the full policy at steps "
            f"{check.failed_steps} (max abs error {check.max_abs_err:.3g} > {check.atol:g})"
        )
    record = {
        "schema": SCHEMA,
        "kind": SPLIT_KIND,
        "parts": {part: {"path": paths[part].name, "parameters": results[part].parameters} for part in PARTS},
        "parameters": {"policy": total, "sum_of_parts": summed},
        "window": window,
        "warmup": "pad the window with the first frame's feature",
        "config": cfg.to_dict(),
        "model": model_record(loaded),
        "source": source,
        "stream_check": {k: v for k, v in check.to_dict().items() if k != "steps"},
        "versions": versions(),
    }
    staged_record = tmpdir / paths["split"].name
    write_manifest(staged_record, SplitRecord.from_dict(record, paths["split"]), path=staged_record)
    publish_split(paths, staged, extras, staged_record)
    return SplitExportResult(results["backbone"], results["head"], total, check, paths["split"], time.perf_counter() - start)


def part_parity(part: str, module, tmp: Path, names: tuple[Sequence[str], Sequence[str]], feeds: Sequence[Mapping[str, np.ndarray]]):
    """ONNX Runtime on the staged part vs the PyTorch part on ``feeds``; ArtifactError when they disagree."""
    from vla_export.backends.onnxrt import OnnxrtRunner
    from vla_export.backends.torch_runner import ModuleRunner

    inputs, outputs = names
    with ModuleRunner(module, inputs, outputs, label=part) as ref, OnnxrtRunner(tmp) as cand:
        parity = compare_runners(ref, cand, feeds, label=f"{part} part")
    if not parity.passed:
        raise ArtifactError(f"{tmp.name}: ONNX Runtime disagrees with the PyTorch {part}: {parity.summary()}")
    return parity


def write_part_manifest(tmp: Path, part: str, loaded, window: int, options: SplitOptions, exporter: str, source: dict[str, Any],
                        checks: StaticChecks, parity) -> Path:
    """Write the staged part's manifest (kind ``onnx``, with ``part``) beside it; returns its path."""
    files = [tmp] + ([data_file(tmp)] if data_file(tmp).exists() else [])
    data = build_manifest(
        MANIFEST_KIND, tmp, files, part=part, source=source, config=loaded.config.to_dict(), model=model_record(loaded), window=window,
        options=options.to_dict(), opset=written_opset(tmp), exporter=exporter,
        parameters=checks.completeness.to_dict(), io=checks.io, ops=checks.ops,
        parity={Precision.FP32: parity.to_dict()}, versions=versions(),
    )
    out = manifest_path(tmp)
    write_manifest(tmp, data, path=out)
    return out


def publish_split(paths: dict[str, Path], staged: dict[str, Path], extras: dict[str, list[Path]], record: Path) -> None:
    """Move verified parts into place as a unit: the old record goes first, the new one comes last.

    Without a record the folder does not hold a split export (``read_split`` refuses it), so an
    interruption between the moves never leaves a finished-looking mix of old and new parts.
    """
    with output_errors(paths["split"]), interrupts.deferred():
        if paths["split"].exists():
            paths["split"].unlink()
        for part in PARTS:
            move_into_place(staged[part], paths[part], extras[part])
        os.replace(record, paths["split"])


def stream_check(loaded, backbone: Path, head: Path, *, window: int, seed: int = 0, atol: float | None = None):
    """The ONNX parts in the streaming :class:`Policy` vs the full PyTorch policy, over synthetic frames."""
    from vla_export.backends.onnxrt import OnnxrtRunner
    from vla_export.backends.torch_runner import TorchRunner
    from vla_export.data.source import SyntheticSource
    from vla_export.compare.tolerance import tolerance_for
    from vla_export.runtime.policy import FixedPrompt, Policy
    from vla_export.runtime.replay import replay_frames

    cfg = loaded.config
    source = SyntheticSource(cfg, seed=seed + 7)
    sample = source.sample(0)
    rng = np.random.default_rng(seed + 7)
    frames = np.stack([source.frame(rng) for _ in range(window + STREAM_CHECK_EXTRA_FRAMES)])
    prompt = FixedPrompt(sample[INPUT_IDS], sample[ATTENTION_MASK])
    policy = Policy(OnnxrtRunner(backbone), OnnxrtRunner(head), tokenizer=prompt, window=window,
                    image_size=cfg.image_size, action_dim=cfg.action_dim)
    with policy, TorchRunner(loaded.policy) as reference, step(f"stream check: {len(frames)} synthetic frames through the parts vs the full policy"):
        return replay_frames(policy, reference, frames, instruction=None, atol=atol or tolerance_for(Precision.FP32).atol,
                             info={"frames": f"synthetic (seed {seed + 7})", "num_frames": len(frames)})
