"""`vla-export serve` as a user runs it: a real tritonserver started, ready, stopped by SIGTERM; its errors."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from vla_export.errors import EnvironmentProblem

pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed (make install)")

from vla_export.serve.repository import TritonOptions, write_repository  # noqa: E402
from vla_export.serve.server import find_triton  # noqa: E402

pytestmark = pytest.mark.serve


@pytest.fixture(scope="module")
def repo(tiny_split, tmp_path_factory):
    try:
        find_triton()
    except EnvironmentProblem as exc:
        pytest.skip(f"no tritonserver here: {exc}")
    return write_repository(tiny_split.manifest_path, tmp_path_factory.mktemp("cli") / "repo", TritonOptions(max_robots=2)).path


def test_serve_runs_until_sigterm(repo, tmp_path):
    log = tmp_path / "server.log"
    cmd = [sys.executable, "-m", "vla_export.cli.main", "serve", str(repo), "--http-port", "0", "--grpc-port", "0",
           "--metrics-port", "0", "--log", str(log)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ | {"COLUMNS": "400"})
    try:
        deadline, lines = time.monotonic() + 120, []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C to stop" in line:
                break
        text = "".join(lines)
        assert "ready" in text, text
        port = re.search(r"HTTP 127\.0\.0\.1:(\d+)", text).group(1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/tiny/ready", timeout=5) as resp:
            assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, text + rest
    assert "stopped (tritonserver exit code 0)" in rest
    assert "Started GRPCInferenceService" in log.read_text()


def test_serve_refuses_a_port_in_use(cli, repo):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = cli("serve", repo, "--http-port", str(port), "--grpc-port", "0", "--metrics-port", "0")
    assert r.exit_code == 3 and f"port {port} (http) on 127.0.0.1 is in use" in r.stderr


def test_serve_reports_a_model_that_does_not_load(cli, repo, tmp_path):
    broken = tmp_path / "broken"
    write_repository(Path(repo) / "tiny" / "1" / "tiny.split.json", broken)
    part = broken / "tiny" / "1" / "tiny.backbone.onnx"
    part.unlink()  # a hard link to the export: replace, never write through it
    part.write_bytes(b"garbage")
    r = cli("serve", broken, "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--timeout", "60")
    assert r.exit_code == 3, r
    assert "before it was ready" in r.stderr or "not ready within" in r.stderr
    assert "tiny.backbone.onnx" in r.stderr and "not a readable ONNX model" in r.stderr  # the log's last lines
