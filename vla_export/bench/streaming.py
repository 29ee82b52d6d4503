"""Streaming benchmark: what one control step costs (backbone on one frame + head on the window).

The claim under test: with the split runtime a step costs about one single-frame backbone pass,
whatever the window T, instead of T backbone passes. For each T the benchmark times, interleaved
iteration by iteration so that load changes on a shared machine hit all of them alike:

* ``backbone``: the backbone part alone on one frame, right after preprocessing it untimed, as in a
  step (the reference cost);
* ``step``: :meth:`Policy.step` (backbone + head, as :class:`StepTiming` splits it; preprocessing,
  identical for any way of running the policy, is reported apart in ``step_total``);
* ``head``: the head part inside that step;
* ``full_window`` (optional): the unsplit policy over all T frames, what a step would cost without
  the split.

Runner ``infer`` synchronises before it returns, so wall-clock time around it is complete.
The target is ``step p50 <= 1.10 x backbone p50`` for every T.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vla_export.data.iospec import ATTENTION_MASK, INPUT_IDS, PIXEL_VALUES
from vla_export.artifacts.manifest import SplitRecord
from vla_export.backends.base import Runner
from vla_export.bench.env import capture_environment
from vla_export.stats import LatencyStats
from vla_export.data.preprocess import DEFAULT_INSTRUCTION, preprocess_frame
from vla_export.data.source import SyntheticSource
from vla_export.models.config import PolicyConfig
from vla_export.runtime.policy import FixedPrompt, Policy

TARGET_RATIO = 1.10


@dataclass
class WindowTiming:
    window: int
    step: LatencyStats
    step_total: LatencyStats
    head: LatencyStats
    full_window: LatencyStats | None
    backbone_p50_ms: float

    @property
    def ratio(self) -> float:
        """Step p50 over single-frame backbone p50."""
        return self.step.p50_ms / self.backbone_p50_ms

    @property
    def within_target(self) -> bool:
        return self.ratio <= TARGET_RATIO

    @property
    def speedup_vs_full(self) -> float | None:
        return None if self.full_window is None else self.full_window.p50_ms / self.step.p50_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "ratio_step_to_backbone": self.ratio,
            "within_target": self.within_target,
            "speedup_vs_full_window": self.speedup_vs_full,
            "step": self.step.to_dict(),
            "step_total_with_preprocess": self.step_total.to_dict(),
            "head": self.head.to_dict(),
            "full_window": None if self.full_window is None else self.full_window.to_dict(),
        }


@dataclass
class StreamingResult:
    """One streaming benchmark: the single-frame backbone and, per window, step/head/full-window latency."""

    model: str
    backbone: LatencyStats
    windows: list[WindowTiming]
    runners: dict[str, Any]
    settings: dict[str, Any]
    environment: dict[str, Any] = field(default_factory=dict)
    command: str | None = None

    @property
    def passed(self) -> bool:
        return all(w.within_target for w in self.windows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "streaming",
            "model": self.model,
            "target": f"step p50 <= {TARGET_RATIO:.2f} x single-frame backbone p50, for every window",
            "passed": self.passed,
            "command": self.command,
            "backbone_single_frame": self.backbone.to_dict(),
            "windows": [w.to_dict() for w in self.windows],
            "runners": self.runners,
            "settings": self.settings,
            "environment": self.environment,
        }


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_streaming(
    backbone: Runner,
    heads: Mapping[int, Runner],
    *,
    config: PolicyConfig,
    full: Mapping[int, Runner] | None = None,
    warmup: int = 3,
    iters: int = 20,
    seed: int = 0,
    frame_hw: tuple[int, int] = (480, 640),
    command: str | None = None,
) -> StreamingResult:
    """Time active runners: ``heads`` and ``full`` map each window T to a runner for it.

    One runner per T lets shape-specialised backends (CUDA graphs, static engines) keep one shape.
    """
    source = SyntheticSource(config, seed=seed, frame_hw=frame_hw)
    sample = source.sample(0)
    prompt = FixedPrompt(sample[INPUT_IDS], sample[ATTENTION_MASK])
    rng = np.random.default_rng(seed)
    frames = [source.frame(rng) for _ in range(4)]
    pixels = preprocess_frame(frames[0], config.image_size)[None]  # the full-window input: T copies
    text = {INPUT_IDS: sample[INPUT_IDS], ATTENTION_MASK: sample[ATTENTION_MASK]}
    policies = {
        t: Policy(backbone, head, tokenizer=prompt, window=t, image_size=config.image_size, action_dim=config.action_dim)
        for t, head in heads.items()
    }
    windows = {t: np.repeat(pixels[:, None], t, axis=1) for t in heads}
    for p in policies.values():
        p.reset(DEFAULT_INSTRUCTION)

    samples: dict[str, list[float]] = {"backbone": []}
    for i in range(warmup + iters):
        keep = i >= warmup
        # Preprocess (untimed) first, as a step does: a step's backbone call follows the NumPy resize,
        # which cools caches and lets idle intra-op threads sleep; the reference sees the same.
        frame_pixels = preprocess_frame(frames[i % len(frames)], config.image_size)[None]
        dt = _timed(lambda: backbone.infer({PIXEL_VALUES: frame_pixels, **text}))
        if keep:
            samples["backbone"].append(dt)
        for t, policy in policies.items():
            policy.step(frames[i % len(frames)])
            if keep:
                timing = policy.last_timing
                samples.setdefault(f"step{t}", []).append((timing.backbone_ms + timing.head_ms) / 1e3)
                samples.setdefault(f"total{t}", []).append(timing.total_ms / 1e3)
                samples.setdefault(f"head{t}", []).append(timing.head_ms / 1e3)
            if full is not None and t in full:
                dt = _timed(lambda: full[t].infer({PIXEL_VALUES: windows[t], **text}))
                if keep:
                    samples.setdefault(f"full{t}", []).append(dt)

    backbone_stats = LatencyStats.from_seconds(samples["backbone"])
    result = StreamingResult(
        model=config.name,
        backbone=backbone_stats,
        windows=[
            WindowTiming(
                window=t,
                step=LatencyStats.from_seconds(samples[f"step{t}"]),
                step_total=LatencyStats.from_seconds(samples[f"total{t}"]),
                head=LatencyStats.from_seconds(samples[f"head{t}"]),
                full_window=LatencyStats.from_seconds(samples[f"full{t}"]) if f"full{t}" in samples else None,
                backbone_p50_ms=backbone_stats.p50_ms,
            )
            for t in heads
        ],
        runners={"backbone": backbone.describe(), "head": next(iter(heads.values())).describe()}
        | ({"full_window": next(iter(full.values())).describe()} if full else {}),
        settings={"warmup": warmup, "iters": iters, "seed": seed, "frame_hw": list(frame_hw), "text_len": int(sample[INPUT_IDS].shape[-1]),
                  "interleaved": True, "timer": "perf_counter around synchronous infer()"},
        environment=capture_environment(),
        command=command,
    )
    return result


def bench_torch_streaming(
    policy: Any,
    *,
    windows: Sequence[int],
    runner_opts: Mapping[str, Any] | None = None,
    full_window: bool = True,
    **kwargs: Any,
) -> StreamingResult:
    """:func:`bench_streaming` with PyTorch runners for both parts (and the unsplit policy) of ``policy``.

    ``runner_opts`` go to every :class:`TorchRunner` (device, dtype, cuda_graph, compile, patch_matmul).
    """
    from vla_export.backends.torch_runner import TorchRunner
    from vla_export.runtime.parts import torch_part_runners

    policy = getattr(policy, "policy", policy)
    opts = dict(runner_opts or {})
    backbone, _ = torch_part_runners(policy, **opts)
    heads = {t: torch_part_runners(policy, **opts)[1] for t in windows}
    full = {t: TorchRunner(policy, **opts) for t in windows} if full_window else {}
    runners = [backbone, *heads.values(), *full.values()]
    try:
        for r in runners:
            r.activate()
        return bench_streaming(backbone, heads, config=policy.cfg, full=full or None, **kwargs)
    finally:
        for r in runners:
            r.deactivate()


def part_paths(split: Any, backend: str) -> tuple[SplitRecord, dict[str, Path]]:
    """The split record and its part files for ``backend``: the ONNX parts, or for 'trt' the engines
    built from them beside them (``NAME.backbone.engine``, ``NAME.head.engine``)."""
    from vla_export.errors import ArtifactError
    from vla_export.artifacts.manifest import read_split

    record = read_split(split)
    paths = {part: record.parts[part] for part in ("backbone", "head")}
    if backend == "trt":
        paths = {part: p.with_suffix(".engine") for part, p in paths.items()}
        missing = [str(p) for p in paths.values() if not p.exists()]
        if missing:
            raise ArtifactError(
                f"no engines {', '.join(missing)}: build each part first, e.g. `vla-export trt {record.parts['backbone']} "
                f"--precision fp16 -o {paths['backbone']}` (see the README's streaming section)"
            )
    return record, paths


def bench_split_streaming(split: Any, *, windows: Sequence[int], backend: str = "onnxrt", providers: Sequence[str] | None = None, **kwargs: Any) -> StreamingResult:
    """:func:`bench_streaming` over a split export's parts (ONNX Runtime, or TensorRT engines built from them).

    No unsplit model is timed here (a split export holds none); the full-window figure comes from the
    PyTorch variant or from ``vla-bench`` on a whole-policy artifact.
    """
    from vla_export.backends.select import runner_for_artifact

    record, paths = part_paths(split, backend)
    opts = {"providers": list(providers)} if providers and backend == "onnxrt" else {}
    backbone = runner_for_artifact(paths["backbone"], **opts)
    heads = {t: runner_for_artifact(paths["head"], **opts) for t in windows}
    runners = [backbone, *heads.values()]
    try:
        for r in runners:
            r.activate()
        return bench_streaming(backbone, heads, config=record.config, **kwargs)
    finally:
        for r in runners:
            r.deactivate()


def streaming_runs(
    artifacts: Sequence[str], backends: Sequence[str], *, windows: Sequence[int], warmup: int, iters: int, seed: int,
    load: Any, command: str,
) -> Iterator[tuple[str, str, StreamingResult]]:
    """``vla-bench --streaming``: one control step per window T, for each (artifact, backend), as ``(artifact, backend, result)``.

    A checkpoint or ``preset:NAME`` runs on torch, a split export on onnxrt or trt; a ``--backend`` of the other kind is
    skipped for it, and an artifact no backend fits gets its kind's default. ``windows`` empty: the policy's (or the
    split record's) window. ``load`` is the checkpoint's :class:`~vla_export.models.resolve.LoadOptions`."""
    from vla_export.backends.select import is_model_artifact, model_loader, preset_name
    from vla_export.bench.targets import BackendSpec

    specs = [BackendSpec.parse(b) for b in backends]
    for artifact in artifacts:
        kinds = ("torch",) if is_model_artifact(artifact) else ("onnxrt", "trt")
        chosen = [s for s in specs if s.kind in kinds] or [BackendSpec.parse(kinds[0])]
        for spec in chosen:
            common = {"warmup": warmup, "iters": iters, "seed": seed, "command": command}
            if spec.kind == "torch":
                loaded = model_loader(artifact, load=None if preset_name(artifact) else load, device=spec.device, seed=seed)()
                policy = getattr(loaded, "policy", loaded)
                opts = {"device": spec.device, "dtype": spec.dtype, "cuda_graph": spec.cuda_graph,
                        "compile": spec.compile or False, "patch_matmul": spec.patch_matmul}
                result = bench_torch_streaming(policy, windows=list(windows) or [policy.cfg.window], runner_opts=opts, **common)
            else:
                from vla_export.artifacts.manifest import read_split

                result = bench_split_streaming(
                    artifact, windows=list(windows) or [read_split(artifact).window], backend=spec.kind,
                    providers=[spec.provider] if spec.provider else None, **common,
                )
            yield artifact, spec.text, result
