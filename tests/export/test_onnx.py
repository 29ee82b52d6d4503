"""ONNX export: the tiny policy end to end, the generic exporter, atomicity, external data, manifests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from vla_export.errors import ArtifactError, ConfigError


@pytest.fixture(scope="module")
def full_export(tmp_path_factory, tiny_ckpt):
    """`vla-export onnx` with --external-data --debug-outputs --simplify --dynamic-window, run once for this module."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("full") / "tiny.onnx"
    report = out.with_suffix(".report.json")
    # A fresh process: torch 2.13's exporter keeps the LSTM's window dynamic only in a process's first export.
    done = subprocess.run([sys.executable, "-m", "vla_export.cli.main", "onnx", str(tiny_ckpt), "-o", str(out), "--external-data",
                           "--debug-outputs", "--simplify", "--dynamic-window", "--samples", "1", "--json", str(report)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, json.loads(report.read_text())


def test_tiny_export_io_and_manifest(tiny_onnx, tiny_ckpt):
    from vla_export.artifacts.manifest import read_manifest, validate_files
    from vla_export.export.onnx import UNFRIENDLY_OPS
    from vla_export.artifacts.onnxfile import io_signature, op_counts
    from vla_export.fileio import sha256_file

    io = io_signature(tiny_onnx)
    shapes = {v["name"]: v["shape"] for v in io["inputs"] + io["outputs"]}
    assert shapes == {
        "pixel_values": ["batch", 4, 3, 224, 224],
        "input_ids": ["batch", "text_len"],
        "attention_mask": ["batch", "text_len"],
        "actions": ["batch", 3],
    }
    assert not set(UNFRIENDLY_OPS) & set(op_counts(tiny_onnx))
    m = read_manifest(tiny_onnx, kind="onnx")
    validate_files(tiny_onnx, m)
    m = m.to_dict()
    assert m["source"]["sha256"] == sha256_file(tiny_ckpt)
    assert m["parameters"]["passed"] and m["parameters"]["coverage"] >= 0.999
    assert m["parity"]["export"]["passed"]
    assert {"torch", "transformers", "onnx", "onnxruntime"} <= set(m["versions"])
    assert m["opset"] == 18 and m["exporter"] == "dynamo" and m["window"] == 4
    assert [f["name"] for f in m["files"]] == ["tiny.onnx"]  # small: no external data by default


def test_batch_1_and_3_and_other_text_lengths_run(tiny_onnx):
    from vla_export.backends.onnxrt import OnnxrtRunner
    from vla_export.data.source import SyntheticSource
    from vla_export.models.config import get_preset

    cfg = get_preset("tiny")
    with OnnxrtRunner(tiny_onnx) as runner:
        for batch, text_len in ((1, 5), (3, 20)):
            out = runner.infer(SyntheticSource(cfg, batch=batch, text_len=text_len).sample(0))
            assert out["actions"].shape == (batch, 3)


def test_full_export_one_data_file_features_and_simplify(full_export):
    out, report = full_export
    names = sorted(p.name for p in out.parent.iterdir())
    assert names == ["tiny.onnx", "tiny.onnx.data", "tiny.onnx.json", "tiny.report.json"]  # exactly one data file, no leftovers
    assert [p["label"] for p in report["parity"]] == ["export", "simplified"]
    assert all(p["passed"] and set(p["outputs"]) == {"actions", "features"} for p in report["parity"])
    assert report["completeness"]["passed"]
    assert [f["name"] for f in report["files"]] == ["tiny.onnx", "tiny.onnx.data"]
    assert report["io"]["inputs"][0]["shape"] == ["batch", "window", 3, 224, 224]


def test_dynamic_window_runs_other_windows(full_export, tiny_policy):
    from vla_export.backends.onnxrt import OnnxrtRunner
    from vla_export.backends.torch_runner import TorchRunner
    from vla_export.data.source import SyntheticSource

    out, _ = full_export
    with OnnxrtRunner(out) as runner, TorchRunner(tiny_policy, debug_outputs=True) as ref:
        for window in (1, 7):
            feed = SyntheticSource(tiny_policy.cfg, batch=2, window=window).sample(0)
            got, want = runner.infer(feed), ref.infer(feed)
            assert got["features"].shape == (2, window, tiny_policy.cfg.frame_feature_dim)
            np.testing.assert_allclose(got["actions"], want["actions"], atol=1e-4)


def test_a_dynamic_axis_fixed_by_the_exporter_is_an_error(tiny_onnx):
    from vla_export.export.onnx import _check_dynamic_axes

    _check_dynamic_axes(tiny_onnx, {"pixel_values": {0: "batch"}, "input_ids": {1: "text_len"}})
    with pytest.raises(ArtifactError, match="fixed the dynamic axis 'window' of 'pixel_values' at 4"):
        _check_dynamic_axes(tiny_onnx, {"pixel_values": {1: "window"}})


def test_simplify_without_onnxslim_names_the_extra(tiny_onnx, tmp_path, monkeypatch):
    from vla_export.errors import MissingDependencyError
    from vla_export.export.onnx import simplify

    copy = tmp_path / "copy.onnx"
    shutil.copy(tiny_onnx, copy)
    monkeypatch.setitem(__import__("sys").modules, "onnxslim", None)
    with pytest.raises(MissingDependencyError, match=r"pip install -e '[^']+\[simplify\]'"):
        simplify(copy)


def test_missing_external_data_is_an_error(full_export, tmp_path, cli, tiny_ckpt):
    from vla_export.backends.onnxrt import OnnxrtRunner
    from vla_export.artifacts.onnxfile import check_model

    out, _ = full_export
    lone = tmp_path / out.name
    shutil.copy(out, lone)
    with pytest.raises(ArtifactError, match="tiny.onnx.data is missing"):
        OnnxrtRunner(lone).activate()
    with pytest.raises(ArtifactError, match="tiny.onnx.data is missing"):
        check_model(lone)
    r = cli("parity", tiny_ckpt, lone)
    assert r.exit_code != 0 and "tiny.onnx.data is missing" in r.stderr


def _linear_export(path, width=4, **kw):
    import torch

    from vla_export.export.onnx import export_module

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(width, 3), torch.nn.Tanh()).eval()
    return export_module(module, {"x": torch.randn(2, width)}, path, output_names=["y"], dynamic_axes={"x": {0: "batch"}}, **kw)


def test_export_module_is_generic_and_dynamic(tmp_path):
    import onnxruntime as ort

    path = _linear_export(tmp_path / "lin.onnx")
    sess = ort.InferenceSession(str(path))
    for b in (1, 5):
        assert sess.run(None, {"x": np.ones((b, 4), np.float32)})[0].shape == (b, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lin.onnx"]


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    from vla_export.export import onnx as E

    def boom(tmp: Path, dynamic_axes):
        assert tmp.exists() and tmp.parent != tmp_path  # the export sits in a temporary directory
        raise ArtifactError("verification failed")

    monkeypatch.setattr(E, "_check_dynamic_axes", boom)  # the last check on the staged file
    with pytest.raises(ArtifactError, match="verification failed"):
        _linear_export(tmp_path / "lin.onnx", external_data=True)
    assert list(tmp_path.iterdir()) == []


def test_reexport_without_external_data_removes_stale_data(tmp_path):
    _linear_export(tmp_path / "lin.onnx", external_data=True)
    assert (tmp_path / "lin.onnx.data").exists()
    _linear_export(tmp_path / "lin.onnx", external_data=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lin.onnx"]


def test_torchscript_fallback(tmp_path):
    import onnxruntime as ort

    path = _linear_export(tmp_path / "ts.onnx", width=512, exporter="torchscript", external_data=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ts.onnx", "ts.onnx.data"]
    assert ort.InferenceSession(str(path)).run(None, {"x": np.ones((3, 512), np.float32)})[0].shape == (3, 3)


def test_bad_options(tmp_path):
    with pytest.raises(ConfigError, match="exporter"):
        _linear_export(tmp_path / "a.onnx", exporter="jit")
    with pytest.raises(ConfigError, match=".onnx"):
        _linear_export(tmp_path / "a.txt")


def test_manifest_checks(tmp_path):
    from vla_export.artifacts.manifest import build_manifest, read_manifest, validate_files, write_manifest

    art = tmp_path / "m.onnx"
    art.write_bytes(b"12345")
    with pytest.raises(ArtifactError, match="manifest not found"):
        read_manifest(art)
    assert read_manifest(art, required=False) is None
    write_manifest(art, build_manifest("onnx", art, [art], opset=18))
    assert read_manifest(art, kind="onnx").to_dict()["opset"] == 18
    with pytest.raises(ArtifactError, match="kind 'onnx'"):
        read_manifest(art, kind="engine")
    art.write_bytes(b"123")
    with pytest.raises(ArtifactError, match="3 bytes"):
        validate_files(art, read_manifest(art))
    (tmp_path / "m.onnx.json").write_text("{}")
    with pytest.raises(ArtifactError, match="not a vla-export manifest"):
        read_manifest(art)


def test_cli_onnx_bad_checkpoint(cli, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    r = cli("onnx", bad, "-o", tmp_path / "x.onnx")
    assert r.exit_code != 0 and "error:" in r.stderr
    assert not (tmp_path / "x.onnx").exists()
