"""Bad input and file-system faults end in one `error:` line, exit 2 (ExitCode.BAD_INPUT), nothing half-written,
and, where the arguments alone show the problem, before any heavy work."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import textwrap

import pytest

from vla_export.errors import ExitCode


def one_error_line(r, *fragments, code=ExitCode.BAD_INPUT):
    assert r.exit_code == code, r
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error")]
    assert len(errors) == 1 and lines[-1] == errors[0] and errors[0].startswith("error: "), r
    assert "Traceback" not in r.stderr + r.stdout and "unexpected" not in r.stderr, r
    for f in fragments:
        assert f in errors[0], (f, errors[0])
    assert ".partial" not in errors[0], errors[0]
    return errors[0]


def usage_error(r, flag):
    return one_error_line(r, flag, "must be at least")


# --- 1. opsets the exporter cannot honour ---------------------------------------------------------------

def test_onnx_opset_5_is_refused_before_the_work(cli, tiny_ckpt, tmp_path):
    out = tmp_path / "t.onnx"
    one_error_line(cli("onnx", tiny_ckpt, "-o", out, "--opset", "5"), "--opset 5", "18 to 23")
    one_error_line(cli("onnx", tiny_ckpt, "-o", out, "--opset", "17"), "--opset 17", "--exporter torchscript")
    one_error_line(cli("onnx", tiny_ckpt, "-o", out, "--opset", "99", "--exporter", "torchscript"), "--opset 99", "7 to 20")
    one_error_line(cli("onnx", tiny_ckpt, "-o", out, "--split", "--opset", "5"), "--opset 5")
    assert list(tmp_path.iterdir()) == []


def test_written_opset_is_what_the_manifest_records(tiny_onnx):
    from vla_export.artifacts.manifest import read_manifest
    from vla_export.artifacts.onnxfile import written_opset

    assert read_manifest(tiny_onnx).to_dict()["opset"] == written_opset(tiny_onnx) == 18


def test_an_exporter_that_writes_another_opset_is_refused(tmp_path, monkeypatch):
    """Another torch could accept an opset and write a different one: the file is read back and compared."""
    import torch

    from vla_export.errors import ArtifactError
    from vla_export.export import onnx as E

    monkeypatch.setattr(E, "written_opset", lambda path: 16)
    with pytest.raises(ArtifactError, match="asked for opset 17, the torchscript exporter wrote opset 16"):
        E.export_module(torch.nn.Linear(3, 2).eval(), {"x": torch.zeros(2, 3)}, tmp_path / "m.onnx", output_names=["y"],
                        opset=17, exporter="torchscript")
    assert list(tmp_path.iterdir()) == []


# --- 4. 0 is not "default", negative windows are refused ------------------------------------------------

@pytest.mark.parametrize("args", [
    ("onnx", "{ckpt}", "--window", "0"),
    ("calib", "{data}", "--preset", "tiny", "--window", "0"),
    ("calib", "{data}", "--preset", "tiny", "--window", "-1"),
    ("parity", "{ckpt}", "{ckpt}", "--samples", "0"),
], ids=["onnx-window-0", "calib-window-0", "calib-window-neg", "parity-samples-0"])
def test_zero_and_negative_counts_are_usage_errors(cli, tiny_ckpt, tmp_path, args):
    argv = [a.format(ckpt=tiny_ckpt, data=tmp_path) for a in args]
    usage_error(cli(*argv, "-o" if args[0] != "parity" else "--json", tmp_path / "out.x"), args[-2])
    out = tmp_path / "out.x"
    if args[0] == "parity":  # a --json report is still written, and says the command failed
        assert json.loads(out.read_text())["schema"] == "vla-export/failure/1"
    else:  # no artifact, not even a partial one
        assert not out.exists()


def test_bench_iters_0_is_a_usage_error(cli, tiny_ckpt):
    usage_error(cli(tiny_ckpt, "--iters", "0", app="bench"), "--iters")
    usage_error(cli(tiny_ckpt, "--window", "0", app="bench"), "--window")


def test_library_window_0_is_not_the_default(tiny_policy):
    from vla_export.data.source import SyntheticSource

    assert SyntheticSource(tiny_policy.cfg, window=None).T == tiny_policy.cfg.window
    assert SyntheticSource(tiny_policy.cfg, window=2).T == 2
    assert SyntheticSource(tiny_policy.cfg, window=0).T == 0  # not silently the config's 4


# --- 9. arguments are checked before torch is imported or a checkpoint loaded ---------------------------

CHECK_BEFORE_IMPORTS = textwrap.dedent("""
    import sys
    from vla_export.cli.common import run_app
    from vla_export.cli.main import app as main_app
    from vla_export.cli.bench import app as bench_app
    app = bench_app if sys.argv[1] == "bench" else main_app
    code = run_app(app, sys.argv[2:])
    print("torch imported" if "torch" in sys.modules else "torch not imported", code)
""")


@pytest.mark.parametrize("args, fragment", [
    (["main", "parity", "{ckpt}", "{tmp}/missing.onnx"], "missing.onnx: artifact not found"),
    (["main", "parity", "{tmp}/missing.pt", "{tmp}/missing.onnx"], "missing.pt: checkpoint not found"),
    (["main", "parity", "{ckpt}", "{ckpt}", "--data", "{tmp}/no-episodes"], "no-episodes: data not found"),
    (["main", "onnx", "{ckpt}", "-o", "{tmp}"], "is a folder"),
    (["main", "onnx", "{tmp}/missing.pt", "-o", "{tmp}/x.onnx"], "checkpoint not found"),
    (["main", "inspect", "{tmp}/missing.pt"], "checkpoint not found"),
    (["main", "replay", "{ckpt}", "{tmp}/none.split.json", "{tmp}/ep.h5"], "split export not found"),
    (["main", "quantize", "{tmp}/m.onnx", "--fp16"], "m.onnx: ONNX not found"),
    (["main", "calib", "{tmp}/episodes", "--preset", "tiny"], "episodes: data not found"),
    (["main", "trt", "{tmp}/m.onnx", "-o", "{tmp}/m.engine"], "m.onnx: ONNX not found"),
    (["bench", "{tmp}/missing.onnx"], "missing.onnx: artifact not found"),
    (["bench", "{ckpt}", "--json", "{ckpt}/r.json"], "is a file, but"),
], ids=lambda v: v if isinstance(v, str) else "-".join(v[:2]))
def test_arguments_checked_before_heavy_imports(tiny_ckpt, tmp_path, args, fragment):
    argv = [a.format(ckpt=tiny_ckpt, tmp=tmp_path) for a in args]
    done = subprocess.run([sys.executable, "-c", CHECK_BEFORE_IMPORTS, *argv], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().endswith(f"torch not imported {int(ExitCode.BAD_INPUT)}"), done
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], done


# --- 10. file-system errors ----------------------------------------------------------------------------

def test_output_naming_a_folder_or_under_a_file(cli, tiny_ckpt, tmp_path):
    one_error_line(cli("onnx", tiny_ckpt, "-o", tmp_path), "is a folder")
    afile = tmp_path / "afile"
    afile.write_text("x")
    one_error_line(cli("onnx", tiny_ckpt, "-o", afile / "x.onnx"), "afile: is a file, but")
    one_error_line(cli("episodes", "-o", afile), "afile: is a file, but a folder is needed")
    one_error_line(cli("init", "-o", tmp_path), "is a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_read_only_output_refused_before_the_export(cli, tiny_ckpt, tmp_path, monkeypatch):
    """(Simulated: tests run as root, which writes through a chmod.) The export never starts."""
    import vla_export.fileio as F
    from vla_export.models import loader

    def read_only(*a, **kw):
        raise OSError(errno.EROFS, "Read-only file system", kw.get("dir"))

    monkeypatch.setattr(F.tempfile, "mkstemp", read_only)
    monkeypatch.setattr(loader.PolicyFromCheckpoint, "__call__", lambda self: pytest.fail("loaded before the output check"))
    one_error_line(cli("onnx", tiny_ckpt, "-o", tmp_path / "ro" / "t.onnx"), "Read-only file system", "write elsewhere")
    one_error_line(cli("init", "-o", tmp_path / "t.pt"), "Read-only file system")
    assert list(tmp_path.iterdir()) == []


def test_no_space_left_while_writing(cli, tmp_path, monkeypatch):
    """ENOSPC in the middle of writing a checkpoint and a JSON report: one line, nothing left behind."""
    import torch

    real_save = torch.save

    def full_disk(obj, f, *a, **kw):
        real_save(obj, f, *a, **kw)  # the partial file exists when the disk fills up
        raise OSError(errno.ENOSPC, "No space left on device", str(f))

    monkeypatch.setattr(torch, "save", full_disk)
    one_error_line(cli("init", "--preset", "tiny-kosmos", "-o", tmp_path / "t.pt"), "t.pt", "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_no_space_left_during_an_export(cli, tiny_ckpt, tmp_path, monkeypatch):
    """ENOSPC raised deep inside the export (writing the manifest): one line, exit 2, no .onnx, no staging folder."""
    from pathlib import Path

    real = Path.write_text

    def full_disk(self, *a, **kw):
        if self.name.startswith(".t.onnx.json"):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, *a, **kw)

    monkeypatch.setattr(Path, "write_text", full_disk)
    one_error_line(cli("onnx", tiny_ckpt, "-o", tmp_path / "t.onnx", "--no-ort-check"), "t.onnx: cannot write (No space left on device)")
    assert list(tmp_path.iterdir()) == []


def test_unnamed_fs_error_is_one_line_exit_2(cli, tmp_path, monkeypatch):
    """A file-system error no command anticipated still becomes one line and exit 2, not 'unexpected OSError'."""
    from vla_export.models import loader

    def boom(*a, **kw):
        raise OSError(errno.EDQUOT, "Disk quota exceeded", str(tmp_path / "q"))

    monkeypatch.setattr(loader, "save_training_checkpoint", boom)
    r = cli("init", "--preset", "tiny-kosmos", "-o", tmp_path / "t.pt")
    one_error_line(r, "Disk quota exceeded")
