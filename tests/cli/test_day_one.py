"""Day-one friction (issue 23, items 9 and 11): wrong pairs told before loading with the command to run
instead, rendered manifests, empty engines, typed --set values, checkpoint-naming hints, log-friendly tables."""

from __future__ import annotations

import re

import pytest

from tests.conftest import assert_one_error


@pytest.fixture
def no_load(monkeypatch):
    """Make any policy load fail loudly: a check that passes with it ran before the checkpoint was loaded."""
    from vla_export.models import loader

    def refuse(*a, **k):
        raise AssertionError("the policy was loaded before the pair was checked")

    monkeypatch.setattr(loader, "_load_policy", refuse)


def test_parity_swapped_arguments_name_the_right_order(cli, tiny_ckpt, tiny_onnx, no_load):
    line = assert_one_error(cli("parity", tiny_onnx, tiny_ckpt), 2, "comes first")
    assert f"`vla-export parity {tiny_ckpt} {tiny_onnx}`" in line


def test_parity_of_a_split_record_or_part_says_what_to_pass_instead(cli, tiny_ckpt, tiny_split, no_load):
    record = tiny_split.manifest_path
    line = assert_one_error(cli("parity", tiny_ckpt, record), 2, "record of a split export")
    assert f"vla-export replay {tiny_ckpt} {record} EPISODE.h5" in line and f"vla-export onnx {tiny_ckpt} -o" in line
    backbone = record.with_name(record.name.replace(".split.json", ".backbone.onnx"))
    line = assert_one_error(cli("parity", tiny_ckpt, backbone), 2, "is the backbone part of a split export")
    assert f"vla-export replay {tiny_ckpt} {record} EPISODE.h5" in line


def test_parity_of_another_configs_artifact_names_its_own_checkpoint(cli, tiny_ckpt, tiny_kosmos_ckpt, tiny_onnx, no_load):
    line = assert_one_error(cli("parity", tiny_kosmos_ckpt, tiny_onnx), 2, "'tiny' policy", "'tiny-kosmos' policy", "action_dim: artifact 3, checkpoint 2")
    assert f"`vla-export parity {tiny_ckpt} {tiny_onnx}`" in line  # the checkpoint its manifest records
    assert f"vla-export onnx {tiny_kosmos_ckpt} -o" in line


def test_a_right_pair_passes_the_preflight(tiny_ckpt, tiny_onnx):
    from vla_export.verify.preflight import check_parity_pair

    check_parity_pair(tiny_ckpt, tiny_onnx)  # same config: nothing raised


def test_onnx_inputs_refuse_a_split_record_naming_its_parts(cli, tiny_split, tmp_path):
    record = tiny_split.manifest_path
    assert_one_error(cli("quantize", record, "--fp16", "-o", tmp_path / "x.onnx"), 2, "record of a split export",
                     ".backbone.onnx or ", ".head.onnx")


def test_inspect_renders_the_manifest(cli, tiny_onnx):
    r = cli("inspect", tiny_onnx)
    assert r.exit_code == 0, r
    block = r.stdout[r.stdout.index("manifest:"):]
    assert "{'" not in block and "export_seconds=" not in block, block
    assert not re.search(r"\d\.\d{6,}", block), block  # no 13-digit floats
    assert re.search(r"export seconds: \d+\.\d s", block) and "coverage 100.00%" in block and "parity: export pass" in block


def test_inspect_of_an_empty_engine_is_an_error(cli, tmp_path):
    engine = tmp_path / "empty.engine"
    engine.write_bytes(b"")
    r = cli("inspect", engine)
    assert_one_error(r, 2, "empty (0 bytes)")
    assert "[yellow]" not in r.stdout + r.stderr


@pytest.mark.parametrize("value, says", [('[32,"16"]', "head_hidden[1]: must be an integer, got '16'"),
                                         ("[32,1.5]", "head_hidden[1]: must be an integer"),
                                         ("[32,-1]", "must be positive"),
                                         ("7", "head_hidden: must be a list of integers")])
def test_set_with_a_wrongly_typed_value_is_one_line(cli, tiny_ckpt, value, says):
    assert_one_error(cli("inspect", tiny_ckpt, "--set", f"head_hidden={value}"), 2, says)


def test_config_types_are_checked_not_converted():
    from vla_export.errors import ConfigError
    from vla_export.models.config import PolicyConfig, get_preset

    data = get_preset("tiny").to_dict()
    assert PolicyConfig.from_dict(data) == get_preset("tiny")
    for field, bad in (("lstm_hidden", "32"), ("head_tanh", 1), ("window", True), ("clip_vision", 3)):
        with pytest.raises(ConfigError, match=field):
            PolicyConfig.from_dict({**data, field: bad})
    with pytest.raises(ConfigError, match=r"kosmos_text\.num_heads"):
        PolicyConfig.from_dict({**data, "kosmos_text": {**data["kosmos_text"], "num_heads": "2"}})


def test_quantize_hint_names_the_recorded_checkpoint(cli, tiny_onnx, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "t16.onnx"
    r = cli("quantize", tiny_onnx, "--fp16", "-o", out)
    assert r.exit_code == 0, r
    src = tiny_onnx.parent.parent  # the session's checkpoint, recorded by its path at export time
    hint = next(line for line in r.stdout.splitlines() if line.startswith("check it:"))
    assert "CHECKPOINT" not in hint and re.search(r"vla-export parity \S+tiny\.pt " + re.escape(str(out)), hint), (hint, src)


def test_quantize_hint_says_when_the_checkpoint_is_not_found(tmp_path):
    from vla_export.cli.quantize import parity_command
    from vla_export.artifacts.manifest import build_manifest, write_manifest

    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"x")
    write_manifest(onnx, build_manifest("onnx", onnx, [onnx], source={"checkpoint": "gone.pt", "bytes": 5}))
    assert parity_command(onnx) == (f"vla-export parity CHECKPOINT {onnx} (CHECKPOINT: the one it was exported from; "
                                    "the manifest records 'gone.pt', not found here)")


def test_table_titles_stay_on_one_line_in_logs(capsys):
    from rich.table import Table

    from vla_export.cli.common import _Console

    out = _Console(highlight=False, force_terminal=False)
    title = "export: torch-cpu-fp32 vs onnxrt-cpu, 4 samples, fp32 (atol 0.0001, rtol 0.001, cosine >= 0.9999)"
    table = Table(title=title)
    table.add_column("output")
    table.add_row("actions")
    out.print(table)
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == title, printed
