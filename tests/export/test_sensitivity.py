"""INT8 sensitivity ranking and the accuracy-budget search, on tiny with held-out windows."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from vla_export.data.calibration import make_calibration_set
from vla_export.errors import ConfigError
from vla_export.artifacts.onnxfile import load_onnx
from vla_export.export import quantize as Q
from vla_export.export import sensitivity as S
from vla_export.artifacts.manifest import read_manifest
from vla_export.models.config import get_preset


@pytest.fixture(scope="module")
def setup(fitted_tiny_onnx, fit_episodes, held_out_episodes, tmp_path_factory):
    """The fitted tiny's float ONNX with features, its W8A8 Q/DQ model, and 3 held-out windows.

    Fitted, not random: a random policy's INT8 error is so small that any budget holds (see tests/test_fitted_checks.py).
    """
    import shutil

    root = tmp_path_factory.mktemp("sens")
    shutil.copy(fitted_tiny_onnx, root / "tiny.onnx")
    shutil.copy(str(fitted_tiny_onnx) + ".json", root / "tiny.onnx.json")
    shutil.copytree(held_out_episodes, root / "held-out")
    calib = make_calibration_set(fit_episodes, get_preset("tiny"), root / "calib.npz", count=4)
    qdq = Q.quantize_int8(root / "tiny.onnx", calib, root / "tiny.int8.onnx")
    feeds, record = S.held_out_feeds([root / "held-out"], get_preset("tiny"), calib.frames_used(), count=3, window=4)
    float_model = load_onnx(root / "tiny.onnx")
    Q.ensure_node_names(float_model)
    return {"root": root, "calib": calib, "float": float_model, "qdq": load_onnx(qdq.output), "feeds": feeds,
            "evaluate": S.Evaluator(float_model, feeds)}


def _damage(model, unit, factor=4.0):
    """Scale the weight of ``unit``'s first node by ``factor`` through its DequantizeLinear scale."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    prod = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    node = next(n for n in model.graph.node if n.name == unit.nodes[0])
    dq = next(prod[i] for i in node.input if i in prod and prod[i].op_type == "DequantizeLinear" and prod[i].input[0] in inits)
    scale = inits[dq.input[1]]
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * np.float32(factor), scale.name))
    return model


def test_surgery_all_float_is_the_float_model(setup):
    everything = S.quantized_nodes(setup["qdq"])
    assert len(everything) > 10
    e = setup["evaluate"](S.with_float_nodes(setup["qdq"], setup["float"], everything))
    assert e.actions_max_abs < 1e-5 and e.features_max_row_rel < 1e-5
    full = setup["evaluate"](setup["qdq"])
    assert full.actions_max_abs > 1e-4  # the quantized model really differs


@pytest.mark.parametrize("granularity", ["layer", "auto"])
def test_ranking_puts_a_damaged_layer_first(setup, granularity):
    layers = S.units_of(setup["qdq"], "layer")
    victim = next(u for u in layers if u.name.endswith("text_model.model.layers.0.ffn.fc2"))  # not the worst on its own
    clean = S.layer_sensitivity(setup["float"], setup["qdq"], setup["feeds"], granularity="layer", evaluator=setup["evaluate"])
    assert clean.units[0].unit.name != victim.name
    damaged = S.layer_sensitivity(setup["float"], _damage(setup["qdq"], victim), setup["feeds"], granularity=granularity,
                                  evaluator=setup["evaluate"])
    assert damaged.units[0].unit.name == victim.name, [u.unit.name for u in damaged.units[:3]]
    report = damaged.to_dict()
    assert report["schema"] == S.SCHEMA and report["ranking"][0]["name"] == victim.name and report["windows"] == 3


def test_budget_search_stops_when_the_budget_holds(setup):
    sens = S.layer_sensitivity(setup["float"], setup["qdq"], setup["feeds"], granularity="layer", evaluator=setup["evaluate"])
    full = sens.full.actions_max_abs
    budget = S.Budget(max_action_error=0.6 * full)
    _, search = S.budget_search(setup["float"], setup["qdq"], sens, budget, setup["evaluate"])
    assert search.met and search.final.actions_max_abs <= 0.6 * full
    assert [s["holds"] for s in search.steps] == [False] * (len(search.steps) - 1) + [True]  # stops at the first that holds
    assert search.kept_float == [u.unit.name for u in sens.units[: len(search.kept_float)]]  # most sensitive first
    assert 1 <= len(search.kept_float) < len(sens.units)
    already = S.budget_search(setup["float"], setup["qdq"], sens, S.Budget(max_action_error=10 * full), setup["evaluate"])[1]
    assert already.met and already.kept_float == []
    with pytest.raises(ConfigError, match="budget"):
        S.Budget()


def test_quantize_with_budget_records_the_choice_in_the_manifest(setup):
    root = setup["root"]
    budget = S.Budget(max_action_error=0.6 * setup["evaluate"](setup["qdq"]).actions_max_abs, min_cosine=0.99)
    result, search, sens = S.quantize_int8_with_budget(root / "tiny.onnx", setup["calib"], root / "budget.int8.onnx", budget,
                                                       setup["feeds"], data={"episodes": ["held-out"]}, granularity="layer")
    manifest = read_manifest(root / "budget.int8.onnx").to_dict()
    opts = manifest["quantization"]["options"]
    assert manifest["precision"] == "int8" and opts["budget"]["met"] and search.met
    assert list(opts["layers"]["float"]) == search.kept_float and set(opts["layers"]["int8"]).isdisjoint(search.kept_float)
    assert opts["int8_share_of_weight_elements"] < opts["int8_share_before_budget"]
    assert opts["budget"]["final"]["actions_max_abs"] <= budget.max_action_error
    assert manifest["quantization"]["kept_fp32"]["budget"] == len(search.float_nodes)
    assert opts["calibration"]["frames"] == setup["calib"].frames_used() and opts["sensitivity"]["ranking"]
    # The written model is the one measured: evaluating it again gives the recorded error.
    again = setup["evaluate"](load_onnx(result.output))
    assert again.actions_max_abs == pytest.approx(search.final.actions_max_abs, abs=1e-6)


def test_sensitivity_and_budget_commands(cli, setup, tmp_path):
    root = setup["root"]
    out = tmp_path / "sens.json"
    r = cli("sensitivity", root / "tiny.onnx", root / "tiny.int8.onnx", "--data", root / "held-out", "--samples", "2",
            "--granularity", "block", "--json", out)
    assert r.exit_code == 0 and "worst first" in r.stdout, r
    data = json.loads(out.read_text())
    assert data["schema"] == "vla-export/sensitivity/1" and data["ranking"] and data["data"]["disjoint_from_calibration"]
    r = cli("quantize", root / "tiny.onnx", "--int8", "--calib", setup["calib"].path, "--data", root / "held-out",
            "--eval-samples", "2", "--max-action-error", "0", "--granularity", "block", "-o", tmp_path / "b.int8.onnx")
    # A zero budget takes every unit out of INT8: the search ends at the float model, which meets it.
    assert r.exit_code == 0 and "0.0% of weight elements INT8" in " ".join(r.stdout.split()), r
    opts = read_manifest(tmp_path / "b.int8.onnx").to_dict()["quantization"]["options"]
    assert opts["budget"]["met"] and opts["layers"]["int8"] == [] and opts["int8_share_of_weight_elements"] == 0
    r = cli("quantize", root / "tiny.onnx", "--int8", "--calib", setup["calib"].path, "--min-cosine", "1.5")
    assert r.exit_code == 2 and "min-cosine" in r.stderr, r


def test_surgery_when_a_dequantize_output_has_the_float_name():
    """onnxruntime names a bias DequantizeLinear output after the float bias: the float copy is renamed."""
    from onnx import TensorProto, helper

    w = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w")
    b = numpy_helper.from_array(np.array([0.5, -0.5, 1.0], np.float32), "b")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("actions", TensorProto.FLOAT, [1, 3])
    float_model = helper.make_model(helper.make_graph([helper.make_node("Gemm", ["x", "w", "b"], ["actions"], name="g")],
                                                      "f", [x], [y], [w, b]))
    qb = numpy_helper.from_array(np.array([1, -1, 2], np.int32), "b_quantized")
    sb = numpy_helper.from_array(np.float32(0.5), "b_scale")
    q_nodes = [helper.make_node("DequantizeLinear", ["b_quantized", "b_scale"], ["b"], name="dq_b"),
               helper.make_node("Gemm", ["x", "w", "b"], ["actions"], name="g")]
    qdq = helper.make_model(helper.make_graph(q_nodes, "q", [x], [y], [w, qb, sb]))
    out = S.with_float_nodes(qdq, float_model, ["g"])
    onnx.checker.check_model(out)
    assert [n.op_type for n in out.graph.node] == ["Gemm"] and out.graph.node[0].input[2] == "b__float"
    np.testing.assert_array_equal(numpy_helper.to_array(next(i for i in out.graph.initializer if i.name == "b__float")),
                                  numpy_helper.to_array(b))


def test_mae_increase_budget_on_numbers(setup):
    """The MAE-increase budget, against targets equal to the float model's own actions (float MAE 0): the float
    model holds any budget, a damaged layer's model rises by its mean abs error and fails a tight one."""
    float_actions = setup["evaluate"].reference["actions"]
    ev = S.Evaluator(setup["float"], setup["feeds"], targets=float_actions)
    everything = S.quantized_nodes(setup["qdq"])
    same = ev(S.with_float_nodes(setup["qdq"], setup["float"], everything))
    assert abs(same.actions_mae_increase) < 1e-5 and S.Budget(max_mae_increase=0.001).holds(same)
    victim = next(u for u in S.units_of(setup["qdq"], "layer") if u.name.endswith("text_model.model.layers.0.ffn.fc2"))
    full, damaged = ev(setup["qdq"]), ev(_damage(setup["qdq"], victim, factor=50.0))
    assert damaged.actions_mae_increase > max(full.actions_mae_increase, 1e-5)
    assert damaged.actions_mae_increase <= damaged.actions_max_abs + 1e-9  # targets = float actions: the rise is a mean abs error
    between = S.Budget(max_mae_increase=(full.actions_mae_increase + damaged.actions_mae_increase) / 2)
    assert between.holds(full) and not between.holds(damaged)
    assert S.Errors(0.0, 0.0, 1.0).actions_mae_increase is None  # without recorded actions it cannot hold
    assert not S.Budget(max_mae_increase=1.0).holds(S.Errors(0.0, 0.0, 1.0))
    with pytest.raises(ConfigError, match="--max-mae-increase"):
        S.Budget(max_mae_increase=-0.1)
    with pytest.raises(ConfigError, match="--max-mae-increase"):
        S.Budget()
    with pytest.raises(ConfigError, match="recorded actions"):
        S.quantize_int8_with_budget(setup["root"] / "tiny.onnx", setup["calib"], setup["root"] / "x.onnx",
                                    S.Budget(max_mae_increase=0.1), setup["feeds"])


def test_held_out_feeds_record_the_recorded_actions(setup):
    feeds, record = S.held_out_feeds([setup["root"] / "held-out"], get_preset("tiny"), setup["calib"].frames_used(), count=3, window=4)
    assert len(record["recorded_actions"]) == 3 and all(len(a) == 3 for a in record["recorded_actions"])
    _, capped = S.held_out_feeds([setup["root"] / "held-out"], get_preset("tiny"), None, count=1000, window=4, at_most=True)
    assert capped["windows"] == capped["candidate_windows"] == 4 * (18 - 4 + 1)  # the held-out fixture: 4 episodes of 18 frames, window 4
    with pytest.raises(ConfigError, match="--samples 1000"):
        S.held_out_feeds([setup["root"] / "held-out"], get_preset("tiny"), None, count=1000, window=4)
