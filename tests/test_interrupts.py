"""Issue 21, item 5: Ctrl-C and SIGTERM during a long step end with 130/143, nothing published, nothing left.

Real ``vla-export`` processes get real signals at several points: when a step line appears on standard
error, or when the staging folder of the output appears (the step is writing). One case starts with SIGINT
ignored, as a background job of a script starts (``kill -INT`` did nothing before). A library that
swallows the KeyboardInterrupt is simulated in-process: the publish step must still refuse.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vla_export.errors import ExitCode

TIMEOUT_S = 180


def run_and_signal(args, sig, *, trigger, folder: Path, ignore_sigint=False):
    """Run ``vla-export ARGS``; send ``sig`` once ``trigger(stderr_so_far)`` or a staging entry in ``folder``
    appears (trigger "staging"); return (exit code, stderr)."""
    env = os.environ | {"COLUMNS": "200"}
    preexec = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
    proc = subprocess.Popen([sys.executable, "-m", "vla_export.cli.main", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env, preexec_fn=preexec)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            staged = any(p.name.endswith(".partial") for p in folder.iterdir()) if folder.exists() else False
            if (trigger == "staging" and staged) or (callable(trigger) and trigger("".join(lines))):
                proc.send_signal(sig)
                break
            time.sleep(0.02)
        code = proc.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=5)
    return code, "".join(lines)


def assert_interrupted(code, err, sig, folder: Path, *names):
    assert code == 128 + sig, (code, err[-3000:])
    assert f"interrupted ({'SIGTERM' if sig == signal.SIGTERM else 'Ctrl-C'}): nothing was published" in err, err[-3000:]
    assert "Traceback" not in err and "terminate called" not in err, err[-3000:]
    left = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
    assert not any(n in left for n in names) and not any(n.endswith(".partial") for n in left), left


def test_sigint_during_the_export_even_when_started_ignored(tiny_ckpt, tmp_path):
    out = tmp_path / "out"
    code, err = run_and_signal(["onnx", tiny_ckpt, "-o", out / "t.onnx"], signal.SIGINT, trigger=lambda e: "loading the checkpoint:" in e,
                               folder=out, ignore_sigint=True)
    assert_interrupted(code, err, signal.SIGINT, out, "t.onnx", "t.onnx.json")


def test_sigterm_during_a_split_export(tiny_ckpt, tmp_path):
    out = tmp_path / "out"
    code, err = run_and_signal(["onnx", tiny_ckpt, "--split", "-o", out / "t.onnx"], signal.SIGTERM,
                               trigger=lambda e: "running the reference and the candidate" in e, folder=out)  # the head is done
    assert_interrupted(code, err, signal.SIGTERM, out, "t.split.json", "t.head.onnx", "t.backbone.onnx")


def test_sigint_and_sigterm_while_quantizing(tiny_onnx, tmp_path):
    from vla_export.data.calibration import make_calibration_set
    from vla_export.data.episodes import write_synthetic_episodes
    from vla_export.models.config import get_preset

    calib = make_calibration_set(write_synthetic_episodes(tmp_path / "eps", 1, frames=8, frame_hw=(48, 64)), get_preset("tiny"),
                                 tmp_path / "c.npz", count=2)
    for sig in (signal.SIGINT, signal.SIGTERM):
        out = tmp_path / f"q{sig}"
        out.mkdir()
        code, err = run_and_signal(["quantize", tiny_onnx, "--int8", "--calib", calib.path, "-o", out / "t.int8.onnx"], sig,
                                   trigger="staging", folder=out)
        assert_interrupted(code, err, sig, out, "t.int8.onnx", "t.int8.onnx.json")


def test_after_sigkill_the_next_run_removes_what_was_left(tiny_ckpt, tmp_path):
    """SIGKILL skips every clean-up: the staging folder stays (never the artifact), and the next run removes it."""
    out = tmp_path / "out"
    code, _ = run_and_signal(["onnx", tiny_ckpt, "-o", out / "t.onnx"], signal.SIGKILL, trigger="staging", folder=out)
    assert code == -signal.SIGKILL
    left = sorted(p.name for p in out.iterdir())
    assert "t.onnx" not in left and len(left) == 1 and left[0].startswith(".t.onnx.") and left[0].endswith(".partial")
    from vla_export.fileio import remove_stale_staging

    alive = out / f".t.onnx.{os.getpid()}.x.partial"  # a live process's staging is never touched
    alive.mkdir()
    assert remove_stale_staging(out / "t.onnx") == [out / left[0]]
    assert sorted(p.name for p in out.iterdir()) == [alive.name]


def test_an_interrupt_a_library_swallowed_still_publishes_nothing(cli, tiny_ckpt, tmp_path, monkeypatch):
    """The dynamo exporter once caught the KeyboardInterrupt and went on: the export was published, exit 0."""
    from vla_export.export import onnx as export_onnx

    real = export_onnx.stage_module

    def swallowing(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs here
        except BaseException:  # noqa: BLE001 - what a careless library does
            pass
        return real(*args, **kwargs)

    monkeypatch.setattr(export_onnx, "stage_module", swallowing)
    r = cli("onnx", tiny_ckpt, "-o", tmp_path / "t.onnx", "--no-ort-check")
    assert r.exit_code == ExitCode.INTERRUPTED and "nothing was published" in r.stderr, r
    assert list(tmp_path.iterdir()) == []
