import json

import pytest

from vla_export.errors import ConfigError
from vla_export.models.config import PRESETS, PolicyConfig, get_preset, load_config
from vla_export.models.loader import build_policy


def _count(cfg):
    return sum(p.numel() for p in build_policy(cfg, device="meta").parameters())


def test_preset_sizes():
    assert _count(get_preset("tiny")) < 1_000_000
    assert _count(get_preset("tiny-kosmos")) < 1_000_000
    assert 100e6 <= _count(get_preset("small")) <= 300e6
    # Kosmos-2 + LSTM(2048->1024, 4) + MLP(1024,1024,512,256,2): the published Mobile VLA count, exactly.
    assert _count(get_preset("mobile-vla-kosmos")) == 1_703_973_122
    assert 1.75e9 < _count(get_preset("mobile-vla")) < 1.85e9


def test_kosmos_backbone_matches_reference_count():
    policy = build_policy(get_preset("mobile-vla-kosmos"), device="meta")
    assert sum(p.numel() for p in policy.kosmos_model.parameters()) == 1_664_485_376


@pytest.mark.parametrize("name", list(PRESETS))
def test_dict_round_trip(name):
    cfg = PRESETS[name]
    assert PolicyConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'huge'.*tiny"):
        get_preset("huge")


def test_load_config_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"config": get_preset("tiny").to_dict()}))  # the shape inspect --json writes
    assert load_config(path) == get_preset("tiny")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a readable JSON"):
        load_config(tmp_path / "bad.json")
    (tmp_path / "partial.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(ConfigError, match="invalid policy config"):
        load_config(tmp_path / "partial.json")


def test_invalid_values():
    with pytest.raises(ConfigError, match="pooling"):
        get_preset("tiny").replace(pooling="max")
