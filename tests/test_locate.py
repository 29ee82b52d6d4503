"""`parity --locate`: the per-layer comparison names the layer a perturbed graph breaks, and runs on INT8."""

from __future__ import annotations

import json
from pathlib import Path

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
    from vla_export.artifacts.graph import node_module_scopes

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


@pytest.fixture(scope="module")
def tiny_int8(tiny_onnx, tmp_path_factory):
    from vla_export.export.quantize import quantize_int8

    root = tmp_path_factory.mktemp("locate-int8")
    write_synthetic_episodes(root / "episodes", 2, seed=0, frames=8, frame_hw=(48, 64))
    calib = make_calibration_set(root / "episodes", get_preset("tiny"), root / "calib.npz", count=4)
    return Path(quantize_int8(tiny_onnx, calib, root / "tiny.int8.onnx").output)


def test_locate_runs_on_the_int8_artifact(tiny_ckpt, tiny_onnx, tiny_int8):
    int8 = tiny_int8
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


MIDDLE = "kosmos_model.text_model.model.layers.1"


def _scaled_weights(int8_path, module: str, factor: float, out):
    """A copy of a Q/DQ graph whose weight scales in ``module`` (every quantized MatMul there) are ``factor`` times
    too large: what a wrong scale does to one layer. Its manifest is copied (it still says where it came from)."""
    from vla_export.artifacts.graph import node_module_scopes

    model = onnx.load(int8_path)
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    scaled = 0
    for node in model.graph.node:
        if node.op_type != "MatMul" or not any(s.startswith(f"policy.{module}.") for s in node_module_scopes(node)):
            continue
        for name in node.input:
            dq = producer.get(name)
            if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
                scale = inits[dq.input[1]]
                scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * np.float32(factor), scale.name))
                scaled += 1
    assert scaled >= 4  # the layer's projections and its feed-forward
    onnx.save(model, out)
    (out.parent / (out.name + ".json")).write_text((int8_path.parent / (int8_path.name + ".json")).read_text())
    return out


def test_quantized_locate_names_the_layer_that_adds_the_most(tiny_ckpt, tiny_int8, tmp_path):
    """A middle layer (text layer 1) with wrong weight scales: ranked by the error each adds it comes first, while the
    cumulative rule names an earlier vision layer (everything downstream of the first quantized layer inherits its error)."""
    clean = locate(PolicyFromCheckpoint(tiny_ckpt), tiny_int8, samples=2)
    assert clean.top_adder is not None and clean.top_adder.module != MIDDLE
    middle_clean = next(p for p in clean.points if p.module == MIDDLE)
    bad = _scaled_weights(tiny_int8, MIDDLE, 3.0, tmp_path / "mid.int8.onnx")
    r = locate(PolicyFromCheckpoint(tiny_ckpt), bad, samples=2)
    assert r.top_adder.module == MIDDLE, [(p.module, p.added["rel_err"]) for p in r.ranking]
    assert r.first_over is not None and r.points.index(r.first_over) < [p.module for p in r.points].index(MIDDLE)
    assert r.first_over.component == "kosmos_vision"  # what the cumulative rule would have blamed
    middle = next(p for p in r.points if p.module == MIDDLE)
    assert middle.added["rel_err"] > 3 * middle_clean.added["rel_err"] and middle.added["int8_nodes"] >= 4
    # The layers before it are measured with float inputs: untouched by the perturbation.
    for p, q in zip(clean.points, r.points):
        if p.added and r.points.index(q) < r.points.index(middle):
            assert q.added["rel_err"] == pytest.approx(p.added["rel_err"], rel=1e-6)
    d = r.to_dict()
    assert d["top_adder"] == MIDDLE and d["ranking_by_added_error"][0] == MIDDLE and r.summary().startswith(f"adds the most error: {MIDDLE}")


def test_quantized_locate_without_the_float_onnx_says_so(tiny_ckpt, tiny_int8, tmp_path):
    import json

    copy = tmp_path / "moved.int8.onnx"
    copy.write_bytes(tiny_int8.read_bytes())
    manifest = json.loads((tiny_int8.parent / (tiny_int8.name + ".json")).read_text())
    manifest["quantized_from"]["path"] = str(tmp_path / "gone.onnx")
    (tmp_path / "moved.int8.onnx.json").write_text(json.dumps(manifest))
    r = locate(PolicyFromCheckpoint(tiny_ckpt), copy, samples=1)
    assert r.top_adder is None and "gone.onnx" in r.added_note and "--locate-float" in r.added_note
    assert all(p.added is None for p in r.points) and r.first_over is not None  # the cumulative curve is still there
    given = locate(PolicyFromCheckpoint(tiny_ckpt), copy, samples=1, float_onnx=json.loads(
        (tiny_int8.parent / (tiny_int8.name + ".json")).read_text())["quantized_from"]["path"])
    assert given.top_adder is not None


def test_failed_int8_parity_prints_next_steps_that_run(cli, tiny_ckpt, tiny_int8, tmp_path):
    """parity of the damaged INT8 model fails; the locate table ranks what each layer adds and the next steps are
    commands filled in from the manifest (float ONNX, calibration set, the --data given) that run as printed."""
    import shlex

    bad = _scaled_weights(tiny_int8, MIDDLE, 10.0, tmp_path / "mid.int8.onnx")
    held_out = write_synthetic_episodes(tmp_path / "held-out", 2, seed=5, frames=8, frame_hw=(48, 64))
    r = cli("parity", tiny_ckpt, bad, "--samples", 4, "--data", tmp_path / "held-out", "--locate", "--json", tmp_path / "p.json")
    assert r.exit_code == 1, r
    assert "adds alone" in r.stdout and f"locate: adds the most error: {MIDDLE}" in " ".join(r.stdout.split())
    assert "INT8 parity failed. Next steps" in r.stdout
    manifest = json.loads((tiny_int8.parent / (tiny_int8.name + ".json")).read_text())
    float_onnx = manifest["quantized_from"]["path"]
    calib = manifest["quantization"]["options"]["calibration"]["path"]
    commands = [c for s in json.loads((tmp_path / "p.json").read_text())["next_steps"]["steps"] for c in s["commands"]]
    assert shlex.join(["vla-export", "sensitivity", float_onnx, str(bad), "--data", str(tmp_path / "held-out")]) in commands
    budget = next(c for c in commands if "--max-action-error" in c)
    assert f"--calib {calib}" in budget and "--max-action-error 0.05 --min-cosine 0.99" in budget
    assert any(c.endswith(f"{Path(float_onnx).stem}.int8w.onnx --data {tmp_path / 'held-out'}") for c in commands)
    assert any("--fp16" in c for c in commands) and not any("--locate" in c for c in commands)  # it just ran with --locate
    for line in r.stdout.splitlines():
        assert "FLOAT.onnx" not in line and "CALIB.npz" not in line  # the manifest had them all
    assert held_out
    sens = cli(*shlex.split(next(c for c in commands if " sensitivity " in c))[1:])
    assert sens.exit_code == 0, sens
    assert "INT8 sensitivity" in sens.stdout and MIDDLE in sens.stdout.splitlines()[1]  # its worst unit is in the damaged layer
