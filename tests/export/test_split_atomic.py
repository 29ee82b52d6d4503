"""The split export is published as a unit: an interruption or failure between the parts leaves
either nothing or the earlier export, whole; never a finished-looking head without its backbone."""

import shutil

import pytest

from vla_export.errors import ArtifactError
from vla_export.export import split
from vla_export.artifacts.manifest import read_split


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _interrupt_at_backbone(monkeypatch, exc):
    """Let the head (exported first) finish, then fail when the backbone is staged."""
    real = split.stage_module

    def stage(module, example, tmp, **kw):
        if ".backbone." in tmp.name:
            raise exc
        return real(module, example, tmp, **kw)

    monkeypatch.setattr(split, "stage_module", stage)


@pytest.fixture(scope="module")
def loaded(tiny_ckpt):
    from vla_export.models.loader import PolicyFromCheckpoint

    return PolicyFromCheckpoint(tiny_ckpt)()


def test_interrupt_between_parts_leaves_nothing(tmp_path, loaded, monkeypatch):
    _interrupt_at_backbone(monkeypatch, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        split.export_split(loaded, tmp_path / "tiny")
    assert list(tmp_path.iterdir()) == []  # no head, no manifest, no staging folder


def test_failed_reexport_keeps_the_old_export_whole(tmp_path, loaded, tiny_split, monkeypatch):
    for f in tiny_split.manifest_path.parent.iterdir():
        shutil.copy(f, tmp_path / f.name)
    before = _snapshot(tmp_path)
    _interrupt_at_backbone(monkeypatch, ArtifactError("injected failure between the parts"))
    with pytest.raises(ArtifactError, match="injected"):
        split.export_split(loaded, tmp_path / "tiny")
    assert _snapshot(tmp_path) == before
    assert read_split(tmp_path / "tiny.split.json").to_dict()["window"] == tiny_split.to_dict()["stream_check"]["policy"]["window"]


def test_failure_while_publishing_leaves_no_record(tmp_path, loaded, tiny_split, monkeypatch):
    """Publishing removes the old record first: parts half moved in are never described by a record."""
    for f in tiny_split.manifest_path.parent.iterdir():
        shutil.copy(f, tmp_path / f.name)
    real = split.move_into_place

    def move(tmp, path, extras):
        if ".head." in path.name:  # the backbone has been moved in, the head not yet
            raise KeyboardInterrupt()
        real(tmp, path, extras)

    monkeypatch.setattr(split, "move_into_place", move)
    with pytest.raises(KeyboardInterrupt):
        split.export_split(loaded, tmp_path / "tiny")
    assert not (tmp_path / "tiny.split.json").exists()
    with pytest.raises(ArtifactError, match="split export not found"):
        read_split(tmp_path / "tiny")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the staging folder is gone


def test_split_record_describes_what_was_published(tmp_path, loaded):
    result = split.export_split(loaded, tmp_path / "tiny")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["tiny.backbone.onnx", "tiny.backbone.onnx.json", "tiny.head.onnx", "tiny.head.onnx.json", "tiny.split.json"]
    record = read_split(result.manifest_path)
    assert {p.name for p in record.parts.values()} == {"tiny.backbone.onnx", "tiny.head.onnx"}
    assert ".partial" not in (tmp_path / "tiny.split.json").read_text()
