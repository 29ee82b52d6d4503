"""Parity and replay refuse a config-mismatched pair before comparing numbers; parity says when it
cannot tell; manifests record how the config was obtained; every command takes the shared loading options."""

import json
import shutil

import pytest

from tests.foreign import FOREIGN_RENAMES, foreign_policy, save_foreign
from vla_export.errors import ArtifactError


def _copy_onnx(src, dst_dir, *, manifest=True):
    dst = dst_dir / src.name
    shutil.copy(src, dst)
    if manifest:
        shutil.copy(src.with_name(src.name + ".json"), dst.with_name(dst.name + ".json"))
    return dst


def _edit_manifest(path, **changes):
    m = path.with_name(path.name + ".json")
    data = json.loads(m.read_text())
    for dotted, value in changes.items():
        node = data["config"]
        *parents, last = dotted.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    m.write_text(json.dumps(data))


def test_manifest_records_the_resolved_model(tiny_onnx, tiny_split):
    m = json.loads(tiny_onnx.with_name(tiny_onnx.name + ".json").read_text())
    assert m["model"]["config_source"] == "recorded in the checkpoint by vla-export" and m["model"]["assumptions"] == []
    assert m["model"]["key_layout"]["layout"] == "vla-export"
    split = json.loads(tiny_split.manifest_path.read_text())
    assert split["model"]["config_source"] == m["model"]["config_source"]


def test_parity_refuses_a_config_mismatch_listing_fields(cli, tiny_ckpt, tiny_onnx, tmp_path):
    onnx = _copy_onnx(tiny_onnx, tmp_path)
    _edit_manifest(onnx, head_tanh=False, kosmos_text__num_heads=4)  # exported, say, with guessed heads and no Tanh
    r = cli("parity", tiny_ckpt, onnx, "--samples", "2")
    assert r.exit_code == 2, r
    err = " ".join(r.stderr.split())
    assert "2 different fields" in err and "head_tanh: artifact False, checkpoint True" in err
    assert "kosmos_text.num_heads: artifact 4, checkpoint 2" in err
    assert "parity: pass" not in r.stdout and "parity: FAIL" not in r.stdout  # refused, not compared


def test_foreign_export_with_guessed_heads_is_refused_against_the_right_config(tmp_path):
    """The issue's case: an ONNX exported with guessed heads passed fp16 parity against the right reference."""
    from vla_export.export.onnx import OnnxExportOptions, OnnxFromPolicy
    from vla_export.models.checkpoint import parse_renames
    from vla_export.models.loader import PolicyFromCheckpoint
    from vla_export.models.resolve import LoadOptions
    from vla_export.verify.parity import parity_check

    ckpt = save_foreign(foreign_policy(), tmp_path / "foreign.pt")
    renames = tuple(parse_renames(FOREIGN_RENAMES))
    onnx = tmp_path / "guessed.onnx"
    OnnxFromPolicy(PolicyFromCheckpoint(ckpt, options=LoadOptions(renames=renames)), onnx, OnnxExportOptions(parity_samples=1, ort_check=False))()
    right = LoadOptions(renames=renames, sets=(("kosmos_vision.num_heads", 4), ("kosmos_text.num_heads", 4), ("clip_vision.num_heads", 4)))
    with pytest.raises(ArtifactError, match=r"3 different fields.*clip_vision\.num_heads: artifact 1, checkpoint 4"):
        parity_check(PolicyFromCheckpoint(ckpt, options=right), onnx, samples=2, precision="fp16")
    # The manifest says the heads were guessed.
    m = json.loads(onnx.with_name("guessed.onnx.json").read_text())
    heads = next(a for a in m["model"]["assumptions"] if a["field"] == "kosmos_text.num_heads")
    assert heads["basis"] == "assumed" and heads["warn"]


def test_no_manifest_warns_that_the_check_was_not_possible(cli, tiny_ckpt, tiny_onnx, tmp_path):
    onnx = _copy_onnx(tiny_onnx, tmp_path, manifest=False)
    r = cli("parity", tiny_ckpt, onnx, "--samples", "2", "--json", tmp_path / "p.json")
    assert r.exit_code == 0, r
    assert "cannot be checked that it was exported with the reference's config" in " ".join(r.stderr.split())
    assert json.loads((tmp_path / "p.json").read_text())["candidate"]["config_check"].startswith("not possible")


def test_parity_says_when_it_cannot_tell(cli, tiny_ckpt, tiny_onnx, tmp_path):
    from vla_export.models.loader import PolicyFromCheckpoint
    from vla_export.verify.parity import parity_check

    one = parity_check(PolicyFromCheckpoint(tiny_ckpt), tiny_onnx, samples=1)
    assert one.passed and not one.conclusive and "actions" in one.undiscriminating  # spread 0 over one sample
    many = parity_check(PolicyFromCheckpoint(tiny_ckpt), tiny_onnx, samples=4)
    assert many.conclusive and many.passed
    # A loose tolerance against a small spread: the reference varies by far less than 10x atol.
    loose = parity_check(PolicyFromCheckpoint(tiny_ckpt), tiny_onnx, samples=4, precision="int8", strict=True,
                         tolerance=many.tolerance.__class__(atol=5.0, rtol=0.0, min_cosine=0.0, min_sign_agreement=0.0))
    assert not loose.conclusive and not loose.passed and loose.to_dict()["strict"]
    r = cli("parity", tiny_ckpt, tiny_onnx, "--samples", "1")
    assert r.exit_code == 0 and "inconclusive" in r.stdout, r
    r = cli("parity", tiny_ckpt, tiny_onnx, "--samples", "1", "--strict")
    assert r.exit_code == 1 and "parity: FAIL" in r.stdout, r


def test_replay_refuses_a_config_mismatch(cli, tiny_ckpt, tiny_split, tmp_path):
    from vla_export.data.episodes import write_synthetic_episodes

    (episode,) = write_synthetic_episodes(tmp_path / "ep", count=1, frames=5, frame_hw=(96, 160))
    src = tiny_split.manifest_path.parent
    dst = tmp_path / "split"
    shutil.copytree(src, dst)
    record = dst / tiny_split.manifest_path.name
    data = json.loads(record.read_text())
    data["config"]["pooling"] = "mean"
    record.write_text(json.dumps(data))
    r = cli("replay", tiny_ckpt, record, episode)
    assert r.exit_code == 2, r
    assert "pooling: artifact 'mean', checkpoint 'last'" in " ".join(r.stderr.split())


@pytest.fixture(scope="module")
def foreign_record(tmp_path_factory):
    """The foreign fixture and its saved model record (renames + the true head counts)."""
    from vla_export.models.checkpoint import parse_renames
    from vla_export.models.inspect import inspect_checkpoint
    from vla_export.models.resolve import LoadOptions

    d = tmp_path_factory.mktemp("foreign-rec")
    ckpt = save_foreign(foreign_policy(), d / "foreign.pt")
    sets = (("kosmos_vision.num_heads", 4), ("kosmos_text.num_heads", 4), ("clip_vision.num_heads", 4))
    report = inspect_checkpoint(ckpt, options=LoadOptions(renames=tuple(parse_renames(FOREIGN_RENAMES)), sets=sets))
    rec = d / "foreign.json"
    rec.write_text(json.dumps(report["record"]))
    return ckpt, rec


def test_vla_bench_takes_the_shared_loading_options(cli, foreign_record, tmp_path):
    ckpt, rec = foreign_record
    renames = [w for r in FOREIGN_RENAMES for w in ("--rename", r)]
    args = ("--warmup", "1", "--iters", "2", "--mode", "compute", "--device-peak", "agx-orin-64gb")
    r = cli(ckpt, *args, *renames, "--set", "head_tanh=false", "--json", tmp_path / "b.json", app="bench")
    assert r.exit_code == 0, r
    assert "--rename vlm.=kosmos_model." in json.loads((tmp_path / "b.json").read_text())["command"]
    assert "model: layout --rename" in " ".join(r.stderr.split())  # the compact resolved-model line
    r = cli(ckpt, *args, "--config", rec, app="bench")
    assert r.exit_code == 0, r


@pytest.mark.parametrize("command", ["inspect", "onnx", "parity", "replay", "trt"])
def test_every_checkpoint_command_has_the_same_loading_options(cli, command):
    r = cli(command, "--help")
    text = " ".join(r.stdout.split())
    for flag in ("--config", "--rename", "--set", "--trust-checkpoint"):
        assert flag in text, (command, flag)


def test_saved_config_works_for_onnx_export(cli, foreign_record, tmp_path):
    ckpt, rec = foreign_record
    out = tmp_path / "f.onnx"
    r = cli("onnx", ckpt, "--config", rec, "-o", out, "--samples", "1")
    assert r.exit_code == 0, r
    # One parameter count, explained: the completeness table's distinct count against the policy's.
    assert "parameters: the policy has 315,207; the table counts" in " ".join(r.stdout.split())
    m = json.loads(out.with_name("f.onnx.json").read_text())
    assert m["config"]["kosmos_text"]["num_heads"] == 4 and m["model"]["config_source"].startswith("given by --config")
    assert m["model"]["key_layout"]["renames"] == FOREIGN_RENAMES
    r = cli("parity", ckpt, out, "--config", rec, "--samples", "3", "--strict")
    assert r.exit_code == 0, r


def test_quantized_and_engine_manifests_carry_the_model_record(tiny_onnx, tmp_path):
    from vla_export.export import quantize as Q
    from vla_export.export.trt import read_onnx_facts
    from vla_export.artifacts.manifest import read_manifest

    out = Q.convert_fp16(tiny_onnx, tmp_path / "tiny.fp16.onnx").output
    record = read_manifest(tiny_onnx).to_dict()["model"]
    assert read_manifest(out).to_dict()["model"] == record and record["config_source"]
    assert read_onnx_facts(tiny_onnx).model == record  # what the engine manifest copies
