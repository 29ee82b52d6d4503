"""A real tritonserver (nvidia-pytriton wheel) on loopback serving the tiny split export to several robots.

Every action is checked against ``Policy.step`` run in-process on the same frames (the replay
tolerance): data, not shapes, since the stub's numpy 2 trap corrupts data silently. Ports are free
ones on 127.0.0.1; the server is stopped by the module fixture; every request has a client timeout.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from vla_export.compare.tolerance import tolerance_for
from vla_export.runtime.policy import Policy

grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed (make install)")
httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed (make install)")
from tritonclient.utils import InferenceServerException  # noqa: E402

from vla_export.serve.repository import TritonOptions, write_repository  # noqa: E402
from vla_export.serve.server import TritonServer, free_port  # noqa: E402

pytestmark = pytest.mark.serve

MODEL = "tiny"
TEXT_LEN = 32
ATOL = tolerance_for("fp32").atol
TIMEOUT_S = 20.0  # per request


@pytest.fixture(scope="module")
def server(triton_here, tiny_split, tmp_path_factory):
    repo = write_repository(tiny_split.manifest_path, tmp_path_factory.mktemp("triton") / "repo",
                            TritonOptions(max_robots=16, max_batch=8, queue_delay_us=2000, idle_seconds=60))
    srv = TritonServer(repo.path, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), ready_timeout=90)
    with srv:
        yield srv
    assert srv.process is None


def frames(seed: int, n: int, hw=(48, 64)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *hw, 3), dtype=np.uint8)


def reference(split, episodes) -> list[np.ndarray]:
    """In-process ``Policy.step`` over ``[(instruction, frames), ...]``, one reset per episode."""
    out = []
    with Policy.from_artifacts(split, text_len=TEXT_LEN) as policy:
        for instruction, stream in episodes:
            policy.reset(instruction)
            out += [policy.step(f) for f in stream]
    return out


def request_inputs(mod, frame, instruction=None):
    """FRAME [1, H, W, 3] (sent with the frame's own dtype) and, on START, the instruction as UTF-8 bytes."""
    datatype = {np.dtype(np.uint8): "UINT8", np.dtype(np.float32): "FP32"}[frame.dtype]
    ins = [mod.InferInput("FRAME", [1, *frame.shape], datatype)]
    ins[0].set_data_from_numpy(np.ascontiguousarray(frame[None]))
    if instruction is not None:
        text = np.frombuffer(instruction.encode("utf-8"), dtype=np.uint8)[None]
        ins.append(mod.InferInput("INSTRUCTION", list(text.shape), "UINT8"))
        ins[-1].set_data_from_numpy(text)
    return ins


class Robot:
    """One robot's connection: its correlation id and a gRPC or HTTP client."""

    def __init__(self, server, robot: int, protocol: str = "grpc"):
        self.mod = grpcclient if protocol == "grpc" else httpclient
        url = server.grpc_url if protocol == "grpc" else server.http_url
        self.client = self.mod.InferenceServerClient(url) if protocol == "grpc" else self.mod.InferenceServerClient(url, connection_timeout=TIMEOUT_S, network_timeout=TIMEOUT_S)
        self.robot, self.protocol = robot, protocol

    def step(self, frame, *, start=False, end=False, instruction=None, dtype=None):
        ins = request_inputs(self.mod, frame if dtype is None else frame.astype(dtype), instruction)
        kwargs = {"client_timeout": TIMEOUT_S} if self.protocol == "grpc" else {}
        res = self.client.infer(MODEL, ins, sequence_id=self.robot, sequence_start=start, sequence_end=end, **kwargs)
        return res.as_numpy("ACTION")[0].copy(), int(res.as_numpy("STEP").reshape(-1)[0])


def test_three_robots_interleaved_grpc_and_http(server, tiny_split):
    """Robot 11 (gRPC) resets midway with a new instruction, 12 talks HTTP, 13 starts late."""
    f = {r: frames(r, 8) for r in (11, 12, 13)}
    robots = {11: Robot(server, 11, "grpc"), 12: Robot(server, 12, "http"), 13: Robot(server, 13, "grpc")}
    plan = {11: {0: "go to the cup", 4: "reach the leftmost box"}, 12: {0: "reach the rightmost edge"}, 13: {3: "turn left and then stop"}}
    got = {r: [] for r in robots}
    steps = {r: [] for r in robots}
    for k in range(8):
        for r, robot in robots.items():
            first = min(plan[r])
            if k < first:
                continue
            start = k in plan[r]
            action, step = robot.step(f[r][k], start=start, end=k == 7, instruction=plan[r].get(k) if start else None)
            got[r].append(action)
            steps[r].append(step)
    split = tiny_split.manifest_path
    want = {
        11: reference(split, [("go to the cup", f[11][:4]), ("reach the leftmost box", f[11][4:])]),
        12: reference(split, [("reach the rightmost edge", f[12])]),
        13: reference(split, [("turn left and then stop", f[13][3:])]),
    }
    for r in robots:
        np.testing.assert_allclose(np.stack(got[r]), np.stack(want[r]), atol=ATOL, rtol=0, err_msg=f"robot {r}")
    assert steps == {11: [1, 2, 3, 4, 1, 2, 3, 4], 12: list(range(1, 9)), 13: [1, 2, 3, 4, 5]}
    # the data is real: robots and steps differ by far more than the tolerance (a zeroed or repeated tensor would not)
    assert np.abs(np.stack(got[11]) - np.stack(got[12])).max() > 100 * ATOL
    assert np.abs(np.diff(np.stack(got[12]), axis=0)).max() > 100 * ATOL


def test_bad_requests_fail_alone(server, tiny_split):
    good = Robot(server, 21, "grpc")
    f = frames(21, 9)
    got = [good.step(f[0], start=True, instruction="go to the cup")[0]]
    bad = Robot(server, 22, "grpc")
    errors = {}

    def expect_error(label, call):
        with pytest.raises(InferenceServerException) as info:
            call()
        errors[label] = str(info.value)
        got.append(good.step(f[len(got)])[0])  # the good robot goes on between bad requests

    expect_error("no START", lambda: bad.step(f[0]))
    expect_error("correlation id 0", lambda: Robot(server, 0, "grpc").step(f[0], start=True))
    Robot(server, 23, "grpc").step(f[0], start=True, end=True, instruction="turn left")  # an episode that ended: its id is unknown now
    expect_error("unknown id", lambda: Robot(server, 23, "grpc").step(f[0]))
    expect_error("no instruction", lambda: Robot(server, 25, "grpc").step(f[0], start=True))
    expect_error("frame dtype", lambda: bad.step(f[0], start=True, dtype=np.float32))
    expect_error("frame shape", lambda: bad.step(np.zeros((48, 64, 4), np.uint8), start=True))
    expect_error("instruction too long", lambda: Robot(server, 24, "http").step(f[0], start=True, instruction="go to the cup " * 10))
    got.append(good.step(f[len(got)], end=True)[0])
    assert "START" in errors["no START"] and "START" in errors["unknown id"]
    assert "correlation ID" in errors["correlation id 0"]
    assert "INSTRUCTION" in errors["no instruction"]
    assert "FRAME" in errors["frame dtype"] and "FRAME" in errors["frame shape"]
    assert "tokens" in errors["instruction too long"] and "32" in errors["instruction too long"]
    want = reference(tiny_split.manifest_path, [("go to the cup", f[: len(got)])])
    np.testing.assert_allclose(np.stack(got), np.stack(want), atol=ATOL, rtol=0)


def test_load_eight_robots(server, tiny_split, record_property):
    """8 gRPC clients x 100 steps at once: every robot gets its own actions; throughput and p50/p99 reported."""
    clients, steps = 8, 100
    instructions = ["go to the cup", "reach the leftmost box", "turn left", "move forward and then stop"]
    streams = {100 + i: frames(100 + i, steps, (36, 48)) for i in range(clients)}
    got: dict[int, list[np.ndarray]] = {r: [] for r in streams}
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    stats_before = grpcclient.InferenceServerClient(server.grpc_url).get_inference_statistics(MODEL, as_json=True)

    def drive(r: int) -> None:
        robot = Robot(server, r, "grpc")
        try:
            for k, frame in enumerate(streams[r]):
                t = time.perf_counter()
                action, _ = robot.step(frame, start=k == 0, end=k == steps - 1,
                                       instruction=instructions[r % len(instructions)] if k == 0 else None)
                with lock:
                    latencies.append(time.perf_counter() - t)
                got[r].append(action)
        except Exception as exc:  # reported below: a thread must not die silently
            failures.append(f"robot {r}: {exc}")

    threads = [threading.Thread(target=drive, args=(r,), daemon=True) for r in streams]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    wall = time.perf_counter() - t0
    assert not any(t.is_alive() for t in threads), "load test clients did not finish in 120 s"
    assert not failures, failures
    lat = np.array(latencies) * 1e3
    report = {"clients": clients, "steps": steps, "requests": len(lat), "seconds": round(wall, 2),
              "throughput_rps": round(len(lat) / wall, 1), "p50_ms": round(float(np.percentile(lat, 50)), 2),
              "p99_ms": round(float(np.percentile(lat, 99)), 2)}
    count = lambda s, k: int(s["model_stats"][0].get(k, 0))  # noqa: E731
    deadline = time.monotonic() + 10
    while True:  # the backend records an execution's statistics just after it has sent the responses
        stats = grpcclient.InferenceServerClient(server.grpc_url).get_inference_statistics(MODEL, as_json=True)
        if count(stats, "inference_count") - count(stats_before, "inference_count") >= clients * steps or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    report["inferences"] = count(stats, "inference_count") - count(stats_before, "inference_count")
    report["executions"] = count(stats, "execution_count") - count(stats_before, "execution_count")
    print("\nload test:", json.dumps(report))
    record_property("load", report)
    for r, stream in streams.items():
        want = reference(tiny_split.manifest_path, [(instructions[r % len(instructions)], stream)])
        np.testing.assert_allclose(np.stack(got[r]), np.stack(want), atol=ATOL, rtol=0, err_msg=f"robot {r} got another robot's action")
    assert report["inferences"] == clients * steps
    assert report["executions"] < report["inferences"], "the sequence batcher never put two robots in one execution"


def test_fleet_benchmark_reads_the_server_metrics(server, tiny_split):
    """A short fleet run (2 robots at 20 Hz for 1.5 s): its steps match the server's own counters."""
    from vla_export.serve.fleet_bench import drive_fleet, raw_step_rate

    row = drive_fleet(server.grpc_url, server.metrics_url, MODEL, robots=2, rate_hz=20, seconds=1.5, frame_hw=(36, 48), first_id=500)
    assert row.failed == 0 and row.errors == []
    assert 2 <= row.steps <= 2 * (1.5 * 20 + 2)
    assert row.server["requests"] == row.steps and row.server["failures"] == 0
    assert row.server["compute_ms_per_request"] > 0 and row.server["robots_per_execution"] >= 1
    assert row.e2e["p50_ms"] > 0
    assert row.server["backbone_ms_per_execution"] > 0 and row.server["parse_ms_per_execution"] > 0  # the model's own counters
    spread = drive_fleet(server.grpc_url, server.metrics_url, MODEL, robots=3, rate_hz=20, seconds=1.0, frame_hw=(36, 48), first_id=600, processes=2)
    assert spread.failed == 0 and spread.errors == [] and spread.server["requests"] == spread.steps >= 3
    with Policy.from_artifacts(tiny_split.manifest_path, text_len=TEXT_LEN) as template:
        assert raw_step_rate(template, 2, seconds=0.2, frame_hw=(36, 48)) > 0
