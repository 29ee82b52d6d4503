"""perf_analyzer's input data for the served policy model (issue 23 item 4): written by `vla-export triton
--perf-data`, checked against the model config (a broken file is refused), and run by the real perf_analyzer
in sequence mode against a real tritonserver on loopback when the binary is here (`make perf-analyzer`).

The live run proves the data and the flags: the model answers a step without a START, or a START without
its instruction, with an error that the model counts (vla_export_request_failure); the run must end with
requests served and none failed.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import assert_one_error
from vla_export.errors import ArtifactError

pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed (make install)")
from vla_export.serve.perf_data import check_perf_data, perf_analyzer_command, perf_analyzer_data  # noqa: E402
from vla_export.serve.repository import TritonOptions, policy_config, validate_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def perf_analyzer_binary() -> str | None:
    """``$VLA_EXPORT_PERF_ANALYZER``, the venv's (tools/get_perf_analyzer.sh), or one on PATH."""
    candidates = [os.environ.get("VLA_EXPORT_PERF_ANALYZER"), str(Path(sys.executable).parent.parent / "perf-analyzer" / "perf_analyzer"),
                  shutil.which("perf_analyzer")]
    return next((c for c in candidates if c and Path(c).is_file() and os.access(c, os.X_OK)), None)


def config():
    return validate_config(policy_config("tiny", action_dim=3, options=TritonOptions(), gpu=False), where="tiny/config.pbtxt")


def test_the_data_fits_the_model_config_and_a_broken_one_is_refused():
    data = perf_analyzer_data(sequences=2, steps=3, frame_hw=(48, 64), instruction="pick up the block")
    assert check_perf_data(data, config()) == {"sequences": 2, "steps": 6}
    step = data["data"][0][0]
    assert step["FRAME"]["shape"] == [48, 64, 3] and len(base64.b64decode(step["FRAME"]["b64"])) == 48 * 64 * 3
    assert base64.b64decode(step["INSTRUCTION"]["b64"]).decode() == "pick up the block"

    def broken(edit):
        bad = json.loads(json.dumps(data))
        edit(bad["data"])
        with pytest.raises(ArtifactError, match="does not fit model 'tiny'|non-empty list") as info:
            check_perf_data(bad, config())
        return str(info.value)

    assert "lacks required input(s) ['FRAME']" in broken(lambda d: d[0][1].pop("FRAME"))
    assert "shape [48, 64, 4]" in broken(lambda d: d[1][0]["FRAME"].update(shape=[48, 64, 4]))
    assert "holds 9215 bytes" in broken(lambda d: d[0][2]["FRAME"].update(
        b64=base64.b64encode(base64.b64decode(d[0][2]["FRAME"]["b64"])[:-1]).decode()))
    assert "RELEASE is the model's own input" in broken(lambda d: d[0][0].update(RELEASE={"b64": "AQ==", "shape": [1]}))
    assert "'PROMPT' is not an input" in broken(lambda d: d[0][0].update(PROMPT={"b64": "AQ==", "shape": [1]}))
    assert "non-empty list" in broken(lambda d: d.__setitem__(1, []))


def test_triton_writes_the_data_and_prints_the_command(cli, tiny_split, tmp_path):
    r = cli("triton", tiny_split.manifest_path, "-o", tmp_path / "repo", "--text-len", "16", "--perf-data", tmp_path / "perf.json",
            "--perf-frame", "48x64", "--perf-steps", "4", "--json", tmp_path / "triton.json")
    assert r.exit_code == 0, r
    assert "perf_analyzer -m tiny -i grpc" in r.stdout and "stand-in" in r.stdout
    data = json.loads((tmp_path / "perf.json").read_text())
    assert check_perf_data(data, config()) == {"sequences": 2, "steps": 8}
    assert json.loads((tmp_path / "triton.json").read_text())["perf_analyzer"]["frame_hw"] == [48, 64]
    assert_one_error(cli("triton", tiny_split.manifest_path, "-o", tmp_path / "r2", "--perf-frame", "48x64"), 2, "go with --perf-data")
    assert_one_error(cli("triton", tiny_split.manifest_path, "-o", tmp_path / "r3", "--text-len", "8", "--perf-data", tmp_path / "p3.json"),
                     2, "does not fit the served text length", "perf_analyzer data was not")
    assert not (tmp_path / "p3.json").exists()
    assert_one_error(cli("triton", tiny_split.manifest_path, "-o", tmp_path / "r2", "--perf-data", tmp_path / "p.json",
                         "--perf-frame", "48"), 2, "--perf-frame takes HEIGHTxWIDTH")


@pytest.mark.serve
def test_perf_analyzer_runs_sequences_against_the_real_server(tiny_split, tmp_path, request):
    from vla_export.serve.fleet_bench import scrape
    from vla_export.serve.perf_data import write_perf_data
    from vla_export.serve.repository import write_repository
    from vla_export.serve.server import TritonServer, free_port

    binary = perf_analyzer_binary()
    if binary is None:
        pytest.skip("no perf_analyzer here (`make perf-analyzer` fetches it from the tritonclient 2.51.0 wheel)")
    request.getfixturevalue("triton_here")  # after the perf_analyzer check, so its skip reason comes first
    repo = write_repository(tiny_split.manifest_path, tmp_path / "repo", TritonOptions(max_robots=4, max_batch=4, text_len=16, idle_seconds=60))
    data = write_perf_data(tmp_path / "perf.json", perf_analyzer_data(sequences=2, steps=4, frame_hw=(48, 64)))
    with TritonServer(repo.path, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), ready_timeout=90) as srv:
        before = scrape(srv.metrics_url, "tiny")
        # bounded: short windows, a loose stability bound (2 shared cores), a hard timeout
        cmd = perf_analyzer_command("tiny", data, url=srv.grpc_url, concurrency=(1, 2), measurement_ms=1500, stability=300, binary=binary)
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
        after = scrape(srv.metrics_url, "tiny")
        # the same run without the instruction: every START is refused by the model, and counted
        broken = json.loads(Path(data).read_text())
        for stream in broken["data"]:
            for step in stream:
                step.pop("INSTRUCTION")
        write_perf_data(tmp_path / "broken.json", broken)
        cmd = perf_analyzer_command("tiny", tmp_path / "broken.json", url=srv.grpc_url, concurrency=(1, 1), measurement_ms=1000,
                                    stability=300, binary=binary)
        bad = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
        last = scrape(srv.metrics_url, "tiny")
    assert bad.returncode != 0 or last["vla_export_request_failure"] > after["vla_export_request_failure"], bad.stdout[-2000:]
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "Sequence count" in out.stdout and "Concurrency: 2, throughput" in out.stdout
    served = after["nv_inference_request_success"] - before["nv_inference_request_success"]
    failed = after["vla_export_request_failure"] - before["vla_export_request_failure"]
    assert served > 0 and failed == 0, (served, failed)
