"""Files other tools read (issue 23 items 1-2): Polygraphy's JSON inputs/outputs checked by the real
``polygraphy run``, trtexec's raw inputs, and ``parity A B`` of two artifacts.

A damaged outputs file makes Polygraphy fail; a damaged weight makes ``parity A B`` fail; a pair of
other configs, a Polygraphy file without vla-export's record and an inputs file changed since are
refused with one line (exit 2).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import assert_one_error
from tests.torchfree import cli_without_torch

pytest.importorskip("polygraphy", reason="polygraphy is not installed (make install: it is in the dev extra)")

ROOT = Path(__file__).resolve().parents[1]
POLYGRAPHY = Path(sys.executable).parent / "polygraphy"
TOL = ["--atol", "actions:0.0001", "--rtol", "actions:0.001"]


def polygraphy_run(model: Path, inputs: Path, outputs: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(POLYGRAPHY), "run", str(model), "--onnxrt", "--load-inputs", str(inputs), "--load-outputs",
                           str(outputs), *TOL], capture_output=True, text=True, timeout=300)


def rewrite_outputs(src: Path, dst: Path, scale: float) -> Path:
    """``src``'s outputs times ``scale``, through Polygraphy's own RunResults (vla-export's record kept)."""
    from polygraphy.comparator import RunResults
    from polygraphy.json import to_json

    raw = json.loads(src.read_text())
    results = RunResults.load(str(src))
    for _, iterations in results.items():
        for it in iterations:
            it["actions"] = np.asarray(it["actions"]) * scale
    data = json.loads(to_json(results)) | {"vla_export": raw["vla_export"]}
    dst.write_text(json.dumps(data))
    return dst


def copy_artifact(src: Path, folder: Path, name: str = "copy.onnx") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, folder / name)
    shutil.copy(f"{src}.json", folder / f"{name}.json")
    return folder / name


@pytest.fixture(scope="module")
def saved(tiny_ckpt, tiny_onnx, tmp_path_factory):
    """``parity CKPT ONNX --save-inputs --save-outputs --save-trtexec-inputs`` once, with its stdout."""
    folder = tmp_path_factory.mktemp("polygraphy")
    out = subprocess.run([str(Path(sys.executable).parent / "vla-export"), "parity", str(tiny_ckpt), str(tiny_onnx), "--samples", "3",
                          "--save-inputs", str(folder / "in.json"), "--save-outputs", str(folder / "out.json"),
                          "--save-trtexec-inputs", str(folder / "trtexec")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return folder, out.stdout


def test_polygraphy_run_passes_on_the_saved_files_and_fails_on_damaged_outputs(saved, tiny_onnx):
    folder, stdout = saved
    assert f"polygraphy run {tiny_onnx} --onnxrt --load-inputs" in stdout and "--atol actions:0.0001 --rtol actions:0.001" in stdout
    ok = polygraphy_run(tiny_onnx, folder / "in.json", folder / "out.json")
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-2000:]
    assert "Passed: 3/3 iterations" in ok.stdout + ok.stderr

    bad = rewrite_outputs(folder / "out.json", folder / "bad.json", -1.0)
    failed = polygraphy_run(tiny_onnx, folder / "in.json", bad)
    assert failed.returncode != 0 and "FAILED" in failed.stdout + failed.stderr


def test_the_saved_files_read_back_like_a_saved_reference_without_torch(saved, tiny_onnx):
    folder, _ = saved
    ok = cli_without_torch("parity", folder / "out.json", tiny_onnx, "--json", folder / "device.json", cwd=ROOT)
    assert ok.returncode == 0, ok.stderr[-3000:]
    report = json.loads((folder / "device.json").read_text())
    assert report["samples"] == 3 and report["reference"]["checkpoint_sha256"]
    bad = rewrite_outputs(folder / "out.json", folder / "bad2.json", 1.5)
    assert cli_without_torch("parity", bad, tiny_onnx, cwd=ROOT).returncode == 1  # fails the check


def test_saved_files_that_cannot_be_a_reference_are_refused(cli, saved, tiny_onnx, tmp_path):
    folder, _ = saved
    assert_one_error(cli("parity", folder / "in.json", tiny_onnx), 2, "Polygraphy input data", "pass the outputs file")

    from polygraphy.comparator import RunResults

    raw = json.loads((folder / "out.json").read_text())
    foreign = tmp_path / "foreign.json"  # as Polygraphy itself writes it: no record to check the artifact against
    RunResults.load(str(folder / "out.json")).save(str(foreign))
    assert_one_error(cli("parity", foreign, tiny_onnx), 2, "without vla-export's record")

    moved = tmp_path / "moved.json"  # its inputs file is not beside it
    moved.write_text(json.dumps(raw))
    assert_one_error(cli("parity", moved, tiny_onnx), 2, "inputs file", "missing")

    shutil.copy(folder / "in.json", tmp_path / "in.json")
    changed = json.loads((tmp_path / "in.json").read_text())
    changed[0], changed[1] = changed[1], changed[0]
    (tmp_path / "in.json").write_text(json.dumps(changed))
    assert_one_error(cli("parity", moved, tiny_onnx), 2, "sha256 differs")

    truncated = tmp_path / "truncated.json"
    truncated.write_text((folder / "out.json").read_text()[:500])
    assert_one_error(cli("parity", truncated, tiny_onnx), 2, "not readable JSON")

    assert_one_error(cli("parity", folder / "out.json", tiny_onnx, "--samples", "2"), 2, "drop --samples")
    assert_one_error(cli("parity", "x.pt", tiny_onnx, "--save-outputs", tmp_path / "o.json"), 2, "--save-outputs goes with --save-inputs")
    assert_one_error(cli("parity", "x.pt", tiny_onnx, "--save-inputs", tmp_path / "i.npz"), 2, "Polygraphy's JSON format")
    assert_one_error(cli("parity", "x.pt", tiny_onnx, "--save-trtexec-inputs", folder), 2, "not an empty folder")  # before any work


def test_trtexec_inputs_are_the_first_samples_raw_bytes(saved):
    from polygraphy.json import load_json

    folder, stdout = saved
    first = load_json(str(folder / "in.json"))[0]
    record = json.loads((folder / "trtexec" / "inputs.json").read_text())["inputs"]
    assert set(record) == set(first) == {"pixel_values", "input_ids", "attention_mask"}
    for name, array in first.items():
        raw = (folder / "trtexec" / record[name]["file"]).read_bytes()
        assert raw == np.ascontiguousarray(array).tobytes() and record[name]["shape"] == list(array.shape)
        back = np.frombuffer(raw, dtype=record[name]["dtype"]).reshape(record[name]["shape"])
        assert np.array_equal(back, array)
    assert f"--loadInputs='pixel_values':{folder / 'trtexec' / 'pixel_values.bin'}" in stdout
    assert "--shapes='pixel_values':1x4x3" in stdout


def damaged_weight(src: Path, dst_folder: Path) -> Path:
    """A copy of ``src`` with its largest float weight scaled by 1.5 (and the manifest beside it, sizes unchanged)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    floats = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    biggest = max(floats, key=lambda t: int(np.prod(t.dims)))
    biggest.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(biggest) * 1.5, biggest.name))
    dst = copy_artifact(src, dst_folder, "damaged.onnx")
    onnx.save(model, str(dst))
    return dst


def test_artifact_against_artifact(cli, tiny_onnx, tmp_path):
    same = copy_artifact(tiny_onnx, tmp_path / "same")
    r = cli("parity", tiny_onnx, same, "--samples", "4", "--json", tmp_path / "pair.json")
    assert r.exit_code == 0, r
    report = json.loads((tmp_path / "pair.json").read_text())
    assert report["outputs"]["actions"]["max_abs"] == 0.0 and report["reference"]["artifact"] == str(tiny_onnx)

    damaged = damaged_weight(tiny_onnx, tmp_path / "bad")
    r = cli("parity", tiny_onnx, damaged, "--samples", "4")
    assert r.exit_code == 1 and "FAIL" in r.stdout

    # per-output tolerances, as Polygraphy spells them: loose enough for actions, the verdict follows
    r = cli("parity", tiny_onnx, damaged, "--samples", "4", "--atol", "actions:100", "--min-cosine", "-1", "--min-sign-agreement", "0",
            "--json", tmp_path / "loose.json")
    assert r.exit_code == 0, r
    loose = json.loads((tmp_path / "loose.json").read_text())
    assert loose["output_tolerances"]["actions"]["atol"] == 100.0 and loose["tolerance"]["atol"] == 1e-4
    assert_one_error(cli("parity", tiny_onnx, same, "--atol", "feature:0.1"), 2, "per-output tolerance for 'feature'", "'actions'")
    assert_one_error(cli("parity", tiny_onnx, same, "--atol", "actions=0.1"), 2, "--atol 'actions=0.1'")
    assert_one_error(cli("parity", tiny_onnx, same, "--locate"), 2, "--locate", "needs the checkpoint")


def test_a_pair_of_other_configs_is_refused_before_running(cli, tiny_onnx, tmp_path):
    other = copy_artifact(tiny_onnx, tmp_path / "other")
    manifest = json.loads(Path(f"{other}.json").read_text())
    manifest["config"]["head_hidden"] = [7]
    Path(f"{other}.json").write_text(json.dumps(manifest))
    assert_one_error(cli("parity", tiny_onnx, other), 2, "different policy configs", "head_hidden")

    bare = tmp_path / "bare" / "bare.onnx"
    bare.parent.mkdir()
    shutil.copy(tiny_onnx, bare)
    assert_one_error(cli("parity", tiny_onnx, bare), 2, "no manifest with a policy config")


def test_onnx_against_an_engine_without_torch(tiny_onnx, tmp_path):
    """ONNX (reference) against an engine (tests/fake_tensorrt.py: TensorRT's binding logic, ONNX Runtime's arithmetic):
    the fp16 engine's tolerance is used, a damaged engine fails, and the pair's saved files read back."""
    from tests.fake_tensorrt import write_fake_engine
    from tests.torchfree import run_without_torch

    good = write_fake_engine(tmp_path / "tiny.engine", tiny_onnx, precision="fp16")
    bad = write_fake_engine(tmp_path / "bad.engine", damaged_weight(tiny_onnx, tmp_path / "d"), precision="fp16")
    saved = [str(tmp_path / "in.json"), str(tmp_path / "out.json")]
    code = f"""
    from tests import fake_tensorrt
    fake_tensorrt.install()
    from vla_export.cli.common import run_app
    from vla_export.cli.main import app
    assert run_app(app, ['parity', {str(tiny_onnx)!r}, {str(good)!r}, '--samples', '3', '--json', {str(tmp_path / 'e.json')!r},
                         '--save-inputs', {saved[0]!r}, '--save-outputs', {saved[1]!r}]) == 0
    assert run_app(app, ['parity', {str(tiny_onnx)!r}, {str(bad)!r}, '--samples', '3']) == 1
    assert run_app(app, ['parity', {saved[1]!r}, {str(bad)!r}]) == 1
    assert run_app(app, ['parity', {saved[1]!r}, {str(good)!r}]) == 0
    """
    out = run_without_torch(code, cwd=ROOT, timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["precision"] == "fp16" and report["tolerance"]["atol"] == 1e-2
    assert report["candidate"]["artifact"] == str(good) and report["reference"]["artifact"] == str(tiny_onnx)
    ok = polygraphy_run(tiny_onnx, tmp_path / "in.json", tmp_path / "out.json")  # the ONNX's own outputs, recorded
    assert ok.returncode == 0, ok.stdout[-2000:]
