"""The fleet benchmark: N simulated robots at a control rate against a running Triton server.

Each robot is a thread with its own gRPC client and correlation id: START with its instruction, then
one raw camera frame per control period (a robot that falls behind sends at once and counts a missed
deadline; rate 0 sends as fast as answers come), END at the end. Per N it reports the achieved step
rate, end-to-end latency percentiles (client side: request to answer), and what the server's
Prometheus metrics say happened in between: time queued, time computing, and robots per execution.
Beside it, ``raw_frames_per_s`` is the same policy's batched step in this process, without a server
(:func:`~vla_export.runtime.batch.step_batch`), measured in the same run.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from vla_export.bench.stats import LatencyStats
from vla_export.errors import DataError
from vla_export.lazy import lazy_import
from vla_export.runtime.batch import step_batch
from vla_export.runtime.policy import Policy

SCHEMA = "vla-export/fleet-bench/1"
METRICS = ("nv_inference_request_success", "nv_inference_request_failure", "nv_inference_exec_count",
           "nv_inference_count", "nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us",
           "nv_inference_compute_input_duration_us", "nv_inference_compute_output_duration_us", "nv_inference_request_duration_us")


def scrape(metrics_url: str, model: str) -> dict[str, float]:
    """The model's counters from Triton's Prometheus endpoint (summed over versions)."""
    with urllib.request.urlopen(metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    found = dict.fromkeys(METRICS, 0.0)
    pattern = re.compile(r'^(\w+)\{([^}]*)\}\s+([0-9.eE+-]+)$')
    for line in text.splitlines():
        m = pattern.match(line)
        if m and m.group(1) in found and f'model="{model}"' in m.group(2):
            found[m.group(1)] += float(m.group(3))
    return found


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
        "failures": d["nv_inference_request_failure"],
        "executions": d["nv_inference_exec_count"],
        "robots_per_execution": d["nv_inference_count"] / execs,
        "queue_ms_per_request": d["nv_inference_queue_duration_us"] / ok / 1e3,
        "compute_ms_per_request": d["nv_inference_compute_infer_duration_us"] / ok / 1e3,
        "compute_input_ms_per_request": d["nv_inference_compute_input_duration_us"] / ok / 1e3,
        "compute_output_ms_per_request": d["nv_inference_compute_output_duration_us"] / ok / 1e3,
        "request_ms_per_request": d["nv_inference_request_duration_us"] / ok / 1e3,
    }


def drive_fleet(grpc_url: str, metrics_url: str, model: str, *, robots: int, rate_hz: float, seconds: float,
                frame_hw: tuple[int, int] = (480, 640), instruction: str = "go to the cup", first_id: int = 1000,
                seed: int = 0, timeout_s: float = 30.0) -> FleetRow:
    """``robots`` robots for ``seconds`` at ``rate_hz`` (0: closed loop); bounded: every request has a timeout."""
    grpc = lazy_import("tritonclient.grpc", purpose="the fleet benchmark", install="`pip install 'tritonclient[grpc]'`")
    if robots < 1 or seconds <= 0 or rate_hz < 0:
        raise DataError("robots must be >= 1, seconds > 0 and the rate >= 0")
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (4, *frame_hw, 3), dtype=np.uint8)  # a few distinct frames, reused
    text = np.frombuffer(instruction.encode(), dtype=np.uint8)[None]
    latencies: list[float] = []
    errors: list[str] = []
    missed = [0]
    lock = threading.Lock()
    start_at = time.monotonic() + 0.5
    stop_at = start_at + seconds

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

    before = scrape(metrics_url, model)
    threads = [threading.Thread(target=robot, args=(i,), daemon=True) for i in range(robots)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 2 * timeout_s + 5)
    wall = max(time.monotonic() - max(t0, start_at), 1e-9)
    hung = sum(t.is_alive() for t in threads)
    if hung:
        errors.append(f"{hung} robots still waiting after the time limit")
    after = scrape(metrics_url, model)
    e2e = LatencyStats.from_seconds(latencies).to_dict() if latencies else {}
    return FleetRow(robots, rate_hz, round(wall, 3), len(latencies), len(errors), len(latencies) / wall, e2e, missed[0],
                    _server_delta(before, after), errors=errors[:5])


def raw_step_rate(template: Policy, robots: int, *, seconds: float = 2.0, frame_hw: tuple[int, int] = (480, 640), seed: int = 0,
                  clock: Callable[[], float] = time.perf_counter) -> float:
    """Frames per second of ``step_batch`` over ``robots`` robots in this process (no server): the raw capacity."""
    frames = np.random.default_rng(seed).integers(0, 256, (robots, *frame_hw, 3), dtype=np.uint8)
    policies = []
    for _ in range(robots):
        p = Policy(template.backbone, template.head, tokenizer=template.tokenizer, window=template.window,
                   image_size=template.image_size, action_dim=template.action_dim, text_len=template.text_len)
        p.reset("go to the cup")
        policies.append(p)
    step_batch(policies, list(frames))  # warm-up
    n, t0 = 0, clock()
    while clock() - t0 < seconds:
        step_batch(policies, list(frames))
        n += robots
    return n / (clock() - t0)


def fleet_report(rows: Sequence[FleetRow], **info: Any) -> dict[str, Any]:
    return {"schema": SCHEMA, **info, "rows": [r.to_dict() for r in rows]}
