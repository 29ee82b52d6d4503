"""Checkpoints from other code bases: recognised, or an error that proposes working --rename lines;
every value not read from a shape is listed; nothing is silently different."""

import json

import pytest
import torch

from tests.foreign import (
    FOREIGN_CONFIG, FOREIGN_RENAMES, ROBOVLMS_CONFIG, foreign_policy, robovlms_policy, save_foreign, save_robovlms,
)
from vla_export.errors import StrictLoadError
from vla_export.models.checkpoint import parse_renames
from vla_export.models.inspect import inspect_checkpoint
from vla_export.models.loader import PolicyFromCheckpoint
from vla_export.models.resolve import LayoutError, LoadOptions

HEADS_4 = (("kosmos_vision.num_heads", 4), ("kosmos_text.num_heads", 4), ("clip_vision.num_heads", 4))


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    policy = foreign_policy()
    return policy, save_foreign(policy, tmp_path_factory.mktemp("foreign") / "foreign.pt")


@pytest.fixture(scope="module")
def robovlms(tmp_path_factory):
    policy = robovlms_policy()
    return policy, save_robovlms(policy, tmp_path_factory.mktemp("robovlms") / "last.ckpt")


def _inputs(cfg, seed=2):
    from vla_export.data.source import SyntheticSource

    return {k: torch.from_numpy(v) for k, v in SyntheticSource(cfg, seed=seed, batch=2, window=2).sample(0).items()}


def _outputs(policy, x):
    with torch.no_grad():
        return policy(**x, return_features=True)


def test_foreign_names_get_an_error_with_working_renames(foreign):
    _, path = foreign
    report = inspect_checkpoint(path)
    assert not report["loadable"]
    diag = report["diagnosis"]
    # The unrecognised prefixes, with their parameter counts and tensors, instead of a downstream symptom.
    groups = {g["prefix"]: g for g in diag["unrecognised"]}
    assert set(groups) == {"vlm.", "image_encoder.", "temporal.", "policy_head."}
    assert groups["temporal."]["parameters"] == sum(p.numel() for p in foreign[0].rnn.parameters())
    assert groups["policy_head."]["examples"][0] == {"key": "policy_head.0.weight", "shape": [16, 24]}
    assert diag["proposed_renames"] == FOREIGN_RENAMES and diag["proposal_verified"]
    assert "--rename vlm.=kosmos_model." in report["reason"]
    # ... and the proposal does load.
    assert inspect_checkpoint(path, options=LoadOptions(renames=tuple(parse_renames(FOREIGN_RENAMES))))["loadable"]


def test_a_partial_rename_gets_the_full_proposal_not_a_width_symptom(foreign):
    """Renaming only the head used to end in 'the LSTM takes 92 features but the backbone gives 56; pass --config'."""
    _, path = foreign
    with pytest.raises(LayoutError) as err:
        PolicyFromCheckpoint(path, options=LoadOptions(renames=(("policy_head.", "action."),)))()
    assert "instead of your --rename options" in str(err.value) and "--rename image_encoder.=clip." in str(err.value)
    assert "LSTM takes" not in str(err.value)


def test_foreign_assumptions_are_listed_and_unconfirmable_ones_warned(foreign):
    _, path = foreign
    options = LoadOptions(renames=tuple(parse_renames(FOREIGN_RENAMES)))
    report = inspect_checkpoint(path, options=options)
    fields = {f["field"]: f for f in report["assumptions"]}
    for name in ("kosmos_vision.num_heads", "kosmos_text.num_heads", "clip_vision.num_heads", "head_tanh", "pooling", "tokens"):
        assert fields[name]["basis"] == "assumed" and fields[name]["warn"], name
        assert fields[name]["confirm_with"].startswith(f"--set {name}=") or fields[name]["confirm_with"].startswith(f"--set '{name}=")
    for name in ("window", "max_text_len", "kosmos_vision.image_size", "latent_query_num"):
        assert name in fields and not fields[name]["warn"]
    assert fields["kosmos_vision.image_size"] == {**fields["kosmos_vision.image_size"], "basis": "derived", "value": 64}
    # The final Tanh is not switched on by a guess: the foreign head has none.
    assert report["config"]["head_tanh"] is False
    assert any("head_tanh=false is a guess" in w and "--set head_tanh=false" in w for w in report["warnings"])
    assert report["key_layout"]["layout"] == "--rename"


def test_foreign_heads_guess_changes_outputs_and_set_makes_it_exact(foreign, caplog):
    policy, path = foreign
    renames = tuple(parse_renames(FOREIGN_RENAMES))
    x = _inputs(FOREIGN_CONFIG)
    want_a, want_f = _outputs(policy, x)
    with caplog.at_level("WARNING", logger="vla_export"):
        guessed = PolicyFromCheckpoint(path, options=LoadOptions(renames=renames))()
    assert guessed.config.kosmos_text.num_heads != 4  # shapes cannot tell, and the guess is wrong here ...
    assert any("kosmos_text.num_heads" in r.getMessage() and "--set kosmos_text.num_heads=" in r.getMessage() for r in caplog.records)
    got_a, got_f = _outputs(guessed.policy, x)
    assert not torch.allclose(got_f, want_f, atol=1e-3)  # ... and it changes the features: hence the warning
    exact = PolicyFromCheckpoint(path, options=LoadOptions(renames=renames, sets=HEADS_4))()
    got_a, got_f = _outputs(exact.policy, x)
    assert torch.equal(got_a, want_a) and torch.equal(got_f, want_f)
    assert exact.config.replace(name="foreign") == FOREIGN_CONFIG.replace(max_text_len=exact.config.max_text_len, window=exact.config.window)
    assert not exact.resolved.warnings or {f.field for f in exact.resolved.warnings} == {"tokens", "pooling", "head_tanh"}


def test_save_config_record_loads_exactly_with_nothing_assumed(foreign, tmp_path, cli):
    policy, path = foreign
    rec = tmp_path / "foreign.json"
    sets = [w for n, v in HEADS_4 for w in ("--set", f"{n}={v}")]
    renames = [w for r in FOREIGN_RENAMES for w in ("--rename", r)]
    r = cli("inspect", path, *renames, *sets, "--save-config", rec)
    assert r.exit_code == 0, r
    data = json.loads(rec.read_text())
    assert data["schema"] == "vla-export/model-config/1" and data["renames"] == FOREIGN_RENAMES
    assert data["config"]["kosmos_text"]["num_heads"] == 4 and data["config"]["head_tanh"] is False
    # The record alone (no --rename, no --set) gives the same model, every value now given.
    loaded = PolicyFromCheckpoint(path, options=LoadOptions.from_cli(rec))()
    x = _inputs(FOREIGN_CONFIG)
    assert torch.equal(_outputs(loaded.policy, x)[0], _outputs(policy, x)[0])
    assert {f.basis for f in loaded.resolved.fields} == {"given"} and not loaded.resolved.warnings
    r = cli("inspect", path, "--config", rec)
    assert r.exit_code == 0 and "warning" not in r.stderr, r


def test_robovlms_layout_is_recognised(robovlms):
    policy, path = robovlms
    loaded = PolicyFromCheckpoint(path, options=LoadOptions(sets=HEADS_4[:2]))()
    m = loaded.resolved.mapping
    assert (m.layout, m.wrapper) == ("robovlms", "model.")
    assert ("model.act_head.actions.mlp.", "action.") in m.renames
    # Kosmos2ForConditionalGeneration's tied lm_head is dropped, and said so.
    assert [d["prefix"] for d in m.dropped] == ["kosmos_model.text_model.lm_head."]
    # MLPTanhHead implies the Tanh; still a warned guess (MLPNohHead has the same names).
    tanh = next(f for f in loaded.resolved.fields if f.field == "head_tanh")
    assert tanh.value is True and tanh.warn and "MLPTanhHead" in tanh.source
    x = _inputs(ROBOVLMS_CONFIG)
    assert torch.equal(_outputs(loaded.policy, x)[0], _outputs(policy, x)[0])


def test_robovlms_gripper_and_action_token_have_no_place(tmp_path):
    path = save_robovlms(robovlms_policy(), tmp_path / "gripper.ckpt", gripper=True)
    with pytest.raises(StrictLoadError, match=r"(?s)recognised as layout robovlms.*act_head\.\*: 2 tensors.*action_token.*no counterpart"):
        PolicyFromCheckpoint(path)()


def test_parameter_counts_are_explained(robovlms, tmp_path, cli):
    _, path = robovlms
    report = inspect_checkpoint(path)
    assert report["policy_params"] == report["total_params"] == sum(p.numel() for p in robovlms[0].parameters())
    assert "not counted: kosmos_model.text_model.lm_head.* 3,752" in report["params_note"]


def test_set_values_are_typed_and_named():
    from vla_export.errors import ConfigError
    from vla_export.models.config import get_preset
    from vla_export.models.resolve import apply_sets, parse_sets

    cfg = apply_sets(get_preset("tiny"), parse_sets(["head_tanh=false", "kosmos_text.num_heads=4", "pooling=mean"]))
    assert (cfg.head_tanh, cfg.kosmos_text.num_heads, cfg.pooling) == (False, 4, "mean")
    for bad, why in (("head_tanh=True", "true or false"), ("kosmos_text.num_heads=4.5", "an integer"),
                     ("nope=1", "unknown field"), ("head_tanh", "FIELD=VALUE")):
        with pytest.raises(ConfigError, match=why):
            apply_sets(get_preset("tiny"), parse_sets([bad]))
