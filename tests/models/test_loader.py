"""Strict loading: every key problem is an error that names it; nothing falls back to random weights."""

from collections import OrderedDict

import pytest
import torch

from vla_export.errors import StrictLoadError
from vla_export.models.config import get_preset
from vla_export.models.loader import PolicyFromCheckpoint
from vla_export.models.resolve import LoadOptions


@pytest.fixture(scope="module")
def sd(tiny_policy):
    return OrderedDict((k, v.clone()) for k, v in tiny_policy.state_dict().items())


def _save(tmp_path, sd, name="c.pt"):
    path = tmp_path / name
    torch.save({"model_state_dict": sd}, path)
    return path


def test_round_trip_identical_outputs(tiny_ckpt, tiny_policy):
    from vla_export.data.source import SyntheticSource

    loaded = PolicyFromCheckpoint(tiny_ckpt)()
    x = {k: torch.from_numpy(v) for k, v in SyntheticSource(loaded.config, seed=9, batch=3).sample(1).items()}
    with torch.no_grad():
        assert torch.equal(loaded.policy(**x), tiny_policy(**x))
    assert not any(t.is_meta for t in list(loaded.policy.parameters()) + list(loaded.policy.buffers()))


def test_missing_keys(tmp_path, sd):
    broken = OrderedDict((k, v) for k, v in sd.items() if not k.startswith("rnn.") or "l1" not in k)
    with pytest.raises(StrictLoadError, match=r"4 missing \(lstm: rnn.weight_ih_l1"):
        PolicyFromCheckpoint(_save(tmp_path, broken), options=LoadOptions(config=get_preset("tiny")))()


def test_unexpected_keys(tmp_path, sd):
    extra = OrderedDict(sd)
    extra["ema.shadow"] = torch.zeros(2)
    with pytest.raises(StrictLoadError, match=r"(?s)1 tensors have no place in the policy:.*ema\.\*: 1 tensors, 2 parameters \(e\.g\. ema\.shadow \[2\]\).*no counterpart"):
        PolicyFromCheckpoint(_save(tmp_path, extra))()


def test_unused_lm_head_is_dropped_and_reported(tmp_path, sd):
    """Kosmos-2's text-generation head (Kosmos2ForConditionalGeneration) is never used by the policy: dropped, said."""
    extra = OrderedDict(sd)
    extra["kosmos_model.text_model.lm_head.weight"] = torch.zeros(512, 48)
    loaded = PolicyFromCheckpoint(_save(tmp_path, extra))()
    assert loaded.resolved.mapping.dropped == [
        {"prefix": "kosmos_model.text_model.lm_head.", "tensors": 1, "parameters": 512 * 48,
         "reason": "Kosmos-2's text-generation head (the policy never generates text)"}
    ]


def test_misshaped_keys(tmp_path, sd):
    bad = OrderedDict(sd)
    bad["kosmos_model.text_model.model.layers.0.ffn.fc1.weight"] = torch.zeros(97, 48)
    with pytest.raises(StrictLoadError, match=r"mis-shaped \(kosmos_model.text_model.model.layers.0.ffn.fc1.weight: checkpoint \(97, 48\) vs model \(96, 48\)"):
        PolicyFromCheckpoint(_save(tmp_path, bad), options=LoadOptions(config=get_preset("tiny")))()


def test_wrong_explicit_config(tiny_ckpt):
    with pytest.raises(StrictLoadError, match="tiny-kosmos.*unexpected \\(clip_vision"):
        PolicyFromCheckpoint(tiny_ckpt, options=LoadOptions(config=get_preset("tiny-kosmos")))()


def test_many_problems_are_summarised(tmp_path, sd):
    broken = OrderedDict((k, v) for k, v in sd.items() if "encoder.layers.1." not in k)
    with pytest.raises(StrictLoadError, match=r"more"):
        PolicyFromCheckpoint(_save(tmp_path, broken), options=LoadOptions(config=get_preset("tiny")))()


def test_fp16_checkpoint_loads_as_fp32(tmp_path, sd, tiny_policy):
    half = OrderedDict((k, v.half() if v.is_floating_point() else v) for k, v in sd.items())
    loaded = PolicyFromCheckpoint(_save(tmp_path, half))()
    assert all(p.dtype == torch.float32 for p in loaded.policy.parameters())
    for (k, a), b in zip(loaded.policy.state_dict().items(), half.values()):
        assert torch.equal(a, b.float()), k


def test_mmap_no_second_copy(tiny_ckpt):
    """Parameters are the checkpoint's own (memory-mapped) tensors, assigned, not copied into fresh ones."""
    from vla_export.models.checkpoint import read_checkpoint

    ckpt = read_checkpoint(tiny_ckpt)
    loaded = PolicyFromCheckpoint(ckpt)()
    key = "kosmos_model.text_model.model.embed_tokens.weight"
    assert loaded.policy.state_dict()[key].data_ptr() == ckpt.state_dict[key].data_ptr()
