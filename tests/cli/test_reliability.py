"""Issue 21, items 6-12: saved references, budgets and sensitivity, output options, --debug, inspect, ENOSPC.

Each case is run as a user runs it (the CLI, in-process) and must end in one clear line with the code of
the exit-code table; where an option could not act, it is refused, not dropped; where the arguments alone
show the problem, before the heavy work (a monkeypatched step that fails the test if reached).
"""

from __future__ import annotations

import errno
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from tests.conftest import assert_one_error
from vla_export.errors import ExitCode


@pytest.fixture(scope="module")
def art(tiny_ckpt, tiny_onnx, tmp_path_factory):
    """A saved reference of tiny_onnx, a calibration set, the W8A8, FP16 and weight-only models of tiny_onnx."""
    from vla_export.cli import common
    from vla_export.cli.main import app
    from vla_export.data.calibration import make_calibration_set
    from vla_export.data.episodes import write_synthetic_episodes
    from vla_export.export.quantize import convert_fp16, quantize_int8
    from vla_export.export.weight_only import quantize_int8_weights
    from vla_export.models.config import get_preset

    root = tmp_path_factory.mktemp("rel")
    assert common.run_app(app, ["parity", str(tiny_ckpt), str(tiny_onnx), "--samples", "3", "--save-reference", str(root / "ref.npz")]) == 0
    eps = write_synthetic_episodes(root / "eps", 2, seed=0, frames=14, frame_hw=(48, 64))
    calib = make_calibration_set(eps, get_preset("tiny"), root / "calib.npz", count=2)
    return {
        "root": root, "ref": root / "ref.npz", "calib": root / "calib.npz", "eps": root / "eps",
        "int8": quantize_int8(tiny_onnx, calib, root / "tiny.int8.onnx").output,
        "fp16": convert_fp16(tiny_onnx, root / "tiny.fp16.onnx").output,
        "int8w": quantize_int8_weights(tiny_onnx, root / "tiny.int8w.onnx").output,
    }


def _npz_with_meta(path, arrays, meta):
    np.savez(path, **arrays, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8) if isinstance(meta, dict) else meta)
    return path


# --- 6. every unreadable reference is one line, exit 2 -------------------------------------------------

def test_unreadable_references_are_one_line_exit_2(cli, art, tiny_onnx, tmp_path):
    data = dict(np.load(art["ref"]))
    meta = json.loads(data.pop("__meta__").tobytes())
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(art["ref"].read_bytes()[:3000])
    cases = {
        truncated: "truncated",
        _npz_with_meta(tmp_path / "badmeta.npz", data, np.frombuffer(b"{not json", np.uint8)): "not readable JSON",
        _npz_with_meta(tmp_path / "nosamples.npz", data, {k: v for k, v in meta.items() if k != "samples"}): "'samples'",
        _npz_with_meta(tmp_path / "noconfig.npz", data, {k: v for k, v in meta.items() if k != "config"}): "no policy 'config'",
        art["calib"]: "a calibration set, not a saved parity reference",
    }
    for path, needle in cases.items():
        assert_one_error(cli("parity", path, tiny_onnx), ExitCode.BAD_INPUT, str(path.name), needle)
    # and the other way round: a reference given as a calibration set
    assert_one_error(cli("quantize", tiny_onnx, "--int8", "--calib", art["ref"], "-o", tmp_path / "q.onnx"), ExitCode.BAD_INPUT,
                     "a saved parity reference, not a calibration set")


def test_inspect_of_a_reference_and_its_refusals(cli, art, tiny_ckpt, tiny_onnx, tmp_path, monkeypatch):
    r = cli("inspect", art["ref"], "--json", tmp_path / "i.json")
    assert r.exit_code == 0, r
    report = json.loads((tmp_path / "i.json").read_text())
    assert report["kind"] == "reference" and report["reference_kind"] == "parity" and report["samples"] == 3
    assert report["checkpoint"]["sha256"] and "saved parity reference" in r.stdout
    assert cli("inspect", art["calib"]).exit_code == 0  # the same suffix, still a calibration set
    assert_one_error(cli("parity", art["ref"], tiny_onnx, "--locate"), ExitCode.BAD_INPUT, "--locate", "needs the checkpoint")
    from vla_export.models import loader

    monkeypatch.setattr(loader.PolicyFromCheckpoint, "__call__", lambda self: pytest.fail("loaded before --save-reference was checked"))
    assert_one_error(cli("parity", tiny_ckpt, tiny_onnx, "--save-reference", tmp_path / "out" / "r.txt"), ExitCode.BAD_INPUT,
                     "r.txt", ".npz")
    assert not (tmp_path / "out").exists()


# --- 7. with a reference, --samples/--batch/--seed refused, --qdq both and --strict honoured ----------

def test_options_a_reference_cannot_honour_are_refused(cli, art, tiny_onnx):
    for option in (("--samples", "5"), ("--batch", "2"), ("--seed", "3")):
        assert_one_error(cli("parity", art["ref"], tiny_onnx, *option), ExitCode.BAD_INPUT, option[0], "saved ones")


def test_qdq_both_and_strict_are_honoured_with_a_reference(cli, art, tmp_path):
    r = cli("parity", art["ref"], art["int8"], "--qdq", "both", "--json", tmp_path / "p.json")
    assert r.exit_code == 0, r
    report = json.loads((tmp_path / "p.json").read_text())
    assert report["candidate"]["qdq_arithmetic"] == "exact"
    kernels = report["also_measured"]["qdq_kernels"]["outputs"]["actions"]
    exact = report["outputs"]["actions"]
    assert (kernels["mean_abs"], kernels["max_abs"]) != (exact["mean_abs"], exact["max_abs"])  # run again, with the fused kernels
    assert report["conclusive"] is False  # INT8 tolerance on 3 tiny samples: --strict must fail it
    assert cli("parity", art["ref"], art["int8"], "--strict").exit_code == ExitCode.CHECK_FAILED


# --- 8. budgets: refused where nothing can be measured or honoured -------------------------------------

def test_budget_options_are_checked_before_the_work(cli, art, tiny_onnx, tmp_path, monkeypatch):
    from vla_export.data import calibration

    monkeypatch.setattr(calibration, "load_calibration_set", lambda *a, **k: pytest.fail("loaded before the budget was checked"))
    out = tmp_path / "q.onnx"
    assert_one_error(cli("quantize", tiny_onnx, "--int8", "--calib", art["calib"], "-o", out, "--max-feature-rel-error", "0.1"),
                     ExitCode.BAD_INPUT, "--max-feature-rel-error", "features", "--debug-outputs")
    for flag in ("--fp16", "--int8-weights"):
        assert_one_error(cli("quantize", tiny_onnx, flag, "-o", out, "--max-action-error", "0.01"), ExitCode.BAD_INPUT,
                         "--max-action-error", "only with --int8")
    for value in ("nan", "inf", "-1"):
        assert_one_error(cli("quantize", tiny_onnx, "--int8", "--calib", art["calib"], "-o", out, "--max-action-error", value),
                         ExitCode.BAD_INPUT, "--max-action-error", "finite")
    assert_one_error(cli("quantize", tiny_onnx, "--int8", "--calib", art["calib"], "-o", out, "--eval-samples", "3"),
                     ExitCode.BAD_INPUT, "--eval-samples", "only with a budget")
    assert not out.exists()


# --- 9. sensitivity: what the files are, and its options, before the ranking -------------------------

def test_sensitivity_says_what_each_file_is(cli, art, tiny_onnx, tmp_path, monkeypatch):
    from vla_export.export import sensitivity as S

    monkeypatch.setattr(S, "layer_sensitivity", lambda *a, **k: pytest.fail("ranked before the arguments were checked"))
    cases = [
        ((tiny_onnx, tiny_onnx), "a float ONNX; the second argument is a W8A8"),
        ((art["int8"], tiny_onnx), "the arguments are swapped"),
        ((tiny_onnx, art["fp16"]), "an FP16 model"),
        ((tiny_onnx, art["int8w"]), "a weight-only INT8 model"),
        ((tiny_onnx, art["int8"], "--refine", "-1"), "--refine must be at least 0"),
        ((tiny_onnx, art["int8"], "--samples", "1000"), "distinct windows"),
    ]
    for args, needle in cases:
        assert_one_error(cli("sensitivity", *args), ExitCode.BAD_INPUT, needle)
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert_one_error(cli("sensitivity", tiny_onnx, art["int8"], "--json", blocked / "s.json"), ExitCode.BAD_INPUT, "s.json")


def test_evaluation_windows_are_distinct(art, tiny_onnx):
    from vla_export.export.sensitivity import held_out_feeds
    from vla_export.models.config import get_preset

    feeds, record = held_out_feeds([art["eps"]], get_preset("tiny"), None, count=22, window=4)  # 2 episodes x 11 windows
    assert record["candidate_windows"] == 22 and len(feeds) == 22
    assert len({f["pixel_values"].tobytes() for f in feeds}) == 22  # each window once, not drawn with replacement


# --- 10. two outputs on one path, --junit - ---------------------------------------------------------------

def test_two_outputs_on_one_path_are_refused(cli, art, tiny_onnx, tmp_path):
    same = tmp_path / "same.out"
    assert_one_error(cli("parity", art["ref"], tiny_onnx, "--json", same, "--junit", same), ExitCode.BAD_INPUT, "same.out", "two outputs")
    assert not same.exists()
    assert_one_error(cli("parity", art["ref"], tiny_onnx, "--json", "-", "--junit", "-"), ExitCode.BAD_INPUT, "standard output")
    assert_one_error(cli("quantize", tiny_onnx, "--fp16", "-o", same, "--json", same), ExitCode.BAD_INPUT, "two outputs")


def test_junit_to_standard_output(cli, art, tiny_onnx, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = cli("parity", art["ref"], tiny_onnx, "--junit", "-")
    assert r.exit_code == 0, r
    suite = ET.fromstring(r.stdout).find("testsuite")  # standard output holds only the XML
    assert suite is not None and suite.get("failures") == "0" and int(suite.get("tests")) >= 1
    assert "parity: pass" in r.stderr and not (tmp_path / "-").exists()


# --- 11. --debug changes only what is printed ---------------------------------------------------------

def test_debug_keeps_every_exit_code(cli, art, tiny_onnx, tmp_path, monkeypatch):
    r = cli("parity", art["ref"], tiny_onnx, "--samples", "5", "--debug")
    assert r.exit_code == ExitCode.BAD_INPUT and "Traceback" in r.stderr and r.stderr.strip().splitlines()[-1].startswith("error: ")
    r = cli("sensitivity", tiny_onnx, tiny_onnx, "--debug")
    assert r.exit_code == ExitCode.BAD_INPUT and "ConfigError" in r.stderr
    from vla_export.verify import reference

    monkeypatch.setattr(reference, "parity_against_reference", lambda *a, **k: 1 / 0)
    r = cli("parity", art["ref"], tiny_onnx, "--debug")
    assert r.exit_code == ExitCode.INTERNAL and "ZeroDivisionError" in r.stderr and "Traceback" in r.stderr


# --- 12. inspect of a folder and an engine; ENOSPC names the destination --------------------------------

def test_inspect_of_a_folder_and_of_an_engine(cli, art, tiny_onnx, tmp_path):
    from vla_export.fileio import sha256_file
    from vla_export.artifacts.manifest import build_manifest, write_manifest

    assert_one_error(cli("inspect", art["eps"]), ExitCode.BAD_INPUT, "is a folder")
    engine = tmp_path / "tiny.engine"
    engine.write_bytes(b"not really an engine")
    write_manifest(engine, build_manifest("engine", engine, [engine], tensorrt="10.3.0", precision="fp16",
                                          onnx={"path": str(tiny_onnx), "sha256": sha256_file(tiny_onnx)}, profiles={}))
    r = cli("inspect", engine)
    assert r.exit_code == 0, r
    assert "[yellow]" not in r.stdout + r.stderr and "[/]" not in r.stdout + r.stderr


def test_no_space_left_names_the_destination(cli, tiny_onnx, tiny_split, tmp_path, monkeypatch):
    import onnx
    import shutil

    from vla_export.serve import repository

    def full_disk(model, f, *a, **k):  # onnx writes with a plain file write: the OSError names no file
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx, "save_model", full_disk)
    out = tmp_path / "q" / "t.fp16.onnx"
    assert_one_error(cli("quantize", tiny_onnx, "--fp16", "-o", out), ExitCode.BAD_INPUT, f"{out}: cannot write (No space left on device)")
    assert list((tmp_path / "q").iterdir()) == []

    def copy_full(src, dst, *a, **k):  # shutil's copy names the source first, the destination second
        raise OSError(errno.ENOSPC, "No space left on device", str(src), None, str(dst))

    monkeypatch.setattr(repository.os, "link", lambda *a: (_ for _ in ()).throw(OSError(errno.EXDEV, "cross-device link")))
    monkeypatch.setattr(shutil, "copy2", copy_full)
    line = assert_one_error(cli("triton", tiny_split.manifest_path, "-o", tmp_path / "r" / "repo"), ExitCode.BAD_INPUT,
                            "repo: cannot write (No space left on device)")
    assert str(tiny_split.manifest_path.parent) not in line
    assert list((tmp_path / "r").iterdir()) == []


def test_an_os_error_naming_two_paths_names_the_destination(cli, tmp_path, monkeypatch):
    from vla_export.models import loader

    def boom(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", "/src/file", None, str(tmp_path / "dst"))

    monkeypatch.setattr(loader, "save_training_checkpoint", boom)
    line = assert_one_error(cli("init", "--preset", "tiny", "-o", tmp_path / "t.pt"), ExitCode.BAD_INPUT, "No space left")
    assert "/src/file" not in line and str(tmp_path / "dst") in line


def test_a_report_on_the_artifacts_manifest_path_is_refused(cli, tiny_onnx, tmp_path):
    """`-o X.onnx --json X.onnx.json`: the report would silently replace the manifest written beside the artifact."""
    out = tmp_path / "q.onnx"
    assert_one_error(cli("quantize", tiny_onnx, "--fp16", "-o", out, "--json", tmp_path / "q.onnx.json"), ExitCode.BAD_INPUT,
                     "q.onnx.json", "manifest")
    assert not out.exists()
