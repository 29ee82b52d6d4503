"""Typed artifact records: a manifest or split record read and written again is the same file, and a
damaged one is refused with one line naming the file and the field (exit 2 through the CLI)."""

from __future__ import annotations

import json
import shutil

import pytest

from vla_export import schemas
from vla_export.artifacts.manifest import (
    Manifest,
    SplitRecord,
    build_manifest,
    manifest_path,
    read_manifest,
    read_split,
    write_manifest,
)
from vla_export.errors import ArtifactError
from vla_export.models.config import PolicyConfig


def _rewritten(record, artifact, original, tmp_path):
    """``record`` written again (by the writers' own function) beside a copy; the bytes of both files."""
    out = tmp_path / original.name
    write_manifest(artifact, record, path=out)
    return original.read_bytes(), out.read_bytes()


#: The keys `vla-export onnx` wrote, in order, before manifests were typed (commit dabc58d).
ONNX_KEYS = ["schema", "kind", "artifact", "files", "source", "config", "model", "window", "options", "opset", "exporter",
             "parameters", "io", "ops", "parity", "export_seconds", "versions"]
SPLIT_KEYS = ["schema", "kind", "parts", "parameters", "window", "warmup", "config", "model", "source", "stream_check", "versions"]


def test_a_hand_written_manifest_round_trips_byte_for_byte(tmp_path):
    """Independent of the writers: any order, unknown keys, nulls and a file's sha256 come back as they were."""
    art = tmp_path / "m.onnx"
    art.write_bytes(b"x")
    raw = {"schema": schemas.MANIFEST, "kind": "onnx", "zeta": [1, {"a": None}], "window": 3, "artifact": "m.onnx",
           "precision": None, "files": [{"name": "m.onnx", "bytes": 1, "sha256": "ab"}], "io": {"inputs": []}, "alpha": 1.5}
    text = json.dumps(raw, indent=2) + "\n"
    manifest_path(art).write_text(text)
    m = read_manifest(art)
    assert m.window == 3 and m.precision is None and m.files[0].sha256 == "ab" and m.extra == {"zeta": [1, {"a": None}], "alpha": 1.5}
    assert json.dumps(m.to_dict(), indent=2) + "\n" == text
    write_manifest(art, m)
    assert manifest_path(art).read_text() == text


def test_onnx_manifest_round_trips_byte_for_byte(tiny_onnx, tmp_path):
    m = read_manifest(tiny_onnx, kind="onnx")
    assert list(json.loads(manifest_path(tiny_onnx).read_text())) == ONNX_KEYS
    assert isinstance(m.config, PolicyConfig) and m.config.name == "tiny"
    assert m.path == tiny_onnx and m.kind == "onnx" and m.window == 4 and m.precision is None
    assert [f.name for f in m.files] == ["tiny.onnx"] and m.io["outputs"][0]["name"] == "actions"
    assert {"exporter", "opset", "parity", "versions"} <= set(m.extra)
    before, after = _rewritten(m, tiny_onnx, manifest_path(tiny_onnx), tmp_path)
    assert after == before
    assert m.to_dict() == json.loads(before)


def test_quantized_manifest_round_trips_byte_for_byte(fitted_tiny_int8, tmp_path):
    m = read_manifest(fitted_tiny_int8, kind="onnx")
    assert m.precision == "int8" and m.quantization["options"]["calibration"]["frames"]
    before, after = _rewritten(m, fitted_tiny_int8, manifest_path(fitted_tiny_int8), tmp_path)
    assert after == before


def test_split_record_round_trips_byte_for_byte(tiny_split, tmp_path):
    path = tiny_split.manifest_path
    record = read_split(path)
    assert list(json.loads(path.read_text())) == SPLIT_KEYS
    assert list(json.loads(path.read_text())["parts"]["head"]) == ["path", "parameters"]
    assert isinstance(record, SplitRecord) and record.path == path and record.stem == "tiny"
    assert record.parts == {part: path.parent / f"tiny.{part}.onnx" for part in ("backbone", "head")}
    assert all(p.is_file() for p in record.parts.values())
    assert record.config.name == "tiny" and record.window == 4
    assert "_path" not in record.to_dict()
    before, after = _rewritten(record, path, path, tmp_path)
    assert after == before
    # the parts stay relative to the record's folder, wherever it is read from
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copy(path, moved / path.name)
    assert read_split(moved).parts["head"] == moved / "tiny.head.onnx"


def test_null_and_absent_fields_stay_as_they_were(tmp_path):
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"plan")
    m = build_manifest("engine", engine, [engine], config=None, layers=None, precision="fp16", parity=None)
    write_manifest(engine, m)
    again = read_manifest(engine, kind="engine")
    assert again == m and again.config is None and again.window is None
    text = manifest_path(engine).read_text()
    assert '"config": null' in text and '"window"' not in text and '"layers": null' in text
    # a changed field keeps its place; a new key goes last
    changed = again.replace(precision="int8", parity={"passed": True}).to_dict()
    assert list(changed) == ["schema", "kind", "artifact", "files", "config", "layers", "precision", "parity"]
    assert changed["precision"] == "int8" and changed["parity"] == {"passed": True}


def _damage(src, dst, change):
    data = json.loads(src.read_text())
    change(data)
    dst.write_text(json.dumps(data))


@pytest.mark.parametrize("change, field", [
    (lambda d: d.update(config=[1, 2]), "'config'"),
    (lambda d: d["config"].update(window="four"), "'config'"),
    (lambda d: d.update(window="4"), "'window'"),
    (lambda d: d.update(precision=16), "'precision'"),
    (lambda d: d.update(files=[{"name": "tiny.onnx"}]), "'files'"),
    (lambda d: d.update(schema="vla-export/manifest/9"), "vla-export/manifest/9"),
])
def test_damaged_manifest_is_one_error_line_through_inspect(cli, tiny_onnx, tmp_path, change, field):
    onnx = tmp_path / "tiny.onnx"
    shutil.copy(tiny_onnx, onnx)
    _damage(manifest_path(tiny_onnx), manifest_path(onnx), change)
    with pytest.raises(ArtifactError, match=field):
        read_manifest(onnx)
    r = cli("inspect", onnx)
    assert r.exit_code == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(manifest_path(onnx)) in lines[0] and field in lines[0], r
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("change, field", [
    (lambda d: d.pop("config"), "'config'"),
    (lambda d: d.update(window=[4]), "'window'"),
    (lambda d: d["parts"].pop("head"), "head"),
    (lambda d: d["parts"]["backbone"].update(path=3), "backbone"),
    (lambda d: d.update(schema="vla-export/split/1"), "vla-export/split/1"),
])
def test_damaged_split_record_is_one_error_line_through_inspect(cli, tiny_split, tmp_path, change, field):
    record = tmp_path / "tiny.split.json"
    _damage(tiny_split.manifest_path, record, change)
    with pytest.raises(ArtifactError, match=field):
        read_split(record)
    r = cli("inspect", record)
    assert r.exit_code == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(record) in lines[0] and field in lines[0], r


def test_a_command_needing_the_config_says_the_manifest_has_none(cli, tiny_onnx, tmp_path):
    onnx = tmp_path / "tiny.onnx"
    shutil.copy(tiny_onnx, onnx)
    _damage(manifest_path(tiny_onnx), manifest_path(onnx), lambda d: d.pop("config"))
    assert read_manifest(onnx).config is None
    with pytest.raises(ArtifactError, match="records no policy 'config'"):
        read_manifest(onnx).require_config()
    r = cli("calib", tmp_path, "--onnx", onnx, "-o", tmp_path / "c.npz")
    assert r.exit_code == 2 and "its manifest records no policy config" in r.stderr, r


def test_every_schema_string_is_a_constant():
    """No ``vla-export/NAME/N`` literal outside schemas.py in the package (help texts may name them)."""
    import re
    from pathlib import Path

    import vla_export

    root = Path(vla_export.__file__).parent
    literal = re.compile(r"""["']vla-export/[a-z-]+/\d+["']""")
    found = []
    for path in root.rglob("*.py"):
        if path.name == "schemas.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if literal.search(line) and "help=" not in line:
                found.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    assert found == []
    assert schemas.MANIFEST == "vla-export/manifest/1" and Manifest and schemas.QUANTIZE == "vla-export/quantize/1"
