"""Timing loops and result values.

Two modes, both at batch 1 by default:

- ``compute``: inputs are staged on the device once; each iteration times ``execute`` followed by
  ``synchronize`` (so asynchronous GPU work is inside the timed region).
- ``e2e``: what a robot step costs. Each iteration takes a raw 720x1280 uint8 camera frame through
  the shared NumPy preprocessing, pushes it into the window of preprocessed frames, then ``infer``
  (host-to-device copy, execution, synchronisation, the action back on the host). The phases are
  timed too, so the report says where end-to-end time goes.
- ``e2e-gpu``: the same step with the frame preprocessed where the runner runs (torch CUDA rows only;
  asked for explicitly, refused for other rows): the raw uint8 frame goes up through a reused pinned
  buffer, the same resize and normalisation run on the GPU, the window stays on the device. Its
  ``preprocess`` phase is host time only (copy into pinned memory, enqueue the upload and kernels);
  their GPU time lands in ``execute+sync``.

``parity_inputs`` > 0 compares each torch row's outputs (actions and per-frame features) with the same
weights in float32 eager on the same device, on that many synthetic inputs (:mod:`vla_export.verify.parity`).

Warm-up iterations (which also trigger lazy compilation and CUDA-graph capture) are never timed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from vla_export.data.iospec import ACTIONS, PIXEL_VALUES
from vla_export.choices import Precision
from vla_export import schemas
from vla_export.backends.base import Runner
from vla_export.system import peak_rss_bytes
from vla_export.bench.monitor import Monitor, RowWatch
from vla_export.bench.floor import DTYPE_BYTES, DevicePeak, FloorCheck, ModelCost, check_floor, onnx_weight_bytes, policy_cost
from vla_export.stats import LatencyStats
from vla_export.bench.targets import Target
from vla_export.data.preprocess import preprocess_frame
from vla_export.data.source import SyntheticSource
from vla_export.errors import ConfigError, RunnerError
from vla_export.models.config import PolicyConfig
from vla_export.models.memory import check_window_memory
from vla_export.progress import counted

SCHEMA = schemas.BENCH
MODES = ("compute", "e2e", "e2e-gpu")
DEFAULT_MODES = ("compute", "e2e")
E2E_MODES = ("e2e", "e2e-gpu")
CAMERA_HW = (720, 1280)
N_FRAMES = 4  # distinct raw frames cycled in e2e, so no cache sees the same input twice in a row


@dataclass(frozen=True)
class BenchSettings:
    batch: int = 1
    window: int = 1
    warmup: int = 10
    iters: int | None = 100
    duration_s: float | None = None
    modes: tuple[str, ...] = DEFAULT_MODES
    seed: int = 0
    text_len: int = 16
    parity_inputs: int = 0

    def __post_init__(self) -> None:
        if self.batch < 1 or self.window < 1 or self.warmup < 0 or self.text_len < 1 or self.parity_inputs < 0:
            raise ConfigError("batch, window and text length must be >= 1 and warm-up >= 0")
        if (self.iters is None) == (self.duration_s is None):
            raise ConfigError("give exactly one of iterations or duration")
        if (self.iters is not None and self.iters < 1) or (self.duration_s is not None and self.duration_s <= 0):
            raise ConfigError("iterations and duration must be positive")
        unknown = [m for m in self.modes if m not in MODES]
        if unknown or not self.modes:
            raise ConfigError(f"modes must be among {MODES}, got {list(self.modes)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ModeResult:
    stats: LatencyStats
    floor: FloorCheck | None
    phases_ms: dict[str, float] = field(default_factory=dict)  # median of each e2e phase
    samples_ms: list[float] = field(default_factory=list)  # every timed iteration, in order (plots are redrawn from these)
    phase_samples_ms: dict[str, list[float]] = field(default_factory=dict)  # every e2e iteration's phases
    watched: dict[str, Any] = field(default_factory=dict)  # each monitor's summary of the timed window (bench/monitor.py)

    @property
    def contended(self) -> bool:
        return bool((self.watched.get("contention") or {}).get("contended"))

    def to_dict(self) -> dict[str, Any]:
        return {"latency": self.stats.to_dict(), "floor": self.floor.to_dict() if self.floor else None, "phases_p50_ms": self.phases_ms,
                "samples_ms": self.samples_ms, "phase_samples_ms": self.phase_samples_ms, **self.watched}


@dataclass
class BackendResult:
    """One (artifact, backend) row: what ran, its latencies per mode, the floor, memory and warnings."""

    label: str
    artifact: str
    backend: str
    runner: dict[str, Any]
    activate_s: float
    first_infer_s: float  # the first inference: lazy compilation and CUDA-graph capture happen here
    warmup_s: float
    modes: dict[str, ModeResult]
    cost: ModelCost | None
    peak_rss_bytes: int
    peak_gpu_bytes: int | None
    outputs_finite: bool
    warnings: list[str] = field(default_factory=list)
    profile: Any = None  # a ProfileSummary when asked for
    parity: dict[str, Any] | None = None  # against the float32 reference, when asked for

    @property
    def below_floor(self) -> bool:
        return any(m.floor is not None and m.floor.below_floor for m in self.modes.values())

    @property
    def contended(self) -> bool:
        return any(m.contended for m in self.modes.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "artifact": self.artifact,
            "backend": self.backend,
            "runner": self.runner,
            "activate_s": self.activate_s,
            "first_infer_s": self.first_infer_s,
            "warmup_s": self.warmup_s,
            "modes": {k: v.to_dict() for k, v in self.modes.items()},
            "cost": self.cost.to_dict() if self.cost else None,
            "peak_rss_bytes": self.peak_rss_bytes,
            "peak_rss_note": "process peak so far (includes earlier rows of this run)",
            "peak_gpu_bytes": self.peak_gpu_bytes,
            "peak_gpu_note": "torch allocator peak over the warm-up and timed runs (after loading); None for non-torch runtimes",
            "outputs_finite": self.outputs_finite,
            "below_floor": self.below_floor,
            "valid": self.outputs_finite and not self.below_floor,
            "contended": self.contended,
            "warnings": self.warnings,
            "profile": self.profile.to_dict() if self.profile else None,
            "parity": self.parity,
        }


@dataclass
class BenchReport:
    command: str
    settings: BenchSettings
    environment: dict[str, Any]
    device_peak: DevicePeak
    results: list[BackendResult]
    complete: bool = True  # False while rows are still to come (a partial report saved along the way)
    contention: dict[str, Any] | None = None  # the run's contention summary (bench/contention.py), set by the caller
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def ratios(self, mode: str) -> list[float | None]:
        """Each row's p50 over the first row's p50, for ``mode``."""
        base = next((r.modes[mode].stats.p50_ms for r in self.results if mode in r.modes), None)
        return [r.modes[mode].stats.p50_ms / base if base and mode in r.modes else None for r in self.results]

    def to_dict(self) -> dict[str, Any]:
        rows = []
        for i, r in enumerate(self.results):
            row = r.to_dict()
            row["ratio_to_first_p50"] = {m: self.ratios(m)[i] for m in r.modes}
            rows.append(row)
        return {
            "schema": SCHEMA,
            "created": self.created,
            "command": self.command,
            "complete": self.complete,
            "settings": self.settings.to_dict(),
            "environment": self.environment,
            "device_peak": self.device_peak.to_dict(),
            "contention": self.contention,
            "results": rows,
        }


# --- timing ----------------------------------------------------------------------------------------

def time_loop(step: Callable[[], Any], *, warmup: int, iters: int | None, duration_s: float | None,
              watch: RowWatch | None = None, label: str | None = None) -> tuple[list[float], float]:
    """Run ``step`` ``warmup`` times untimed, then time each call; returns (seconds per call, warm-up seconds).

    ``watch``'s monitors see exactly the timed calls (started after the warm-up, stopped after the last).
    ``label`` names the loop in the progress display (:func:`vla_export.progress.counted`): the count
    advances between calls, outside each call's timed interval, and is drawn only then."""
    total = warmup + iters if iters is not None and duration_s is None else None
    unit = "warm-up iterations" if iters == 0 else f"iterations ({warmup} warm-up)" if warmup else "iterations"
    with counted(label, total, unit, timed=True) if label else contextlib.nullcontext(_no_progress) as advance:
        t0 = time.perf_counter()
        for _ in range(warmup):
            step()
            advance(1)
        warm = time.perf_counter() - t0
        if watch is not None:
            watch.start()
        samples: list[float] = []
        deadline = time.perf_counter() + duration_s if duration_s is not None else None
        while (iters is not None and len(samples) < iters) or (deadline is not None and time.perf_counter() < deadline):
            start = time.perf_counter()
            step()
            samples.append(time.perf_counter() - start)
            advance(1)
        if watch is not None:
            watch.stop(samples)
    return samples, warm


def _no_progress(n: int = 1) -> None:
    """No progress display for an unlabelled loop."""


def _raw_frames(settings: BenchSettings) -> list[np.ndarray]:
    rng = np.random.default_rng([settings.seed, 720])
    return [rng.integers(0, 256, size=(*CAMERA_HW, 3), dtype=np.uint8) for _ in range(N_FRAMES)]


class EndToEnd:
    """One robot step per call: preprocess a new raw frame, shift it into the window, infer, action on host."""

    def __init__(self, runner: Runner, feed: dict[str, np.ndarray], config: PolicyConfig, settings: BenchSettings):
        self.runner, self.config, self.settings = runner, config, settings
        self.frames = _raw_frames(settings)
        self.window = np.array(feed[PIXEL_VALUES], copy=True)  # [B, T, 3, S, S], the last T preprocessed frames
        self.prompt = {k: v for k, v in feed.items() if k != PIXEL_VALUES}  # tokenised once per session
        self.i = 0
        self.phases: dict[str, list[float]] = {"preprocess": [], "stage": [], "execute+sync": [], "to_host": []}
        self.record = False

    def _frame_in(self, t: list[float]) -> Any:
        """Preprocess the next raw frame into the window; the staged inputs (appends the two phase marks)."""
        pix = preprocess_frame(self.frames[self.i % N_FRAMES], self.config.image_size)
        self.i += 1
        self.window[:, :-1] = self.window[:, 1:]
        self.window[:, -1] = pix
        t.append(time.perf_counter())
        staged = self.runner.stage({PIXEL_VALUES: self.window, **self.prompt})
        t.append(time.perf_counter())
        return staged

    def __call__(self) -> dict[str, np.ndarray]:
        r, t = self.runner, [time.perf_counter()]
        staged = self._frame_in(t)
        out = r.execute(staged)
        r.synchronize()
        t.append(time.perf_counter())
        host = r.to_host(out)
        t.append(time.perf_counter())
        if self.record:
            for name, a, b in zip(self.phases, t, t[1:]):
                self.phases[name].append(b - a)
        return host


class EndToEndDevice(EndToEnd):
    """:class:`EndToEnd` with the frame preprocessed on the runner's device and the window kept there."""

    def __init__(self, runner: Runner, feed: dict[str, np.ndarray], config: PolicyConfig, settings: BenchSettings):
        super().__init__(runner, feed, config, settings)
        self.staged = runner.stage(feed)  # device tensors: the window of preprocessed frames, the prompt

    def _frame_in(self, t: list[float]) -> Any:
        pix = self.runner.preprocess([self.frames[self.i % N_FRAMES]], self.config.image_size)  # [1, 3, S, S] on the device
        self.i += 1
        t.append(time.perf_counter())
        window = self.staged[PIXEL_VALUES]  # [B, T, 3, S, S]
        if window.shape[1] > 1:
            window[:, :-1] = window[:, 1:].clone()
        window[:, -1] = pix
        t.append(time.perf_counter())
        return self.staged


def parity_feeds(cfg: PolicyConfig, settings: BenchSettings) -> list[dict[str, np.ndarray]]:
    """The synthetic inputs of the parity check (seeded apart from the timed ones)."""
    source = SyntheticSource(cfg, seed=settings.seed + 7919, batch=settings.batch, window=settings.window, text_len=settings.text_len)
    return [source.sample(i) for i in range(settings.parity_inputs)]


def reference_outputs(target: Target, settings: BenchSettings) -> list[dict[str, np.ndarray]]:
    """The float32 reference's outputs on :func:`parity_feeds` (its runner active only meanwhile)."""
    if target.make_reference is None:
        raise ConfigError(f"{target.label}: no float32 reference for the parity check (torch rows only)")
    runner = target.make_reference()
    with runner:
        cfg = _resolve_config(target, runner)
        return [runner.infer(feed) for feed in parity_feeds(cfg, settings)]


def parity_against(runner: Runner, cfg: PolicyConfig, settings: BenchSettings, reference: list[dict[str, np.ndarray]], spec: Any) -> dict[str, Any]:
    """This row's outputs against the float32 reference's, per output (relative L2 per row, cosine, max abs,
    and the reference's spread across the inputs, which says how much a comparison can tell apart)."""
    from vla_export.compare.tolerance import tolerance_for
    from vla_export.compare.comparator import compare_output

    outs = [runner.infer(feed) for feed in parity_feeds(cfg, settings)]
    precision = (Precision.INT8 if getattr(spec, "quantize", None)
                 else Precision.FP32 if getattr(spec, "dtype", "float32") == Precision.FP32.torch_dtype_name else Precision.FP16)
    tol = tolerance_for(precision)
    result: dict[str, Any] = {"reference": "torch float32 eager, same weights, same device", "inputs": len(outs), "tolerance": precision, "outputs": {}}
    for name in reference[0]:
        if name not in outs[0]:
            continue
        ref = np.concatenate([r[name] for r in reference])
        got = np.concatenate([o[name] for o in outs])
        o = compare_output(name, ref, got, tol)
        result["outputs"][name] = {"max_row_rel": o.max_row_rel, "cosine": o.cosine, "max_abs": o.max_abs, "ref_std": o.ref_std,
                                   "passed": o.passed, "rule": o.rule}
    return result


def _torch_cuda():
    torch = sys.modules.get("torch")
    return torch if torch is not None and torch.cuda.is_available() else None


def _resolve_config(target: Target, runner: Runner) -> PolicyConfig:
    cfg = target.config or runner.config
    if cfg is None and target.kind in ("onnx", "engine"):
        from vla_export.artifacts.manifest import read_manifest

        manifest = read_manifest(target.artifact, required=False)
        if manifest and manifest.config is not None:
            cfg = manifest.config
    if cfg is None:
        raise ConfigError(f"{target.artifact}: the policy config is unknown (no manifest with one); pass --config")
    return cfg


#: Fastest first: when a runtime may compute in several precisions, the floor takes the fastest, so it stays a lower bound.
_FASTEST = tuple(p.compute_dtype_name for p in (Precision.INT8, Precision.FP16, Precision.BF16, Precision.FP32))


def _cost(target: Target, cfg: PolicyConfig, runner: Runner, settings: BenchSettings) -> ModelCost:
    """FLOPs from the config; weight bytes and precision from what actually runs.

    torch: its dtype. ONNX: the graph's initializers (exact for any precision, Q/DQ included) and the
    fastest element type among them. Otherwise the runner's declared precision, or int8 when it
    declares none (the lowest floor, so a real measurement is never flagged).
    """
    dtype = runner.precision if runner.precision in DTYPE_BYTES else None
    if getattr(runner, "quantize", None):  # 8-bit weights (int8 or float8: one byte each, the same Hopper peak): the lowest floor
        dtype = Precision.INT8.compute_dtype_name
    if target.kind == "onnx":
        by_type = onnx_weight_bytes(target.artifact)
        present = [d for d in _FASTEST if any(f"({d})" in k for k in by_type)] or ["float32"]
        cost = policy_cost(cfg, window=settings.window, text_len=settings.text_len, dtype=dtype or present[0])
        return dataclasses.replace(cost, weight_bytes_by_part=by_type, source="onnx initializers (bytes), config (FLOPs)")
    return policy_cost(cfg, window=settings.window, text_len=settings.text_len, dtype=dtype or _FASTEST[0])


def _check_fixed_shapes(target: Target, runner: Runner, settings: BenchSettings) -> None:
    """A graph exported with a fixed batch or window runs only at that size: say so instead of failing inside the runtime."""
    pixels = runner.input_shapes.get(PIXEL_VALUES)
    if not pixels or len(pixels) != 5:
        return
    for axis, (name, wanted) in enumerate((("--batch", settings.batch), ("--window", settings.window))):
        fixed = pixels[axis]
        if isinstance(fixed, int) and fixed != wanted:
            raise ConfigError(f"{target.artifact}: exported for {name} {fixed} (a fixed axis), asked for {wanted}; run with {name} {fixed}")


def fallback_warnings(info: dict[str, Any]) -> list[str]:
    """Say it when a runtime ran on something other than what was asked (onnxruntime's silent CPU fallback)."""
    requested, actual = info.get("requested_providers"), info.get("provider")
    if requested and actual and requested[0] != actual:
        return [f"asked for {requested[0]} but {actual} ran (silent fallback: are the CUDA/TensorRT libraries installed?)"]
    return []


def bench_target(target: Target, settings: BenchSettings, peak: DevicePeak, *, profile: bool = False,
                 monitors: Sequence[Monitor] = (), reference: list[dict[str, np.ndarray]] | None = None) -> BackendResult:
    """Activate the target's runner, time each mode, deactivate; the floor is checked for each mode.

    ``profile`` adds a torch.profiler pass over the compute-only loop after the timed runs (never timed);
    ``monitors`` watch each mode's timed window (contention, Jetson power);
    ``reference``: the float32 outputs on the parity inputs (:func:`reference_outputs`), compared after the timed runs.
    """
    runner = target.make_runner()
    t0 = time.perf_counter()
    runner.activate()
    activate_s = time.perf_counter() - t0
    try:
        cfg = _resolve_config(target, runner)
        _check_fixed_shapes(target, runner, settings)
        check_window_memory(cfg, settings.window, batch=settings.batch, text_len=settings.text_len, factor=1.5)
        feed = SyntheticSource(cfg, seed=settings.seed, batch=settings.batch, window=settings.window, text_len=settings.text_len).sample(0)
        info = runner.describe()
        if ACTIONS not in runner.output_names:
            raise ConfigError(f"{target.artifact}: outputs {list(runner.output_names)} have no 'actions': not a whole policy (time a split part with --streaming)")
        cost = _cost(target, cfg, runner, settings)
        t0 = time.perf_counter()
        outputs = runner.infer(feed)
        first_infer_s = time.perf_counter() - t0
        torch = _torch_cuda()
        if torch is not None:  # steady state: weights, activations and graph pools, not the load's transient copies
            torch.cuda.reset_peak_memory_stats()
        finite = all(bool(np.all(np.isfinite(v))) for v in outputs.values())
        warnings = fallback_warnings(info)
        if not finite:
            warnings.append("outputs are not finite (NaN/Inf): the timings below are of a broken computation")
        modes: dict[str, ModeResult] = {}
        warm_total = 0.0
        for mode in settings.modes:
            watch = RowWatch(monitors)
            phases: dict[str, float] = {}
            phase_samples: dict[str, list[float]] = {}
            if mode == "compute":
                staged = runner.stage(feed)

                def step() -> None:
                    runner.execute(staged)
                    runner.synchronize()

                samples, warm = time_loop(step, warmup=settings.warmup, iters=settings.iters, duration_s=settings.duration_s, watch=watch,
                                          label=f"{target.label} {mode}")
            else:
                e2e = (EndToEndDevice if mode == "e2e-gpu" else EndToEnd)(runner, feed, cfg, settings)
                _, warm = time_loop(e2e, warmup=settings.warmup, iters=0, duration_s=None, label=f"{target.label} {mode} warm-up")
                e2e.record = True
                samples, _ = time_loop(e2e, warmup=0, iters=settings.iters, duration_s=settings.duration_s, watch=watch,
                                       label=f"{target.label} {mode}")
                phases = {k: float(np.median(v)) * 1e3 for k, v in e2e.phases.items()}
                phase_samples = {k: [round(x * 1e3, 6) for x in v] for k, v in e2e.phases.items()}
            warm_total += warm
            stats = LatencyStats.from_seconds(samples)
            floor = check_floor(cost, peak, stats.p50_ms)
            warnings += floor.notes if floor.below_floor else []
            warnings += [f"{mode}: {w}" for w in watch.warnings()]
            modes[mode] = ModeResult(stats, floor, phases, [round(x * 1e3, 6) for x in samples], phase_samples, watch.results)
        parity = parity_against(runner, cfg, settings, reference, target.spec) if reference is not None else None
        summary = None
        if profile:
            from vla_export.bench.profile import profile_runner

            summary = profile_runner(runner, runner.stage(feed))
        peak_gpu = int(torch.cuda.max_memory_allocated()) if torch is not None and runner.device == "cuda" else None
    finally:
        runner.deactivate()
    return BackendResult(
        label=target.label,
        artifact=target.artifact,
        backend=target.spec.text,
        runner=info,
        activate_s=activate_s,
        first_infer_s=first_infer_s,
        warmup_s=warm_total,
        modes=modes,
        cost=cost,
        peak_rss_bytes=peak_rss_bytes(),
        peak_gpu_bytes=peak_gpu,
        outputs_finite=finite,
        warnings=warnings,
        profile=summary,
        parity=parity,
    )


def check_modes(targets: Sequence[Target], settings: BenchSettings) -> None:
    """Refuse, before anything runs, a mode or check that cannot act on some row (never drop it silently)."""
    if "e2e-gpu" in settings.modes:
        off = [t.label for t in targets if t.spec.kind != "torch" or not t.spec.device.startswith("cuda")]
        if off:
            raise ConfigError(f"--mode e2e-gpu preprocesses on the GPU, which only torch CUDA backends do; not: {', '.join(off)} "
                              "(use --mode e2e for these rows, or bench them in a separate run)")
    if settings.parity_inputs:
        off = [t.label for t in targets if t.make_reference is None]
        if off:
            raise ConfigError(f"--parity compares torch rows with their float32 weights; not: {', '.join(off)} (use vla-export verify for artifacts)")


def run_benchmark(
    targets: Sequence[Target],
    settings: BenchSettings,
    *,
    peak: DevicePeak,
    environment: dict[str, Any],
    command: str,
    on_result: Callable[[BenchReport], None] | None = None,
    profile: bool = False,
    monitors: Sequence[Monitor] = (),
) -> BenchReport:
    """Benchmark each target in turn (one runner active at a time) into one report.

    ``on_result`` sees the report after each row (``complete`` False until the last), so a caller can
    save partial results of a long run.
    """
    if not targets:
        raise RunnerError("nothing to benchmark")
    check_modes(targets, settings)
    report = BenchReport(command, settings, environment, peak, [], complete=False)
    references: dict[tuple[str, str], list[dict[str, np.ndarray]]] = {}
    for i, target in enumerate(targets):
        reference = None
        if settings.parity_inputs:
            key = (target.artifact, target.spec.device)
            if key not in references:  # one float32 run per artifact and device, before its first row
                references[key] = reference_outputs(target, settings)
            reference = references[key]
        report.results.append(bench_target(target, settings, peak, profile=profile, monitors=monitors, reference=reference))
        report.complete = i == len(targets) - 1
        if on_result:
            on_result(report)
    return report
