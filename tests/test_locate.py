"""`parity --locate`: the per-layer comparison names the layer a perturbed graph breaks, and runs on INT8."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from vla_export.data.calibration import make_calibration_set
from vla_export.data.episodes import write_synthetic_episodes
from vla_export.errors import ArtifactError, ConfigError
from vla_export.verify.locate import locate
from vla_export.models.config import get_preset
from vla_export.models.loader import PolicyFromCheckpoint

PERTURBED_MODULE = "policy.kosmos_model.text_model.model.layers.1.ffn.fc1"


@pytest.fixture(scope="module")
def perturbed(tiny_onnx, tmp_path_factory):
    """The tiny export with one weight of text layer 1 changed (one element of its fc1 matrix).

    The weight is found through the node's module scope: the exporter renames transposed matrices
    (``val_N``) and stores identical tensors (zero biases, unit norms) once for all layers.
    """
    from vla_export.export.inspect_artifacts import node_module_scopes

    model = onnx.load(tiny_onnx)
    inits = {t.name: t for t in model.graph.initializer}
    matmul = next(n for n in model.graph.node if n.op_type == "MatMul" and node_module_scopes(n)[-1:] == [PERTURBED_MODULE])
    init = inits[next(i for i in matmul.input if i in inits)]
    assert sum(i == init.name for n in model.graph.node for i in n.input) == 1  # used by this layer only
    arr = numpy_helper.to_array(init).copy()
    arr.flat[0] += 3.0
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    path = tmp_path_factory.mktemp("perturbed") / "tiny.onnx"
    onnx.save(model, path)
    return path


def test_exact_export_has_no_layer_over_tolerance(tiny_ckpt, tiny_onnx):
    r = locate(PolicyFromCheckpoint(tiny_ckpt), tiny_onnx, samples=1)
    modules = [p.module for p in r.points]
    assert r.first_over is None and "no layer over tolerance" in r.summary()
    assert {"kosmos_model.text_model.model.layers.0", "kosmos_model.text_model.model.layers.1", "kosmos_model.vision_model",
            "kosmos_model.image_to_text_projection", "clip", "rnn", "action"} <= set(modules)
    # execution order: the vision tower before the projection before the text layers; the head last
    assert modules.index("kosmos_model.vision_model") < modules.index("kosmos_model.image_to_text_projection") \
        < modules.index("kosmos_model.text_model.model.layers.0") < modules.index("rnn") < modules.index("action")
    assert all(p.max_abs < 1e-4 and p.cosine > 0.9999 for p in r.points)
    assert r.to_dict()["schema"] == "vla-export/locate/1"


def test_perturbed_text_layer_is_named(tiny_ckpt, perturbed):
    r = locate(PolicyFromCheckpoint(tiny_ckpt), perturbed, samples=2)
    assert r.first_over is not None and r.first_over.module == "kosmos_model.text_model.model.layers.1", r.summary()
    before = r.points[: r.points.index(r.first_over)]
    assert before and not any(p.over for p in before)
    assert "kosmos_model.text_model.model.layers.0" in [p.module for p in before]
    assert r.largest_jump[0].module == "kosmos_model.text_model.model.layers.1"
    # every module: the first one over is the perturbed linear itself
    r = locate(PolicyFromCheckpoint(tiny_ckpt), perturbed, samples=1, level="all")
    assert r.first_over.module == "kosmos_model.text_model.model.layers.1.ffn.fc1", r.summary()
    assert len(r.points) > 50
    assert "called 2 times" in r.skipped["kosmos_model.text_model.model.embed_tokens"]


def test_locate_runs_on_the_int8_artifact(tiny_ckpt, tiny_onnx, tmp_path):
    from vla_export.export.quantize import quantize_int8

    write_synthetic_episodes(tmp_path / "episodes", 2, seed=0, frames=8, frame_hw=(48, 64))
    calib = make_calibration_set(tmp_path / "episodes", get_preset("tiny"), tmp_path / "calib.npz", count=4)
    int8 = quantize_int8(tiny_onnx, calib, tmp_path / "tiny.int8.onnx").output
    r = locate(PolicyFromCheckpoint(tiny_ckpt), int8, samples=2)
    assert r.precision == "int8" and r.tolerance.rtol == pytest.approx(5e-2)  # from the manifest
    assert {p.component for p in r.points} >= {"kosmos_vision", "projection", "kosmos_text", "clip_vision", "lstm", "action_head"}
    assert all(np.isfinite(p.max_abs) for p in r.points)
    assert max(p.rel_err for p in r.points) > 1e-3  # it really is a quantized graph, compared layer by layer
    # The quantizer's Q/DQ nodes carry no scope: they must not make a module's inner tensor look like its output
    # (CLIP's pre-LayerNorm output, quantized for the first attention, once passed for CLIP's output).
    exact = locate(PolicyFromCheckpoint(tiny_ckpt), tiny_onnx, samples=1)
    assert {p.module: p.onnx_tensor for p in r.points} == {p.module: p.onnx_tensor for p in exact.points}


def test_refusals(tiny_ckpt, tiny_onnx, tmp_path):
    model = onnx.load(tiny_onnx)
    for node in model.graph.node:
        del node.metadata_props[:]
    onnx.save(model, tmp_path / "bare.onnx")
    with pytest.raises(ArtifactError, match="no module scopes"):
        locate(PolicyFromCheckpoint(tiny_ckpt), tmp_path / "bare.onnx")
    (tmp_path / "t.engine").write_bytes(b"x")
    with pytest.raises(ConfigError, match="ONNX the engine was built from"):
        locate(PolicyFromCheckpoint(tiny_ckpt), tmp_path / "t.engine")
    with pytest.raises(ConfigError, match="level"):
        locate(PolicyFromCheckpoint(tiny_ckpt), tiny_onnx, level="some")


def test_parity_locate_command_with_plot(cli, tiny_ckpt, perturbed, tmp_path):
    pytest.importorskip("matplotlib")
    r = cli("parity", tiny_ckpt, perturbed, "--samples", 2, "--locate", "--plot", tmp_path / "layers.png", "--json", tmp_path / "p.json")
    assert r.exit_code == 1, r  # parity fails: the perturbed graph is wrong
    assert "FIRST OVER" in r.stdout and "kosmos_model.text_model.model.layers.1" in r.stdout
    report = json.loads((tmp_path / "p.json").read_text())
    assert report["locate"]["first_over"] == "kosmos_model.text_model.model.layers.1"
    assert (tmp_path / "layers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = cli("parity", tiny_ckpt, perturbed, "--plot", tmp_path / "x.png")
    assert r.exit_code == 2 and "--locate" in r.stderr
