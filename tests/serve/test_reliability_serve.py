"""Issue 21, items 1-4: the fleet survives its worst robot and its own launcher's death, against a real tritonserver.

One server for the module (3 robots, batches of 2: Triton holds 3 + 4 sequence slots), two failed starts
(fast: the model does not load) and one `vla-export serve` killed with SIGKILL. Loopback only, free
ports, a client timeout on every request, every process stopped by the test itself.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import assert_one_error
from vla_export.errors import ExitCode

grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed (make install)")
from tritonclient.utils import InferenceServerException  # noqa: E402

from vla_export.serve.repository import TritonOptions, write_repository  # noqa: E402
from vla_export.serve.server import TritonServer, free_port  # noqa: E402

pytestmark = pytest.mark.serve

MODEL = "tiny"
TIMEOUT_S = 10.0  # per request: a START queued for a slot (the old behaviour) fails the test instead of hanging it
FRAME = np.random.default_rng(0).integers(0, 256, (1, 36, 48, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def repo(triton_here, tiny_split, tmp_path_factory):
    return write_repository(tiny_split.manifest_path, tmp_path_factory.mktemp("rel") / "repo",
                            TritonOptions(max_robots=3, max_batch=2, idle_seconds=60, text_len=16)).path


@pytest.fixture(scope="module")
def server(repo):
    srv = TritonServer(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), ready_timeout=90)
    with srv:
        yield srv
    assert srv.process is None


def step(srv, robot, *, start=False, end=False, instruction=None, frame=True):
    """One request; (STEP, seconds) or (the error message, seconds)."""
    ins = []
    if frame:
        ins.append(grpcclient.InferInput("FRAME", list(FRAME.shape), "UINT8"))
        ins[-1].set_data_from_numpy(FRAME)
    if instruction is not None:
        text = np.frombuffer(instruction.encode(), np.uint8)[None]
        ins.append(grpcclient.InferInput("INSTRUCTION", list(text.shape), "UINT8"))
        ins[-1].set_data_from_numpy(text)
    t0 = time.monotonic()
    try:
        res = grpcclient.InferenceServerClient(srv.grpc_url).infer(MODEL, ins, sequence_id=robot, sequence_start=start,
                                                                    sequence_end=end, client_timeout=TIMEOUT_S)
        return int(res.as_numpy("STEP").reshape(-1)[0]), time.monotonic() - t0
    except InferenceServerException as exc:
        return str(exc), time.monotonic() - t0


def metric(srv, name):
    with urllib.request.urlopen(srv.metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(v) for v in re.findall(rf'^{name}\{{[^}}]*model="{MODEL}"[^}}]*\}} ([0-9.eE+-]+)$', text, re.M))


# --- 1. a refused START frees its slot; a full server says so -----------------------------------------

def test_refused_starts_free_their_slots_and_a_full_server_says_so(server):
    for robot in range(1, 13):  # 12 refused STARTs: more than Triton's 7 slots, each held until the idle timeout before
        answer, seconds = step(server, robot, start=True)
        assert "needs the INSTRUCTION input" in str(answer) and seconds < 5, (robot, answer, seconds)
    time.sleep(0.2)  # the model's END of the last refused sequence runs in its next execution
    for robot in (21, 22, 23):
        assert step(server, robot, start=True, instruction="go to the cup")[0] == 1
    answer, seconds = step(server, 24, start=True, instruction="go to the cup")
    assert "no free slot" in str(answer) and "--max-robots" in str(answer) and seconds < 5, answer
    assert step(server, 21)[0] == 2  # the robots holding the slots go on
    assert step(server, 21, end=True)[0] == 3
    time.sleep(0.2)
    assert step(server, 24, start=True, instruction="turn left")[0] == 1  # a slot freed by END is taken
    for robot in (22, 23, 24):
        assert isinstance(step(server, robot, end=True)[0], int)


# --- 4. a request without FRAME, the failure counter, a clean log ---------------------------------------

def test_model_errors_are_clear_counted_and_the_log_stays_clean(server):
    before = metric(server, "vla_export_request_failure")
    answer, _ = step(server, 31, start=True, instruction="go", frame=False)
    assert "no FRAME input" in str(answer) and "AttributeError" not in str(answer)
    assert "needs the INSTRUCTION input" in str(step(server, 32, start=True)[0])
    for k in range(6):  # good responses: each one logged a PyCapsule_GetPointer traceback before
        assert step(server, 33, start=k == 0, end=k == 5, instruction="go" if k == 0 else None)[0] == k + 1
    deadline = time.monotonic() + 10
    while metric(server, "vla_export_request_failure") - before < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metric(server, "vla_export_request_failure") - before == 2
    log = server.log_path.read_text(errors="replace")
    assert "PyCapsule_GetPointer" not in log and "AttributeError" not in log


# --- 2. the launcher dies: the server goes too; a later serve says who holds the port ------------------

def test_serve_killed_with_sigkill_takes_the_server_with_it(repo, tmp_path):
    from vla_export.serve.server import port_holder

    cmd = [sys.executable, "-m", "vla_export.cli.main", "serve", str(repo), "--http-port", "0", "--grpc-port", "0",
           "--metrics-port", "0", "--log", str(tmp_path / "server.log")]
    launcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ | {"COLUMNS": "400"})
    triton_pid = None
    try:
        deadline, text = time.monotonic() + 120, ""
        while time.monotonic() < deadline and "stops it" not in text:
            line = launcher.stdout.readline()
            if not line:
                break
            text += line
        port = int(re.search(r"HTTP 127\.0\.0\.1:(\d+)", text).group(1))
        holder = port_holder(port)
        assert holder and "tritonserver" in holder, holder
        triton_pid = int(holder.split()[1])
        command = Path(f"/proc/{triton_pid}/cmdline").read_bytes().decode().split("\0")
        workdir = next(a for a in command if a.startswith("--backend-directory="))[len("--backend-directory="):-len("/backends")]
        # a second serve on the same port names who holds it
        r = subprocess.run([*cmd[:5], "--http-port", str(port), "--grpc-port", "0", "--metrics-port", "0"], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == ExitCode.ENVIRONMENT and f"in use by pid {triton_pid} (" in r.stderr and "tritonserver" in r.stderr, r.stderr
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(timeout=10)
        deadline = time.monotonic() + 40  # Triton drains for up to 5 s (--exit-timeout-secs), the watchdog kills at 20 s
        while time.monotonic() < deadline and Path(f"/proc/{triton_pid}").exists():
            time.sleep(0.2)
        assert not Path(f"/proc/{triton_pid}").exists(), "tritonserver outlived its launcher"
        time.sleep(0.5)
        assert not Path(workdir).exists()  # the watchdog removed the work folder a killed launcher could not
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        if triton_pid and Path(f"/proc/{triton_pid}").exists():
            os.kill(triton_pid, signal.SIGKILL)


# --- 3. a failed start names its cause and its log, and leaves no work folder --------------------------

@pytest.mark.parametrize("edit, cause", [
    (lambda t: t.replace("max_batch_size:", 'bogus_field: 1\nmax_batch_size:'), 'has no field named "bogus_field"'),
    (lambda t: t.replace("KIND_CPU", "KIND_GPU"), "KIND_GPU but no GPUs are available"),
])
def test_a_failed_start_shows_its_cause(cli, repo, tiny_split, tmp_path, edit, cause):
    broken = write_repository(tiny_split.manifest_path, tmp_path / "broken", TritonOptions(max_robots=2)).path
    config = broken / "tiny" / "config.pbtxt"
    config.write_text(edit(config.read_text()))
    folders = lambda: {p for p in Path(tempfile.gettempdir()).glob(f"vla-triton-{os.getpid()}-*") if p.is_dir()}  # noqa: E731
    before = folders()
    r = cli("serve", broken, "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--timeout", "60")
    line = assert_one_error(r, ExitCode.ENVIRONMENT, "before it was ready", cause, "(log: ")
    assert "+---" not in line and "exit_timeout" not in line and "Fatal" not in line  # not the options table
    log = Path(re.search(r"\(log: (\S+)\)", line).group(1))
    assert log.exists() and cause in log.read_text()
    assert folders() == before  # its work folder went (the log stays, named)
    log.unlink()


def test_serve_usage_errors_are_exit_2(cli, repo):
    for args, needle in [(("--http-port", "8123", "--grpc-port", "8123"), "both 8123"), (("--http-port", "99999"), "1-65535"),
                         (("--metrics-port", "-1"), "1-65535"), (("--timeout", "0"), "--timeout"), (("--timeout", "-5"), "--timeout")]:
        assert_one_error(cli("serve", repo, *args), ExitCode.BAD_INPUT, needle)


# --- 4. the repository: a whole policy as a part, --text-len 0, --dtype, folder mode ---------------------

def test_triton_refuses_what_would_fail_only_when_served(cli, tiny_split, tiny_onnx, tiny_ckpt, tmp_path):
    split = tiny_split.manifest_path
    assert_one_error(cli("triton", split, "-o", tmp_path / "a", "--head", tiny_onnx), ExitCode.BAD_INPUT, "--head is a whole policy")
    assert_one_error(cli("triton", split, "-o", tmp_path / "a", "--backbone", split.parent / "tiny.head.onnx"), ExitCode.BAD_INPUT,
                     "--backbone is the head part")
    assert_one_error(cli("triton", split, "-o", tmp_path / "a", "--text-len", "0"), ExitCode.BAD_INPUT, "--text-len", "got 0")
    assert_one_error(cli("triton", tiny_ckpt, "-o", tmp_path / "a", "--dtype", "int8"), ExitCode.BAD_INPUT, "--dtype", "int8")
    assert_one_error(cli("triton", split, "-o", tmp_path / "a", "--dtype", "float16"), ExitCode.BAD_INPUT, "--dtype applies to --backend torch")
    assert not (tmp_path / "a").exists()


def test_the_repository_is_readable_by_another_user(cli, tiny_split, tmp_path):
    for umask, mode in ((0o022, 0o755), (0o027, 0o750)):
        old = os.umask(umask)
        try:
            assert cli("triton", tiny_split.manifest_path, "-o", tmp_path / f"r{umask:o}").exit_code == 0
        finally:
            os.umask(old)
        assert (tmp_path / f"r{umask:o}").stat().st_mode & 0o777 == mode
