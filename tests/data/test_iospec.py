"""One I/O specification: what exports, profiles, calibration and the runtime agree on."""

from __future__ import annotations

import onnx

from vla_export.data.iospec import BACKBONE, HEAD, POLICY, axis_role, dummy_inputs
from vla_export.models.config import get_preset


def test_dynamic_axes_by_role():
    assert POLICY.dynamic_axes() == {"pixel_values": {0: "batch"}, "input_ids": {0: "batch", 1: "text_len"},
                                     "attention_mask": {0: "batch", 1: "text_len"}}
    assert POLICY.dynamic_axes(dynamic_window=True)["pixel_values"] == {0: "batch", 1: "window"}
    assert HEAD.dynamic_axes() == {"features": {0: "batch", 1: "window"}}
    assert axis_role("input_ids", 1) == "text" and axis_role("features", 1) == "window" and axis_role("nope", 0) is None


def test_dummy_inputs_follow_the_spec():
    cfg = get_preset("tiny")
    for graph in (POLICY, BACKBONE, HEAD):
        feeds = dummy_inputs(graph, cfg, batch=2, window=3, text_len=5)
        assert tuple(feeds) == graph.input_names
        for spec in graph.inputs:
            a = feeds[spec.name]
            assert a.dtype.name == spec.dtype and a.ndim == len(spec.axes) and a.shape[0] == 2
    assert dummy_inputs(POLICY, cfg, window=3)["pixel_values"].shape[1] == 3


def test_the_exported_graph_is_what_the_spec_says(tiny_onnx):
    model = onnx.load(str(tiny_onnx), load_external_data=False)
    assert tuple(i.name for i in model.graph.input) == POLICY.input_names
    assert tuple(o.name for o in model.graph.output)[:1] == POLICY.output_names()
    dyn = POLICY.dynamic_axes()
    for i in model.graph.input:
        params = {axis: d.dim_param for axis, d in enumerate(i.type.tensor_type.shape.dim) if d.dim_param}
        assert set(params) == set(dyn[i.name]), (i.name, params)
