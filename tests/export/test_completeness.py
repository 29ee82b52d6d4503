"""The completeness proof: a full export passes; a stand-in graph (just the head) fails loudly."""

from __future__ import annotations

import re

import pytest

from vla_export.errors import ArtifactError
from vla_export.export.completeness import GraphTensor, check_tensors


def test_full_export_holds_every_parameter(tiny_onnx, tiny_policy):
    from vla_export.export.completeness import check_completeness, require_complete

    result = check_completeness(tiny_onnx, tiny_policy)
    assert result.passed and result.coverage >= 0.999
    assert result.total_parameters == sum(p.numel() for p in tiny_policy.parameters())
    assert all(c.coverage >= 0.999 for c in result.components.values())
    assert set(result.components) == {"kosmos_vision", "projection", "kosmos_text", "clip_vision", "lstm", "action_head"}
    assert require_complete(tiny_onnx, tiny_policy).passed


def test_head_only_graph_fails(tmp_path, tiny_policy):
    import torch

    from vla_export.export.completeness import require_complete
    from vla_export.export.onnx import export_module

    head = tmp_path / "head.onnx"
    cfg = tiny_policy.cfg
    export_module(tiny_policy.action, {"h": torch.randn(2, cfg.lstm_hidden)}, head, output_names=["actions"])
    with pytest.raises(ArtifactError, match=r"incomplete export: graph holds .* \(0\.\d+%") as info:
        require_complete(head, tiny_policy)
    # Per-component figures of anonymous tensors are attributions by element count, so only roughly zero.
    assert re.search(r"most missing: kosmos_vision \d\.\d%, clip_vision \d\.\d%, kosmos_text \d\.\d%", str(info.value))


def test_attribution_rules():
    params = {
        "a.weight": 12, "a.bias": 4,
        "rnn.weight_ih_l0": 32, "rnn.bias_ih_l0": 8, "rnn.bias_hh_l0": 8,
        "ln1.weight": 4, "ln2.weight": 4,  # identical tensors, stored once
    }
    aliases = {"ln2.weight": "ln1.weight"}
    tensors = [
        GraphTensor("wrapper.a.bias", 4, True),  # by name under a wrapper prefix
        GraphTensor("val_7", 12, True),  # a transposed a.weight
        GraphTensor("W", 32, True), GraphTensor("B", 16, True),  # ONNX LSTM packing: both biases in one tensor
        GraphTensor("wrapper.ln1.weight", 4, True),
        GraphTensor("pos.weights", 100, True),  # a buffer
        GraphTensor("shape_const", 3, False),
    ]
    r = check_tensors(tensors, params, {"pos.weights": 100}, aliases=aliases)
    assert r.passed and r.coverage == 1.0
    assert (r.by_name, r.by_count, r.unattributed, r.buffers, r.other_constants) == (8, 60, 0, 100, 3)
    assert r.parameters == 68 and r.total_parameters == 72

    dropped = check_tensors(tensors[:1] + tensors[4:], params, {"pos.weights": 100}, aliases=aliases)
    assert not dropped.passed and dropped.coverage == pytest.approx(8 / 68)
    assert set(dropped.missing) == {"a.weight", "rnn.weight_ih_l0", "rnn.bias_l0"}


def test_big_integer_constants_do_not_count():
    r = check_tensors([GraphTensor("ids", 1000, False)], {"w": 1000})
    assert not r.passed and r.other_constants == 1000


def test_unattributed_cannot_exceed_what_is_missing():
    r = check_tensors([GraphTensor("w", 10, True), GraphTensor("fused", 10_000, True)], {"w": 10, "v": 5})
    assert r.coverage == 1.0 and r.attributed == 15
