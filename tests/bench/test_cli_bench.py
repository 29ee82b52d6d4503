"""`vla-bench` end to end on the tiny preset: table, JSON, exit codes, one-line errors."""

from __future__ import annotations

import json


def test_cli_torch_and_onnxrt_side_by_side(cli, tiny_ckpt, tiny_onnx, tmp_path):
    out = tmp_path / "results" / "tiny.json"
    r = cli(tiny_ckpt, tiny_onnx, "-b", "torch", "-b", "onnxrt:cpu", "--window", "4", "--warmup", "1", "--iters", "3",
            "--mode", "compute", "--device-peak", "agx-orin-64gb", "--json", out, app="bench")
    assert r.exit_code == 0, r
    assert "vs 1st" in r.stdout and "Jetson AGX Orin 64GB" in r.stdout
    assert "torch-cpu-fp32" in r.stdout and "onnxrt-cpu" in r.stdout
    d = json.loads(out.read_text())
    assert d["complete"] and [row["backend"] for row in d["results"]] == ["torch", "onnxrt:cpu"]
    assert d["command"].startswith("vla-bench ") and "--window 4" in d["command"] and "--iters 3" in d["command"]
    env = d["environment"]
    assert env["cpu"] and env["libraries"]["torch"] and env["libraries"]["onnxruntime"] and "torch_intra_op" in env["threads"]
    assert list(d["results"][0]["modes"]) == ["compute"]


def test_cli_preset_e2e_with_profile(cli, tmp_path):
    out = tmp_path / "p.json"
    r = cli("preset:tiny", "--warmup", "1", "--iters", "2", "--mode", "e2e", "--profile", "--json", out, app="bench")
    assert r.exit_code == 0, r
    row = json.loads(out.read_text())["results"][0]
    assert row["modes"]["e2e"]["latency"]["n"] == 2 and row["modes"]["e2e"]["phases_p50_ms"]["preprocess"] > 0
    assert "aten::" in row["profile"]["top_ops"]
    assert "e2e phases" in r.stdout


def test_cli_errors_are_one_line(cli, tiny_ckpt):
    r = cli(tiny_ckpt, "-b", "tensorflow", app="bench")
    assert r.exit_code == 2 and "unknown backend 'tensorflow'" in r.stderr and "Traceback" not in r.stderr
    r = cli(tiny_ckpt, "--iters", "3", "--duration", "1", app="bench")
    assert r.exit_code == 2 and "not both" in r.stderr
    r = cli(tiny_ckpt, "-b", "onnxrt", app="bench")
    assert r.exit_code == 2 and "fit none of the artifacts" in r.stderr
    r = cli(tiny_ckpt, "--device-peak", "tpu", app="bench")
    assert r.exit_code == 2 and "unknown device 'tpu'" in r.stderr


def test_help_works_without_optional_runtimes():
    import subprocess
    import sys

    code = "import sys; sys.modules['tensorrt'] = None; sys.modules['pycuda'] = None; sys.modules['onnxruntime'] = None\n" \
           "from vla_export.cli.bench import app, run_app; sys.exit(run_app(app, ['--help']))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--backend" in out.stdout
