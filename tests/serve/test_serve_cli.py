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


pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed (make install)")

from vla_export.serve.repository import TritonOptions, write_repository  # noqa: E402

pytestmark = pytest.mark.serve


@pytest.fixture(scope="module")
def repo(triton_here, tiny_split, tmp_path_factory):
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
            if "Ctrl-C or SIGTERM stops it" in line:
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
    r = cli("serve", broken, "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--timeout", "60", "--log", tmp_path / "s.log")
    assert r.exit_code == 3, r
    assert "before it was ready" in r.stderr or "not ready within" in r.stderr
    assert "tiny.backbone.onnx" in r.stderr and "not a readable ONNX model" in r.stderr  # the log's last lines


def _served_actions(repo, frames, *, sequence_id):
    """One robot's actions from a real tritonserver serving ``repo``: ``frames`` as one sequence, instruction first."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    from vla_export.serve.server import TritonServer, free_port

    got = []
    with TritonServer(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), ready_timeout=90) as srv:
        client = grpcclient.InferenceServerClient(srv.grpc_url)
        for k, frame in enumerate(frames):
            inp = grpcclient.InferInput("FRAME", [1, *frame.shape], "UINT8")
            inp.set_data_from_numpy(frame[None])
            ins = [inp]
            if k == 0:
                text = np.frombuffer(b"go to the cup", dtype=np.uint8)[None]
                ins.append(grpcclient.InferInput("INSTRUCTION", list(text.shape), "UINT8"))
                ins[-1].set_data_from_numpy(text)
            res = client.infer("tiny", ins, sequence_id=sequence_id, sequence_start=k == 0, sequence_end=k == len(frames) - 1,
                               client_timeout=20)
            got.append(res.as_numpy("ACTION")[0])
    return got


def test_checkpoint_served_with_torch_parts(triton_here, tiny_ckpt, tmp_path):
    """--backend torch: the checkpoint's parts in PyTorch inside the Python backend, equal to the in-process policy."""
    import numpy as np

    from vla_export.data.tokenizer import tokenizer_for
    from vla_export.models.loader import PolicyFromCheckpoint
    from vla_export.runtime.parts import torch_streaming_policy

    torch_repo = write_repository(tiny_ckpt, tmp_path / "repo", TritonOptions(max_robots=2)).path
    frames = np.random.default_rng(5).integers(0, 256, (5, 40, 56, 3), dtype=np.uint8)
    got = _served_actions(torch_repo, frames, sequence_id=7)
    loaded = PolicyFromCheckpoint(tiny_ckpt)()
    with torch_streaming_policy(loaded, tokenizer=tokenizer_for(loaded.config), text_len=32) as policy:
        policy.reset("go to the cup")
        want = [policy.step(f) for f in frames]
    np.testing.assert_allclose(np.stack(got), np.stack(want), atol=1e-4, rtol=0)
    assert np.abs(np.diff(np.stack(got), axis=0)).max() > 1e-3


def test_checkpoint_served_with_set_loads_as_the_command_line_said(cli, triton_here, tiny_ckpt, tmp_path):
    """`vla-export triton CKPT --set ...`: the served model is the checkpoint loaded with those options, not as it is."""
    import numpy as np

    from vla_export.data.tokenizer import tokenizer_for
    from vla_export.models.loader import PolicyFromCheckpoint
    from vla_export.models.resolve import LoadOptions
    from vla_export.runtime.parts import torch_streaming_policy

    repo = tmp_path / "repo"
    r = cli("triton", tiny_ckpt, "-o", repo, "--max-robots", "2", "--set", "head_tanh=false", "--set", "window=2")
    assert r.exit_code == 0, r
    frames = np.random.default_rng(5).integers(0, 256, (5, 40, 56, 3), dtype=np.uint8)
    got = _served_actions(repo, frames, sequence_id=3)

    def actions(options):
        loaded = PolicyFromCheckpoint(tiny_ckpt, options=options)()
        with torch_streaming_policy(loaded, tokenizer=tokenizer_for(loaded.config), text_len=32) as policy:
            policy.reset("go to the cup")
            return np.stack([policy.step(f) for f in frames])

    want = actions(LoadOptions(sets=(("head_tanh", False), ("window", 2))))
    np.testing.assert_allclose(np.stack(got), want, atol=1e-4, rtol=0)
    assert np.abs(np.stack(got) - actions(LoadOptions())).max() > 1e-3  # the options change the served actions
