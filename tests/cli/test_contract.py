"""The CLI contract a CI pipeline relies on: the exit-code table, usage errors, whole lines, ``--json -``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vla_export import __version__
from vla_export.errors import ExitCode


def _run(*args: str, entry: str = "vla_export.cli.main", timeout: int = 120) -> subprocess.CompletedProcess:
    # A subprocess with pipes: standard output is not a terminal, as in a CI log.
    return subprocess.run([sys.executable, "-m", entry, *args], capture_output=True, text=True, timeout=timeout)


def test_exit_code_table_is_fixed():
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 4, 130, 143]
    assert ExitCode.CHECK_FAILED == 1 and ExitCode.BAD_INPUT == 2 and ExitCode.ENVIRONMENT == 3


@pytest.mark.parametrize("args, problem", [
    (("onnx",), "Missing argument"),
    (("--seed", "abc"), "No such option: --seed"),
    (("onnx", "x.pt", "--bogus"), "No such option: --bogus"),
    (("init", "--preset", "tiny", "--seed", "abc"), "Invalid value for '--seed'"),
    ((), "Usage: vla-export"),
])
def test_usage_errors_exit_2_with_usage_line(args, problem):
    r = _run(*args)
    assert r.returncode == ExitCode.BAD_INPUT, r.stderr
    assert "Usage: vla-export" in r.stderr + r.stdout
    assert problem in r.stderr + r.stdout
    assert "unexpected" not in r.stderr and "Traceback" not in r.stderr


def test_vla_bench_usage_error_exits_2():
    r = _run("--bogus", entry="vla_export.cli.bench")
    assert r.returncode == ExitCode.BAD_INPUT and "No such option: --bogus" in r.stderr


@pytest.mark.parametrize("entry, prog", [("vla_export.cli.main", "vla-export"), ("vla_export.cli.bench", "vla-bench")])
def test_version(entry, prog):
    r = _run("--version", entry=entry)
    assert r.returncode == 0 and r.stdout.strip() == f"{prog} {__version__}"


def test_user_error_is_one_line_exit_2(tmp_path):
    r = _run("inspect", str(tmp_path / "missing.pt"))
    assert r.returncode == ExitCode.BAD_INPUT
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "missing.pt" in lines[0]


def test_debug_shows_traceback(tmp_path):
    r = _run("inspect", str(tmp_path / "missing.pt"), "--debug")
    assert r.returncode == ExitCode.BAD_INPUT and "Traceback" in r.stderr  # --debug never changes the exit code


def test_help_is_not_cut_in_a_log():
    r = _run("onnx", "-h")
    assert r.returncode == 0
    assert "…" not in r.stdout and "..." not in r.stdout
    assert "default engines/CHECKPOINT.onnx" in r.stdout.replace("\n", " ")


def test_inspect_json_to_stdout_and_untruncated_table(tiny_ckpt):
    r = _run("inspect", str(tiny_ckpt), "--json", "-")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)  # standard output holds only the JSON
    assert report["schema"] == "vla-export/inspect/1"
    assert "parameters by component" in r.stderr  # the table went to standard error
    assert "…" not in r.stderr


def test_parity_table_is_not_cut_in_a_log(tiny_ckpt, tiny_onnx, tmp_path):
    r = _run("parity", str(tiny_ckpt), str(tiny_onnx), "--samples", "2", "--json", str(tmp_path / "p.json"))
    assert r.returncode == 0, r.stderr
    assert "…" not in r.stdout and "result" in r.stdout and "parity: pass" in r.stdout
    assert json.loads((tmp_path / "p.json").read_text())["schema"] == "vla-export/parity/1"


def _junit(path):
    import xml.etree.ElementTree as ET

    suite = ET.parse(path).getroot().find("testsuite")
    return suite, {c.get("name"): c for c in suite.findall("testcase")}


def test_parity_junit_fails_on_a_perturbed_graph(cli, tiny_ckpt, tiny_onnx, tmp_path):
    import onnx
    from onnx import numpy_helper

    ok = tmp_path / "ok.xml"
    r = cli("parity", tiny_ckpt, tiny_onnx, "--samples", "3", "--junit", ok)
    assert r.exit_code == 0, r
    suite, cases = _junit(ok)
    assert suite.get("failures") == "0" and "actions" in cases and cases["actions"].find("failure") is None

    model = onnx.load(str(tiny_onnx))
    init = next(i for i in model.graph.initializer if i.name.endswith("action.4.bias"))
    w = numpy_helper.to_array(init).copy()
    w.flat[0] += 0.05
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    bad = tmp_path / "perturbed.onnx"
    onnx.save(model, str(bad))
    xml = tmp_path / "bad.xml"
    r = cli("parity", tiny_ckpt, bad, "--samples", "3", "--junit", xml)
    assert r.exit_code == ExitCode.CHECK_FAILED, r
    suite, cases = _junit(xml)
    failure = cases["actions"].find("failure")
    assert suite.get("failures") == "1" and failure is not None and "max abs" in failure.get("message")


def test_replay_junit_has_a_case_per_step(cli, tiny_ckpt, tiny_split, tmp_path):
    from vla_export.data.episodes import write_synthetic_episodes

    ep = write_synthetic_episodes(tmp_path / "eps", count=1, frames=3, frame_hw=(90, 160), seed=0)[0]
    xml = tmp_path / "replay.xml"
    r = cli("replay", tiny_ckpt, tiny_split.manifest_path, ep, "--junit", xml)
    assert r.exit_code == 0, r
    suite, cases = _junit(xml)
    assert len(cases) == 3 and suite.get("failures") == "0"


def test_bench_junit_flags_a_result_below_the_floor(tmp_path):
    from vla_export.cli.junit import bench_cases

    row = {"label": "fake", "valid": False, "outputs_finite": True, "modes": {"compute": {"latency": {"p50_ms": 0.36}}}}
    good = dict(row, label="real", valid=True)
    cases = {c.name: c for c in bench_cases({"results": [row, good]})}
    assert not cases["fake"].passed and "physical floor" in cases["fake"].message and cases["real"].passed


def test_failed_command_still_writes_its_json(cli, tmp_path):
    out = tmp_path / "report.json"
    r = cli("onnx", tmp_path / "missing.pt", "--json", out)
    assert r.exit_code == ExitCode.BAD_INPUT, r
    report = json.loads(out.read_text())
    assert report["schema"] == "vla-export/failure/1" and report["passed"] is False
    assert report["exit_code"] == 2 and "missing.pt" in report["error"] and report["command"] == "onnx"


def test_vla_export_bench_is_vla_bench(cli):
    r = cli("bench", "-h")
    assert r.exit_code == 0 and "--warmup" in r.stdout and "--junit" in r.stdout


def test_vla_bench_json_to_stdout_is_one_document(tiny_ckpt):
    r = _run(str(tiny_ckpt), "-b", "torch", "--mode", "compute", "--warmup", "1", "--iters", "3", "--json", "-",
             entry="vla_export.cli.bench")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)  # one complete JSON document, not one per row
    assert report["schema"] == "vla-export/bench/1" and report["complete"] is True and len(report["results"]) == 1
