"""`vla-export inspect` on every artifact kind: ONNX (fp32, INT8 Q/DQ), engine, split record, calibration set, episode."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from vla_export.data.calibration import make_calibration_set
from vla_export.data.episodes import write_synthetic_episodes
from vla_export.artifacts.manifest import build_manifest, write_manifest
from vla_export.fileio import sha256_file
from vla_export.models.config import get_preset

SCHEMA = "vla-export/inspect/1"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    episodes = write_synthetic_episodes(root / "episodes", 2, seed=0, frames=8, frame_hw=(48, 64))
    calib = make_calibration_set(root / "episodes", get_preset("tiny"), root / "calib.npz", count=3)
    return root, episodes, calib


def _json(cli, path, out):
    r = cli("inspect", path, "--json", out)
    assert r.exit_code == 0, r
    report = json.loads(out.read_text())
    assert report["schema"] == SCHEMA
    return r, report


def test_onnx_report_and_manifest_check(cli, tiny_onnx, tmp_path):
    r, rep = _json(cli, tiny_onnx, tmp_path / "r.json")
    assert rep["kind"] == "onnx" and rep["opset"]["ai.onnx"] == 18
    assert [i["name"] for i in rep["inputs"]] == ["pixel_values", "input_ids", "attention_mask"]
    assert rep["outputs"][0] == {"name": "actions", "shape": ["batch", 3], "dtype": "float32"}
    assert rep["precision"]["label"] == "fp32" and rep["precision"]["quantized_nodes"] == 0
    assert rep["ops"]["MatMul"] > 0 and rep["module_scopes"] is True
    # every weight tensor is attributed to a component (renamed, constant-folded ones through their consumer)
    assert rep["component_elements"]["kosmos_text"] > 0 and rep["component_elements"].get("other", 0) < 100
    assert rep["manifest_check"]["matches"] is True and rep["manifest_summary"]["config"] == "tiny"
    assert "the files match the manifest" in r.stdout
    # a file changed after export no longer matches its manifest
    import onnx

    model = onnx.load(tiny_onnx)
    model.doc_string = "edited after export"
    onnx.save(model, tmp_path / "tiny.onnx")
    shutil.copy(tiny_onnx.with_name("tiny.onnx.json"), tmp_path / "tiny.onnx.json")
    r, rep = _json(cli, tmp_path / "tiny.onnx", tmp_path / "t.json")
    assert rep["manifest_check"]["matches"] is False and "bytes" in rep["manifest_check"]["problems"][0]
    assert "do NOT match" in r.stdout


def test_int8_onnx_counts_quantized_and_kept_nodes(cli, tiny_onnx, data, tmp_path):
    from vla_export.export.quantize import quantize_int8

    int8 = quantize_int8(tiny_onnx, data[2], tmp_path / "tiny.int8.onnx")
    r, rep = _json(cli, int8.output, tmp_path / "r.json")
    p = rep["precision"]
    assert p["label"] == "int8 (Q/DQ)" and p["qdq_nodes"]["QuantizeLinear"] > 10
    assert 0 < p["quantized_nodes"] < p["quantizable_nodes"]  # attention matmuls and the head are kept out of INT8
    assert p["kept_higher_precision_nodes"] == p["quantizable_nodes"] - p["quantized_nodes"] and p["kept_higher_precision"]
    assert rep["manifest_summary"]["precision"] == "int8" and "kept_fp32" in rep["manifest_summary"]["quantization"]
    assert "kept in higher precision" in r.stdout


def test_engine_report_without_tensorrt(cli, tiny_onnx, tmp_path):
    engine = tmp_path / "tiny.engine"
    engine.write_bytes(b"not really an engine")
    write_manifest(engine, build_manifest("engine", engine, [engine], tensorrt="10.3.0", precision="fp16",
                                          onnx={"path": str(tiny_onnx), "sha256": sha256_file(tiny_onnx)}, profiles={}))
    r, rep = _json(cli, engine, tmp_path / "r.json")
    assert rep["kind"] == "engine" and rep["manifest_summary"]["tensorrt"] == "10.3.0"
    assert rep["source_onnx"]["matches_recorded_sha256"] is True
    assert [i["name"] for i in rep["io_from_onnx"]["inputs"]] == ["pixel_values", "input_ids", "attention_mask"]
    if not rep["tensorrt"]["available"]:
        assert "tensorrt" in rep["tensorrt"]["note"] and "unverified" in rep["verified"]
    engine.write_bytes(b"truncated")
    _, rep = _json(cli, engine, tmp_path / "r2.json")
    assert rep["manifest_check"]["matches"] is False


def test_split_calibration_and_episode(cli, tiny_split, data, tmp_path):
    _, rep = _json(cli, tiny_split.manifest_path, tmp_path / "s.json")
    assert rep["kind"] == "split" and set(rep["parts"]) == {"backbone", "head"}
    assert all(p["exists"] and p["manifest_check"]["matches"] for p in rep["parts"].values())
    assert rep["parameters"]["policy"] == rep["parameters"]["sum_of_parts"]
    _, rep = _json(cli, data[2].path, tmp_path / "c.json")
    assert rep["kind"] == "calibration" and rep["samples"] == 3 and rep["inputs"]["pixel_values"]["dtype"] == "float32"
    _, rep = _json(cli, data[1][0], tmp_path / "e.json")
    assert rep["kind"] == "episode" and rep["num_frames"] == 8 and rep["actions"]["shape"] == [8, 3]


def test_unknown_and_foreign_files_are_one_line(cli, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    r = cli("inspect", tmp_path / "notes.txt")
    assert r.exit_code == 2 and r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1, r
    assert "unknown artifact type '.txt'" in r.stderr
    (tmp_path / "x.npz").write_bytes(b"garbage")
    r = cli("inspect", tmp_path / "x.npz")
    assert r.exit_code == 2 and "calibration" in r.stderr, r
    r = cli("inspect", tmp_path / "x.npz", "--load")
    assert r.exit_code == 2 and "checkpoints only" in r.stderr, r


def test_inspect_without_torch(tiny_onnx, tiny_split, data):
    """On a Jetson there is no torch: every non-checkpoint kind is inspected with torch unimportable."""
    code = textwrap.dedent(
        f"""
        import sys

        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")

        sys.meta_path.insert(0, _Block())
        from vla_export.artifacts.inspect import inspect_artifact
        for path in {[str(tiny_onnx), str(tiny_split.manifest_path), str(data[2].path), str(data[1][0])]!r}:
            print(inspect_artifact(path)["kind"])
        from vla_export.cli.main import app, run_app  # the command too, not only the API
        assert run_app(app, ["inspect", {str(tiny_onnx)!r}]) == 0
        assert "torch" not in sys.modules
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:4] == ["onnx", "split", "calibration", "episode"]


class _FakeTrt:
    """The slice of the TensorRT 10 API that engine inspection uses (the real one is not installable here)."""

    __version__ = "10.3.0"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class LayerInformationFormat:
        JSON = "json"

    class _Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ["pixel_values", "actions"][i]

        def get_tensor_mode(self, name):
            return "TensorIOMode.INPUT" if name == "pixel_values" else "TensorIOMode.OUTPUT"

        def get_tensor_shape(self, name):
            return [1, 4, 3, 224, 224] if name == "pixel_values" else [1, 3]

        def get_tensor_dtype(self, name):
            return "DataType.FLOAT"

        def create_engine_inspector(self):
            class Inspector:
                def get_engine_information(self, fmt):
                    assert fmt == "json"
                    return json.dumps({"Layers": [{"Name": "fc1", "LayerType": "Gemm", "Precision": "HALF"}], "Bindings": []})

            return Inspector()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return _FakeTrt._Engine() if data.startswith(b"engine") else None


def test_engine_layers_through_the_tensorrt_api(cli, tmp_path, monkeypatch):
    """The IEngineInspector path against a stand-in module: unverified against real TensorRT."""
    monkeypatch.setitem(sys.modules, "tensorrt", _FakeTrt)
    engine = tmp_path / "t.engine"
    engine.write_bytes(b"engine bytes")
    _, rep = _json(cli, engine, tmp_path / "r.json")
    t = rep["tensorrt"]
    assert t["available"] and t["num_layers"] == 1 and t["layers"][0]["Precision"] == "HALF"
    assert t["io"] == [{"name": "pixel_values", "mode": "INPUT", "shape": [1, 4, 3, 224, 224], "dtype": "FLOAT"},
                       {"name": "actions", "mode": "OUTPUT", "shape": [1, 3], "dtype": "FLOAT"}]
    engine.write_bytes(b"garbage")
    r = cli("inspect", engine)
    assert r.exit_code == 2 and "cannot deserialize" in r.stderr, r
