"""`vla-bench` end to end on the tiny preset: table, JSON, exit codes, one-line errors."""

from __future__ import annotations

import json

import pytest


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


def test_cli_parity_rows_and_the_gpu_preprocessing_mode(cli, tiny_onnx, tmp_path):
    """--parity reports each torch row against float32 (exact for fp32 with fused Q/K/V, not for int8);
    --mode e2e-gpu and --parity are refused, before anything runs, for rows that cannot do them."""
    out = tmp_path / "parity.json"
    r = cli("preset:tiny", "-b", "torch", "-b", "torch:fuseqkv:int8", "--parity", "2", "--warmup", "0", "--iters", "2",
            "--mode", "compute", "--json", out, app="bench")
    assert r.exit_code == 0, r
    rows = json.loads(out.read_text())["results"]
    exact, int8 = (row["parity"]["outputs"]["features"] for row in rows)
    assert exact["max_row_rel"] < 1e-6 and 1e-4 < int8["max_row_rel"] < 0.05 and int8["ref_std"] > 0
    assert rows[1]["runner"]["rewrites"] == {"fused_qkv": 5, "int8_linears": 27}
    assert "--parity 2" in json.loads(out.read_text())["command"] and "parity vs float32 over 2 inputs" in r.stdout
    r = cli("preset:tiny", "--mode", "e2e-gpu", app="bench")
    assert r.exit_code == 2 and "only torch CUDA backends" in r.stderr and "Traceback" not in r.stderr
    r = cli(tiny_onnx, "--parity", "2", "--window", "4", app="bench")
    assert r.exit_code == 2 and "--parity compares torch rows" in r.stderr


@pytest.mark.gpu
def test_cli_e2e_gpu_side_by_side_on_gpu(cli, tmp_path):
    """On a GPU: both preprocessing paths in one run, the GPU path's phases and its ratio to compute."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    out = tmp_path / "gpu.json"
    r = cli("preset:tiny", "-b", "torch:cuda:fp16:cudagraph", "--warmup", "2", "--iters", "5", "--mode", "compute", "--mode", "e2e",
            "--mode", "e2e-gpu", "--json", out, app="bench")
    assert r.exit_code == 0, r
    modes = json.loads(out.read_text())["results"][0]["modes"]
    assert set(modes) == {"compute", "e2e", "e2e-gpu"} and modes["e2e-gpu"]["phases_p50_ms"]["preprocess"] > 0
    assert "e2e-gpu phases" in r.stdout and "x compute" in r.stdout
