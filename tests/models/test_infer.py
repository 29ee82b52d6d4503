"""The architecture is recovered from names and shapes alone (meta tensors: no memory)."""

import pytest

from vla_export.errors import ArchitectureError
from vla_export.models.checkpoint import normalize_keys
from vla_export.models.config import PRESETS, get_preset
from vla_export.models.infer import infer_config
from vla_export.models.loader import build_policy


def _meta_sd(cfg):
    return build_policy(cfg, device="meta").state_dict()


def _expected(name):
    """What shapes give for a preset: its structure, with the Tanh off (a Tanh has no weights to show it)."""
    return PRESETS[name].replace(name="inferred", head_tanh=False)


def _fields(inferred):
    return {f.field: f for f in inferred.assumptions}


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_is_recovered(name):
    inferred = infer_config(_meta_sd(PRESETS[name]))
    assert inferred.config == _expected(name)
    assert inferred.matched_preset == name
    fields = _fields(inferred)
    # Every value no shape holds is listed, with its basis; the Tanh and pooling are unconfirmed guesses.
    assert {"head_tanh", "pooling", "window", "tokens", "kosmos_text.num_heads", "kosmos_vision.num_heads"} <= set(fields)
    assert fields["head_tanh"].warn and fields["head_tanh"].flag == "--set head_tanh=false"
    assert fields["kosmos_vision.image_size"].basis == "derived"
    # Head counts of the published Kosmos-2 / CLIP widths are the real models'; of toolkit-only widths, a warned guess.
    published = name.startswith("mobile-vla")
    assert fields["kosmos_text.num_heads"].warn is (not published)


@pytest.mark.parametrize("layout", ["nested", "flat"], ids=["transformers-4.x-keys", "transformers-5.x-keys"])
@pytest.mark.parametrize("name", ["tiny", "mobile-vla"])
def test_both_clip_key_layouts(name, layout):
    sd = normalize_keys(_meta_sd(PRESETS[name]), clip_layout=layout)
    assert any(k.startswith("clip.vision_model.") for k in sd) == (layout == "nested")
    assert infer_config(sd).config == _expected(name)


def test_renamed_keys_then_normalised():
    sd = {"module.backbone." + k[len("kosmos_model."):] if k.startswith("kosmos_model.") else "module." + k: v
          for k, v in _meta_sd(get_preset("tiny")).items()}
    with pytest.raises(ArchitectureError, match="--rename"):
        infer_config(normalize_keys(sd))
    fixed = normalize_keys(sd, renames=[("backbone.", "kosmos_model.")])
    assert infer_config(fixed).config == _expected("tiny")


def test_unlisted_sizes_are_inferred_with_stated_assumptions():
    cfg = get_preset("tiny").replace(
        lstm_hidden=24, lstm_layers=3, head_hidden=(40, 20, 10), action_dim=2, feature_proj=64,
        kosmos_text=get_preset("tiny").kosmos_text.__class__(embed_dim=128, num_layers=3, num_heads=2, ffn_dim=256, vocab_size=700),
    )
    inferred = infer_config(_meta_sd(cfg))
    got = inferred.config
    assert inferred.matched_preset is None
    assert (got.lstm_hidden, got.lstm_layers, got.head_hidden, got.action_dim, got.feature_proj) == (24, 3, (40, 20, 10), 2, 64)
    assert (got.kosmos_text.embed_dim, got.kosmos_text.num_layers, got.kosmos_text.vocab_size) == (128, 3, 700)
    assert got.kosmos_text.num_heads == 2  # 128 / head size 64: an assumption, and said so
    fields = _fields(inferred)
    assert fields["kosmos_text.num_heads"].warn and "head size 64" in fields["kosmos_text.num_heads"].source
    assert fields["pooling"].basis == "assumed"
    assert fields["tokens"].warn  # no known tokenizer has vocabulary 700


def test_not_a_policy():
    with pytest.raises(ArchitectureError, match="not a Kosmos-2 policy"):
        infer_config({"encoder.weight": (3, 3)})


def test_inconsistent_lstm_input():
    sd = dict(_meta_sd(get_preset("tiny")))
    sd["rnn.weight_ih_l0"] = (4 * 32, 999)
    with pytest.raises(ArchitectureError, match="LSTM takes 999 features"):
        infer_config(sd)


def test_missing_head():
    sd = {k: v for k, v in _meta_sd(get_preset("tiny")).items() if not k.startswith("action.")}
    with pytest.raises(ArchitectureError, match="action head"):
        infer_config(sd)
