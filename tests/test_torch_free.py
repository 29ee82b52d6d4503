"""What runs on the robot runs without torch (issue 12): each command in a fresh interpreter with torch unimportable.

On a Jetson `make jetson` installs no torch; these tests prove the engine path does not need it: the CLI
imports, `vla-export trt` (printing and building through trtexec), `vla-bench -b onnxrt` and `-b trt`,
:class:`vla_export.runtime.Policy` on engine parts, and parity and replay against saved references.
TensorRT itself is a stand-in (tests/fake_tensorrt.py: engines that run their ONNX with ONNX Runtime).
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from tests.torchfree import cli_without_torch, run_without_torch

ROOT = Path(__file__).resolve().parents[1]


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_cli_imports_and_prints_a_trtexec_line_without_torch(tiny_onnx, tmp_path):
    _ok(cli_without_torch("--help", cwd=ROOT))
    _ok(cli_without_torch("--help", app="bench", cwd=ROOT))
    out = _ok(cli_without_torch("trt", tiny_onnx, "-o", tmp_path / "t.engine", "--fp16", "--print-trtexec", cwd=ROOT))
    assert "trtexec" in out.stdout and "--fp16" in out.stdout


def test_trt_build_through_trtexec_without_torch(tiny_onnx, tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "trtexec"
    script.write_text(
        "#!/bin/sh\necho '&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec'\n"
        "for a in \"$@\"; do case $a in --saveEngine=*) printf 'ENGINE' > \"${a#--saveEngine=}\";; esac; done\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    code = f"""
    import os
    sys.modules['tensorrt'] = sys.modules['tensorrt_rtx'] = None  # no bindings (neither flavour): the trtexec path
    os.environ['PATH'] = {str(bindir)!r} + os.pathsep + os.environ['PATH']
    from vla_export.cli.common import run_app
    from vla_export.cli.main import app
    assert run_app(app, ['trt', {str(tiny_onnx)!r}, '-o', {str(tmp_path / 'tiny.engine')!r}, '--fp16']) == 0
    """
    _ok(run_without_torch(code, cwd=ROOT))
    assert (tmp_path / "tiny.engine").read_bytes() == b"ENGINE" and (tmp_path / "tiny.engine.json").exists()


def test_bench_onnxrt_without_torch(tiny_onnx, tmp_path):
    import json

    out = cli_without_torch(tiny_onnx, "-b", "onnxrt:cpu", "--warmup", "1", "--iters", "3", "--window", "4",
                            "--json", tmp_path / "b.json", app="bench", cwd=ROOT)
    # 1 = a row under this shared CPU's physical floor (load-dependent); what matters here is that it ran without torch
    assert out.returncode in (0, 1), out.stderr[-3000:]
    rows = json.loads((tmp_path / "b.json").read_text())["results"]
    assert rows[0]["backend"].startswith("onnxrt") and rows[0]["outputs_finite"]


def test_bench_trt_without_torch(tiny_onnx, tmp_path):
    from tests.fake_tensorrt import write_fake_engine

    engine = write_fake_engine(tmp_path / "tiny.engine", tiny_onnx)
    code = f"""
    from tests import fake_tensorrt
    fake_tensorrt.install()
    from vla_export.cli.bench import app
    from vla_export.cli.common import run_app
    code = run_app(app, [{str(engine)!r}, '-b', 'trt', '--window', '4', '--warmup', '1', '--iters', '3', '--json', {str(tmp_path / 'b.json')!r}])
    assert code in (0, 1), code  # 1: under the floor of the GPU the fake claims to be
    """
    _ok(run_without_torch(code, cwd=ROOT))
    import json

    rows = json.loads((tmp_path / "b.json").read_text())["results"]
    assert rows[0]["backend"] == "trt" and rows[0]["outputs_finite"] and rows[0]["runner"]["name"].startswith("tensorrt:")


def _engine_parts(tiny_split, tmp_path):
    from tests.fake_tensorrt import write_fake_engine

    split = tiny_split.manifest_path
    folder = tmp_path / "split"
    shutil.copytree(split.parent, folder)
    parts = {}
    for part in ("backbone", "head"):
        onnx = next(folder.glob(f"*.{part}.onnx"))
        parts[part] = write_fake_engine(folder / f"tiny.{part}.engine", onnx)
    return folder / split.name, parts


def test_runtime_policy_on_engine_parts_without_torch(tiny_split, tmp_path):
    split, parts = _engine_parts(tiny_split, tmp_path)
    code = f"""
    import numpy as np
    from tests import fake_tensorrt
    fake_tensorrt.install()
    from vla_export.backends.tensorrt import TrtRunner
    from vla_export.runtime import Policy
    policy = Policy.from_artifacts({str(split)!r}, backbone={str(parts['backbone'])!r}, head={str(parts['head'])!r})
    with policy:
        assert isinstance(policy.backbone, TrtRunner) and isinstance(policy.head, TrtRunner)
        policy.reset("go to the cup")
        actions = [policy.step(np.full((48, 64, 3), 40 * k, np.uint8)) for k in range(3)]
    assert all(a.shape == (policy.action_dim,) and np.isfinite(a).all() for a in actions)
    assert not np.array_equal(actions[0], actions[2])
    print("ok")
    """
    assert _ok(run_without_torch(code, cwd=ROOT)).stdout.strip().endswith("ok")
