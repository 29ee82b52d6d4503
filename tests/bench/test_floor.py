"""The physical floor: analytic counts match the real model, and impossible results are flagged."""

from __future__ import annotations

import numpy as np
import pytest

from vla_export.backends.base import Runner
from vla_export.bench.core import BenchSettings, bench_target
from vla_export.bench.floor import DEVICE_PEAKS, check_floor, detect_peak, get_peak, onnx_weight_bytes, policy_cost, policy_param_counts
from vla_export.bench.targets import BackendSpec, Target
from vla_export.errors import ArtifactError, ConfigError
from vla_export.models.config import get_preset


@pytest.mark.parametrize("preset", ["tiny", "tiny-kosmos", "small"])
def test_analytic_parameter_count_matches_the_module(preset):
    from vla_export.models.loader import build_policy

    meta = build_policy(get_preset(preset), device="meta")
    assert sum(policy_param_counts(get_preset(preset)).values()) == sum(p.numel() for p in meta.parameters())


def test_full_size_counts_match_the_published_numbers():
    assert sum(policy_param_counts(get_preset("mobile-vla")).values()) == 1_794_574_850
    assert sum(policy_param_counts(get_preset("mobile-vla-kosmos")).values()) == 1_703_973_122


def test_mobile_vla_cost_per_frame():
    cost = policy_cost(get_preset("mobile-vla"), window=1, text_len=16, dtype="float16")
    assert 0.35e12 < cost.total_flops < 0.42e12  # ~0.4 TFLOP per frame (ViT-L/14, 1.3B text model over 83 tokens, CLIP B/32)
    assert cost.text_tokens == 83
    # fp16 weights without the vocabulary table (only the 83 used rows are read): about 3.3 GB
    assert 3.2e9 < cost.weight_bytes < 3.4e9
    eight = policy_cost(get_preset("mobile-vla"), window=8, text_len=16, dtype="float16")
    assert eight.flops["kosmos_vision"] == 8 * cost.flops["kosmos_vision"]
    assert eight.flops["head"] == cost.flops["head"]
    assert policy_cost(get_preset("mobile-vla"), dtype="float32").weight_bytes == 2 * cost.weight_bytes


def test_the_seed_036_ms_claim_is_flagged():
    cost = policy_cost(get_preset("mobile-vla"), window=1, dtype="float16")
    h200 = check_floor(cost, DEVICE_PEAKS["h200"], 0.36)
    assert h200.below_floor and h200.bound == "memory"
    assert 0.7 < h200.floor_ms < 0.85  # 3.3 GB at 4.3 TB/s
    assert "not a measurement of the full model" in h200.notes[0]
    orin = check_floor(cost, DEVICE_PEAKS["agx-orin-64gb"], 0.36)
    assert orin.below_floor and 15 < orin.floor_ms < 18
    real = check_floor(cost, DEVICE_PEAKS["h200"], 5.4)
    assert not real.below_floor and real.ratio == pytest.approx(5.4 / real.floor_ms)
    assert real.to_dict()["ratio"] == real.ratio


def test_window_8_is_compute_bound_on_the_h200():
    cost = policy_cost(get_preset("mobile-vla"), window=8, dtype="float16")
    check = check_floor(cost, DEVICE_PEAKS["h200"], 10.2)
    assert check.bound == "compute" and 3.5 < check.floor_ms < 4.2 and not check.below_floor


def test_unknown_flops_gives_a_bandwidth_floor_only():
    cost = policy_cost(get_preset("tiny"))
    no_flops = type(cost)({}, cost.weight_bytes_by_part, None, "float32", 1, 0, "test")
    check = check_floor(no_flops, DEVICE_PEAKS["h200"], 1.0)
    assert check.compute_ms is None and check.floor_ms == check.bandwidth_ms
    assert any("FLOPs unknown" in n for n in check.notes)


def test_peaks_table_and_detection():
    assert DEVICE_PEAKS["agx-orin-64gb"].bandwidth_gbs == 204.8
    assert DEVICE_PEAKS["orin-nx-16gb"].bandwidth_gbs == 102.4
    assert detect_peak("NVIDIA H200", None) == "h200"
    assert detect_peak(None, "NVIDIA Jetson AGX Orin Developer Kit") == "agx-orin-64gb"
    assert detect_peak(None, "NVIDIA Jetson Orin NX Engine") == "orin-nx-16gb"
    assert detect_peak("Some GPU", None) is None
    with pytest.raises(ConfigError, match="unknown device"):
        get_peak("tpu")
    cpu = get_peak("cpu")
    assert cpu.bandwidth_gbs > 0 and cpu.rate("float32") > 0 and "measured" in cpu.source


def test_onnx_weight_bytes_counts_initializers_by_type(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros((4, 8), np.float32), "w")
    q = numpy_helper.from_array(np.zeros((8, 8), np.int8), "q")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        initializer=[w, q],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), path)
    assert onnx_weight_bytes(path) == {"initializers (float32)": 128, "initializers (int8)": 64}
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00not an onnx model" * 10)
    with pytest.raises(ArtifactError, match="bad.onnx"):
        onnx_weight_bytes(bad)


class _InstantRunner(Runner):
    """A 'runner' that returns at once: what an unsynchronised timer or a stand-in network looks like."""

    name = "instant"

    def __init__(self):
        super().__init__()
        self.config = get_preset("mobile-vla")

    input_names = ("pixel_values", "input_ids", "attention_mask")
    output_names = ("actions",)

    def describe(self):
        return super().describe() | {"dtype": "float16"}

    def _activate(self):
        pass

    def _execute(self, staged):
        return {"actions": np.zeros((1, 2), np.float32)}


def test_a_too_fast_full_size_result_is_flagged_end_to_end():
    target = Target("stand-in", "checkpoint", BackendSpec.parse("torch"), _InstantRunner)
    settings = BenchSettings(modes=("compute",), warmup=1, iters=5)
    result = bench_target(target, settings, DEVICE_PEAKS["h200"])
    assert result.below_floor
    row = result.to_dict()
    assert row["below_floor"] is True and row["valid"] is False
    assert row["modes"]["compute"]["floor"]["below_floor"] is True
    assert any("under the physical floor" in w for w in row["warnings"])
