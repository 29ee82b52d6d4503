"""Split export: two verified parts whose parameters add up to the policy's, and a record the runtime reads."""

from __future__ import annotations

import json
import shutil

import pytest

from vla_export.errors import ArtifactError
from vla_export.artifacts.manifest import read_manifest, validate_files
from vla_export.artifacts.manifest import read_split, split_paths


def test_parts_hold_the_whole_policy(tiny_split, tiny_policy):
    total = sum(p.numel() for p in tiny_policy.parameters())
    b, h = tiny_split.backbone, tiny_split.head
    assert b.parameters + h.parameters == total == tiny_split.policy_parameters
    assert b.completeness.passed and h.completeness.passed
    assert set(b.completeness.components) == {"kosmos_vision", "projection", "kosmos_text", "clip_vision"}
    assert set(h.completeness.components) == {"lstm", "action_head"}
    assert tiny_split.passed


def test_parts_have_the_streaming_signatures(tiny_split, tiny_policy):
    cfg = tiny_policy.cfg
    b = tiny_split.backbone.io
    assert [i["name"] for i in b["inputs"]] == ["pixel_values", "input_ids", "attention_mask"]
    assert b["inputs"][0]["shape"][1:] == [3, cfg.image_size, cfg.image_size]
    assert b["outputs"][0]["name"] == "feature" and b["outputs"][0]["shape"][-1] == cfg.frame_feature_dim
    h = tiny_split.head.io
    assert h["inputs"][0]["name"] == "features"
    assert isinstance(h["inputs"][0]["shape"][1], str)  # dynamic window: one head file for any T
    assert h["outputs"][0]["shape"][-1] == cfg.action_dim


def test_each_part_agrees_with_pytorch(tiny_split):
    for part in (tiny_split.backbone, tiny_split.head):
        assert part.parity.passed, part.parity.summary()
        out = next(iter(part.parity.outputs.values()))
        assert out.max_abs < 1e-4 and out.ref_std > 1e-3  # compared on inputs that vary


def test_composed_parts_match_the_full_policy_through_warm_up(tiny_split, tiny_policy):
    check = tiny_split.stream_check
    assert check.passed and len(check.steps) > tiny_policy.cfg.window
    assert check.steps[0].window == [0] * tiny_policy.cfg.window


def test_manifests(tiny_split):
    record = read_split(tiny_split.manifest_path)
    assert record.path == tiny_split.manifest_path
    assert record.extra["parameters"]["sum_of_parts"] == record.extra["parameters"]["policy"]
    assert record.window == 4 and record.config.name == "tiny"
    for part in ("backbone", "head"):
        path = record.parts[part]
        assert path == tiny_split.manifest_path.parent / f"tiny.{part}.onnx"
        manifest = read_manifest(path, kind="onnx")
        assert manifest.part == part and manifest.config.name == "tiny"
        assert manifest.extra["exporter"] == {"backbone": "dynamo", "head": "torchscript"}[part]
        validate_files(path, manifest)
    # the prefix and the folder find the same record
    prefix = tiny_split.manifest_path.with_name("tiny")
    assert read_split(prefix) == record == read_split(prefix.parent)


def test_split_paths():
    paths = split_paths("out/tiny.onnx")
    assert [p.name for p in paths.values()] == ["tiny.backbone.onnx", "tiny.head.onnx", "tiny.split.json"]


def test_missing_or_foreign_records_are_clear_errors(tmp_path, tiny_onnx):
    with pytest.raises(ArtifactError, match="split export not found"):
        read_split(tmp_path / "nothing")
    with pytest.raises(ArtifactError, match=r"expected one \*\.split\.json"):
        read_split(tmp_path)
    foreign = tmp_path / "x.split.json"
    shutil.copy(tiny_onnx.with_name(tiny_onnx.name + ".json"), foreign)
    with pytest.raises(ArtifactError, match="expected 'split'"):
        read_split(foreign)


def test_a_failed_export_leaves_no_record(tmp_path, tiny_ckpt, monkeypatch):
    """A part that disagrees with PyTorch aborts the export: no part file, no NAME.split.json."""
    from vla_export.export import split
    from vla_export.models.loader import PolicyFromCheckpoint
    from vla_export.compare.tolerance import Tolerance

    monkeypatch.setattr(split, "PARITY_CASES", ((1, 7, 1.0),))
    monkeypatch.setattr(
        "vla_export.compare.comparator.tolerance_for", lambda precision, **kw: Tolerance(atol=0.0, rtol=0.0, min_cosine=1.1, min_sign_agreement=1.0)
    )
    with pytest.raises(ArtifactError, match="disagrees with the PyTorch head"):
        split.export_split(PolicyFromCheckpoint(tiny_ckpt)(), tmp_path / "tiny")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_cli_split(cli, tiny_split, tiny_ckpt, tmp_path, monkeypatch):
    """--split routes to the split export and renders both parts; options it cannot honour are refused."""
    calls = []
    monkeypatch.setattr("vla_export.export.split.export_split", lambda loaded, out, options: calls.append((out, options)) or tiny_split)
    result = cli("onnx", tiny_ckpt, "--split", "-o", tmp_path / "x.onnx", "--window", "6", "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result
    assert calls[0][0] == tmp_path / "x.onnx" and calls[0][1].window == 6
    assert "backbone" in result.stdout and "head" in result.stdout and "= the policy's 324,979" in result.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] and set(report["parts"]) == {"backbone", "head"}
    refused = cli("onnx", tiny_ckpt, "--split", "--simplify", "-o", tmp_path / "y.onnx")
    assert refused.exit_code == 2 and "--split does not take --simplify" in refused.stderr


def test_each_part_gets_its_own_trt_precision(cli, tiny_split, tiny_policy, tmp_path):
    """Per-part TensorRT builds (backbone FP16, head FP32), checked as trtexec plans (no TensorRT needed)."""
    backbone = cli("trt", tiny_split.backbone.path, "-o", tmp_path / "b.engine", "--fp16", "--print-trtexec")
    assert backbone.exit_code == 0, backbone
    assert "--fp16" in backbone.stdout and "pixel_values:1x3x" in backbone.stdout
    t, f = tiny_policy.cfg.window, tiny_policy.cfg.frame_feature_dim
    head = cli("trt", tiny_split.head.path, "-o", tmp_path / "h.engine", "--shape", f"features=1x{t}x{f}", "--print-trtexec")
    assert head.exit_code == 0, head
    assert "--fp16" not in head.stdout and f"features:1x{t}x{f}" in head.stdout


def test_head_profile_defaults_to_windows_up_to_T(cli, tiny_split, tiny_policy, tmp_path):
    t, f = tiny_policy.cfg.window, tiny_policy.cfg.frame_feature_dim
    head = cli("trt", tiny_split.head.path, "-o", tmp_path / "h.engine", "--print-trtexec")
    assert head.exit_code == 0, head
    line = " ".join(head.stdout.split())
    assert f"--minShapes=features:1x1x{f}" in line and f"--optShapes=features:1x{t}x{f}" in line and f"--maxShapes=features:1x{t}x{f}" in line


def test_the_stream_check_is_not_labelled_as_an_episode_replay(tiny_split, tiny_ckpt):
    """The split export's check streams synthetic frames: its progress step says so (no episode is replayed)."""
    import contextlib

    from vla_export.export.split import stream_check
    from vla_export.models.loader import PolicyFromCheckpoint
    from vla_export.progress import listening

    labels: list[str] = []

    @contextlib.contextmanager
    def listener(label):
        labels.append(label)
        yield

    record = tiny_split.manifest_path
    parts = {p: record.with_name(record.name.replace(".split.json", f".{p}.onnx")) for p in ("backbone", "head")}
    loaded = PolicyFromCheckpoint(tiny_ckpt)()
    with listening(listener):
        result = stream_check(loaded, parts["backbone"], parts["head"], window=loaded.config.window)
    assert result.passed
    assert not any("episode" in label for label in labels), labels
    assert any(label.startswith("stream check: ") and "synthetic frames" in label for label in labels), labels
