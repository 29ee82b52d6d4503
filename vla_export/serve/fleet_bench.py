"""The fleet benchmark: N simulated robots at a control rate against a running Triton server.

Each robot is a thread with its own gRPC client and correlation id: START with its instruction, then
one raw camera frame per control period (a robot that falls behind sends at once and counts a missed
deadline; rate 0 sends as fast as answers come), END at the end. Per N it reports the achieved step
rate, end-to-end latency percentiles (client side: request to answer), and what the server's
Prometheus metrics say happened in between: time queued, time computing, and robots per execution.
Beside it, measured in the same run without a server: ``raw_frames_per_s``, the same policy's batched
step in this process (:func:`~vla_export.runtime.batch.step_batch`), and :func:`raw_backbone_rate`, the
backbone alone on staged inputs.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from vla_export.data.iospec import PIXEL_VALUES
from vla_export import schemas
from vla_export.stats import LatencyStats
from vla_export.errors import DataError, RunnerError
from vla_export.lazy import lazy_import
from vla_export.runtime.batch import step_batch
from vla_export.backends.torch_runner import ModuleRunner
from vla_export.runtime.policy import BACKBONE_INPUTS, BACKBONE_OUTPUTS, Policy
from vla_export.serve.fleet import FAILURE_METRIC, PHASES

SCHEMA = schemas.FLEET_BENCH
METRICS = ("nv_inference_request_success", "nv_inference_request_failure", "nv_inference_exec_count",
           "nv_inference_count", "nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us",
           "nv_inference_compute_input_duration_us", "nv_inference_compute_output_duration_us", "nv_inference_request_duration_us")
#: The generated model's own counters (microseconds per phase of its execute(), summed over instances).
PHASE_METRICS = tuple(f"vla_export_{phase}_us" for phase in PHASES)


PROMETHEUS_INSTALL = "`pip install prometheus_client` (or `pip install 'vla-export[serve]'`)"


def parse_metrics(text: str, model: str) -> dict[str, float]:
    """The model's counters in Prometheus exposition ``text`` (summed over versions), parsed by
    ``prometheus_client``'s text parser; a counter the server does not expose reads 0."""
    parser = lazy_import("prometheus_client.parser", purpose="reading Triton's metrics", install=PROMETHEUS_INSTALL)
    found = dict.fromkeys(METRICS + PHASE_METRICS + (FAILURE_METRIC,), 0.0)
    try:
        for family in parser.text_string_to_metric_families(text):
            for sample in family.samples:
                # the parser names a counter's samples NAME_total; Triton exposes them as NAME
                name = family.name if sample.name == f"{family.name}_total" else sample.name
                if name in found and sample.labels.get("model") == model:
                    found[name] += float(sample.value)
    except ValueError as exc:
        raise RunnerError(f"the server's metrics are not Prometheus text ({exc})") from None
    return found


def scrape(metrics_url: str, model: str) -> dict[str, float]:
    """The model's counters from Triton's Prometheus endpoint (see :func:`parse_metrics`)."""
    with urllib.request.urlopen(metrics_url, timeout=10) as resp:
        return parse_metrics(resp.read().decode(), model)


@dataclass
class FleetRow:
    """One fleet size N: what the robots saw and what the server's metrics say."""

    robots: int
    rate_hz: float
    seconds: float
    steps: int
    failed: int
    step_rate: float  # answered steps per second, all robots
    e2e: dict[str, Any]
    missed_deadlines: int
    server: dict[str, float]
    raw_frames_per_s: float | None = None
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _server_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    d = {k: after[k] - before[k] for k in METRICS}
    ok = max(d["nv_inference_request_success"], 1.0)
    execs = max(d["nv_inference_exec_count"], 1.0)
    return {
        "requests": d["nv_inference_request_success"],
        # Triton's counter misses the requests the model answered with an error; the model counts those itself
        "failures": d["nv_inference_request_failure"] + after[FAILURE_METRIC] - before[FAILURE_METRIC],
        "executions": d["nv_inference_exec_count"],
        "robots_per_execution": d["nv_inference_count"] / execs,
        "queue_ms_per_request": d["nv_inference_queue_duration_us"] / ok / 1e3,
        "compute_ms_per_request": d["nv_inference_compute_infer_duration_us"] / ok / 1e3,
        "compute_input_ms_per_request": d["nv_inference_compute_input_duration_us"] / ok / 1e3,
        "compute_output_ms_per_request": d["nv_inference_compute_output_duration_us"] / ok / 1e3,
        "request_ms_per_request": d["nv_inference_request_duration_us"] / ok / 1e3,
        # where an execution's time goes, by the model's own clock (all zero from a model without these counters)
        **{f"{phase}_ms_per_execution": (after[m] - before[m]) / execs / 1e3 for phase, m in zip(PHASES, PHASE_METRICS)},
    }


def _drive_robots(grpc_url: str, model: str, indices: Sequence[int], robots: int, rate_hz: float, start_at: float, stop_at: float,
                  frame_hw: tuple[int, int], instruction: str, first_id: int, seed: int, timeout_s: float) -> tuple[list[float], list[str], int]:
    """The robots ``indices`` of ``robots``, one thread each: (latencies in s, errors, missed deadlines).

    Top-level so that a client process can run it (``time.monotonic`` is one clock for all processes).
    """
    grpc = lazy_import("tritonclient.grpc", purpose="the fleet benchmark", install="`pip install 'tritonclient[grpc]'`")
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (4, *frame_hw, 3), dtype=np.uint8)  # a few distinct frames, reused
    text = np.frombuffer(instruction.encode(), dtype=np.uint8)[None]
    latencies: list[float] = []
    errors: list[str] = []
    missed = [0]
    lock = threading.Lock()

    def robot(index: int) -> None:
        client = grpc.InferenceServerClient(grpc_url)
        corr = first_id + index
        period = 1.0 / rate_hz if rate_hz else 0.0
        next_t = start_at + (period * index / robots if period else 0.0)  # robots' phases spread over the period
        k = 0
        while True:
            now = time.monotonic()
            if next_t > now:
                time.sleep(next_t - now)
            last = time.monotonic() + max(period, 0.0) >= stop_at
            frame = frames[(index + k) % len(frames)][None]
            ins = [grpc.InferInput("FRAME", list(frame.shape), "UINT8")]
            ins[0].set_data_from_numpy(frame)
            if k == 0:
                ins.append(grpc.InferInput("INSTRUCTION", list(text.shape), "UINT8"))
                ins[-1].set_data_from_numpy(text)
            t = time.perf_counter()
            try:
                client.infer(model, ins, sequence_id=corr, sequence_start=k == 0, sequence_end=last, client_timeout=timeout_s)
            except Exception as exc:  # counted and reported: one failing robot must not hide the others' figures
                with lock:
                    errors.append(f"robot {corr} step {k}: {exc}")
                return
            dt = time.perf_counter() - t
            with lock:
                latencies.append(dt)
                if period and dt > period:
                    missed[0] += 1
            k += 1
            if last:
                return
            next_t = max(next_t + period, time.monotonic()) if period else time.monotonic()

    threads = [threading.Thread(target=robot, args=(i,), daemon=True) for i in indices]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(stop_at - time.monotonic(), 0) + 2 * timeout_s + 5)
    hung = sum(t.is_alive() for t in threads)
    if hung:
        errors.append(f"{hung} robots still waiting after the time limit")
    return latencies, errors, missed[0]


def drive_fleet(grpc_url: str, metrics_url: str, model: str, *, robots: int, rate_hz: float, seconds: float,
                frame_hw: tuple[int, int] = (480, 640), instruction: str = "go to the cup", first_id: int = 1000,
                seed: int = 0, timeout_s: float = 30.0, processes: int = 1) -> FleetRow:
    """``robots`` robots for ``seconds`` at ``rate_hz`` (0: closed loop); bounded: every request has a timeout.

    ``processes`` > 1 spreads the robots over that many client processes, so that one Python client's
    lock does not add its own queueing to the latencies of a large fleet.
    """
    if robots < 1 or seconds <= 0 or rate_hz < 0 or processes < 1:
        raise DataError("robots must be >= 1, seconds > 0, the rate >= 0 and processes >= 1")
    processes = min(processes, robots)
    start_at = time.monotonic() + (0.5 if processes == 1 else 5.0)  # time for the client processes to start
    stop_at = start_at + seconds
    groups = [list(range(robots))[k::processes] for k in range(processes)]
    args = [(grpc_url, model, g, robots, rate_hz, start_at, stop_at, frame_hw, instruction, first_id, seed, timeout_s) for g in groups]
    before = scrape(metrics_url, model)
    if processes == 1:
        results = [_drive_robots(*args[0])]
    else:
        with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_drive_robots, *a) for a in args]
            results = [f.result(timeout=seconds + 2 * timeout_s + 30) for f in futures]
    wall = max(time.monotonic() - start_at, 1e-9)
    latencies = [x for r in results for x in r[0]]
    after = scrape(metrics_url, model)
    deadline = time.monotonic() + 5  # the backend records an execution's statistics just after sending its responses
    while after["nv_inference_request_success"] - before["nv_inference_request_success"] < len(latencies) and time.monotonic() < deadline:
        time.sleep(0.05)
        after = scrape(metrics_url, model)
    errors = [e for r in results for e in r[1]]
    missed = sum(r[2] for r in results)
    e2e = LatencyStats.from_seconds(latencies).to_dict() if latencies else {}
    return FleetRow(robots, rate_hz, round(wall, 3), len(latencies), len(errors), len(latencies) / wall, e2e, missed,
                    _server_delta(before, after), errors=errors[:5])


def raw_backbone_rate(template: Policy, batch: int, *, seconds: float = 2.0, frame_hw: tuple[int, int] = (224, 224), seed: int = 0,
                      clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """The backbone alone, ``batch`` frames per call, inputs already staged where it runs: the raw capacity
    the issue compares a served fleet with. Each call is timed to its ``synchronize`` (after 3 warm-up calls,
    which also capture a CUDA graph); frames/s, and the median and p99 milliseconds per call."""
    frames = list(np.random.default_rng(seed).integers(0, 256, (batch, *frame_hw, 3), dtype=np.uint8))
    p = template.sibling()
    p.reset("go to the cup")
    backbone = template.backbone
    feed = {PIXEL_VALUES: backbone.preprocess(frames, template.image_size), **{k: np.repeat(v, batch, 0) for k, v in p.prompt.items()}}
    staged = backbone.stage(feed)
    for _ in range(3):
        backbone.execute(staged)
        backbone.synchronize()
    times: list[float] = []
    end = clock() + seconds
    while clock() < end or len(times) < 5:
        t = clock()
        backbone.execute(staged)
        backbone.synchronize()
        times.append(clock() - t)
    ms = np.array(times) * 1e3
    return {"batch": batch, "calls": len(times), "frames_per_s": batch * len(times) / float(np.sum(times)),
            "ms_p50": float(np.percentile(ms, 50)), "ms_p99": float(np.percentile(ms, 99))}


def raw_step_rate(template: Policy, robots: int, *, seconds: float = 2.0, frame_hw: tuple[int, int] = (480, 640), seed: int = 0,
                  clock: Callable[[], float] = time.perf_counter) -> float:
    """Frames per second of ``step_batch`` over ``robots`` robots in this process (no server): the raw capacity."""
    frames = np.random.default_rng(seed).integers(0, 256, (robots, *frame_hw, 3), dtype=np.uint8)
    policies = [template.sibling() for _ in range(robots)]
    for p in policies:
        p.reset("go to the cup")
    step_batch(policies, list(frames))  # warm-up
    n, t0 = 0, clock()
    while clock() - t0 < seconds:
        step_batch(policies, list(frames))
        n += robots
    return n / (clock() - t0)


def anchor_rates(template: Policy, batches: Sequence[int], *, mode: str = "default", seconds: float = 1.5,
                 frame_hw: tuple[int, int] = (224, 224)) -> list[dict[str, Any]]:
    """The raw reference a served fleet is compared with: ``template``'s backbone module alone, compiled
    (``mode``) + CUDA graph + patch matmul in its dtype, per batch size (:func:`raw_backbone_rate`), each row
    with the runner's name and the seconds its first calls took (compile and capture included).

    ``template``'s backbone must be a :class:`ModuleRunner` on CUDA; it is rewritten in place (patch matmul),
    which gives the same results.
    """
    backbone = template.backbone
    if not isinstance(backbone, ModuleRunner) or backbone.device != "cuda":
        raise RunnerError("the compiled anchor needs the policy's backbone as a PyTorch module on CUDA")
    runner = ModuleRunner(backbone.module, BACKBONE_INPUTS, BACKBONE_OUTPUTS, label="anchor", device="cuda", dtype=backbone.dtype,
                          cuda_graph=True, compile=mode, patch_matmul=True)
    anchor = Policy(runner, template.head, tokenizer=template.tokenizer, window=template.window, image_size=template.image_size,
                    text_len=template.text_len, config=template.config)
    rows = []
    with runner:
        for b in batches:
            t0 = time.perf_counter()
            row = raw_backbone_rate(anchor, b, seconds=seconds, frame_hw=frame_hw)
            rows.append(row | {"runner": runner.name, "seconds_with_compile": round(time.perf_counter() - t0, 1)})
    return rows


def fleet_report(rows: Sequence[FleetRow], **info: Any) -> dict[str, Any]:
    return {"schema": SCHEMA, **info, "rows": [r.to_dict() for r in rows]}
