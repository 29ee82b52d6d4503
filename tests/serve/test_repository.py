"""`vla-export triton`: the generated repository, its validated configs, atomic publishing and errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed (make install)")

from tests.conftest import assert_one_error  # noqa: E402
from vla_export.errors import ArtifactError  # noqa: E402
from vla_export.artifacts.manifest import build_manifest, write_manifest  # noqa: E402
from vla_export.serve.repository import REPOSITORY_SCHEMA, validate_config  # noqa: E402


def copy_split(tiny_split, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for f in tiny_split.manifest_path.parent.glob("tiny.*"):
        shutil.copy2(f, folder / f.name)
    return folder / "tiny.split.json"


def fake_engine(folder: Path, part: str, gpu=("NVIDIA H100 80GB HBM3", "9.0"), flavor: str | None = None) -> Path:
    """Bytes that are not an engine, with an engine manifest: enough to generate, never to run."""
    engine = folder / f"tiny.{part}.engine"
    engine.write_bytes(b"not a real engine")
    extra = {"tensorrt_flavor": flavor} if flavor else {}
    write_manifest(engine, build_manifest("engine", engine, [engine], tensorrt="1.7.1.116" if flavor == "rtx" else "10.9.0",
                                          gpu={"name": gpu[0], "compute_capability": gpu[1]}, plan={"hardware_compatibility": "none"}, **extra))
    return engine


def test_triton_writes_a_validated_repository(cli, tiny_split, tmp_path):
    repo = tmp_path / "repo"
    r = cli("triton", tiny_split.manifest_path, "-o", repo, "--max-robots", "6", "--max-batch", "4", "--json", tmp_path / "t.json")
    assert r.exit_code == 0, r
    config = validate_config((repo / "tiny" / "config.pbtxt").read_text(), where="test")
    seq = config.sequence_batching
    assert config.backend == "python" and config.max_batch_size == 4
    # Triton's slots: the robots plus room for refused STARTs being closed (the model holds the limit of 6 itself)
    assert seq.oldest.max_candidate_sequences == 6 + 4 and list(seq.oldest.preferred_batch_size) == [4]
    assert {c.name for c in seq.control_input} == {"START", "END", "CORRID"} and seq.max_sequence_idle_microseconds == 30_000_000
    assert [(i.name, list(i.dims)) for i in config.input] == [("FRAME", [-1, -1, 3]), ("INSTRUCTION", [-1]), ("RELEASE", [1])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("ACTION", [3]), ("STEP", [1])]
    version = repo / "tiny" / "1"
    assert {"model.py", "serving.json", "tiny.backbone.onnx", "tiny.head.onnx", "tiny.split.json"} <= {p.name for p in version.iterdir()}
    settings = json.loads((version / "serving.json").read_text())
    assert settings["backend"] == "onnxrt" and settings["text_len"] == 32 and settings["window"] == 4
    assert json.loads((tmp_path / "t.json").read_text())["schema"] == REPOSITORY_SCHEMA
    assert "padded to 32 tokens (the config's max_text_len, assumed" in r.stdout
    r = cli("triton", tiny_split.manifest_path, "-o", repo, "--text-len", "16")
    assert r.exit_code == 0 and "padded to" not in r.stdout
    assert json.loads((version / "serving.json").read_text())["text_len"] == 16
    assert not list(tmp_path.glob(".repo.*"))  # no temporary folder left


@pytest.mark.parametrize("text, problem", [
    ('name: "x" backend: "python" max_batch_size: 1 sequence_batching { oldest { } } bogus: 1', "bogus"),
    ('name: "x" backend: "python" max_batch_size: 1 sequence_batching { control_input [ { name: "CORRID" control [ '
     '{ kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] } ] }', "CONTROL_SEQUENCE_START"),
    ('name: "x" backend: "python" max_batch_size: 1 dynamic_batching { } sequence_batching { }', "another member of oneof"),
    ('name: "x" backend: "python" max_batch_size: 2 input [ { name: "A" data_type: TYPE_NOPE dims: [ 1 ] } ]', "TYPE_NOPE"),
    ('name: "x" max_batch_size: 2', "backend and platform"),
])
def test_validate_config_rejects_broken_configs(text, problem):
    with pytest.raises(ArtifactError, match=problem):
        validate_config(text, where="x/config.pbtxt")


def test_repository_is_replaced_as_a_whole_and_foreign_folders_are_refused(cli, tiny_split, tmp_path):
    repo = tmp_path / "repo"
    assert cli("triton", tiny_split.manifest_path, "-o", repo, "--max-robots", "3").exit_code == 0
    assert cli("triton", tiny_split.manifest_path, "-o", repo, "--max-robots", "5", "--name", "fleet").exit_code == 0
    assert sorted(p.name for p in repo.iterdir()) == ["fleet", "vla-export-repository.json"]
    broken = copy_split(tiny_split, tmp_path / "broken")
    (broken.parent / "tiny.head.onnx").unlink()
    r = cli("triton", broken, "-o", repo)
    assert r.exit_code == 2 and "head part is missing" in r.stderr
    assert "max_candidate_sequences: 13" in (repo / "fleet" / "config.pbtxt").read_text()  # the earlier one (5 + 8) is intact
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    r = cli("triton", tiny_split.manifest_path, "-o", foreign)
    assert r.exit_code == 2 and "not a repository written by" in r.stderr and (foreign / "notes.txt").read_text() == "keep"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_artifacts_without_a_manifest_are_refused(cli, tiny_split, tmp_path):
    whole = tmp_path / "policy.onnx"
    whole.write_bytes(b"x")
    r = cli("triton", whole, "-o", tmp_path / "r1")
    assert r.exit_code == 2 and "split export" in r.stderr
    r = cli("triton", tmp_path / "nothing", "-o", tmp_path / "r2")
    assert r.exit_code == 2 and "split export not found" in r.stderr
    split = copy_split(tiny_split, tmp_path / "nomanifest")
    (split.parent / "tiny.backbone.onnx.json").unlink()
    r = cli("triton", split, "-o", tmp_path / "r3")
    assert r.exit_code == 2 and "manifest not found" in r.stderr
    assert not (tmp_path / "r3").exists()


def test_tensorrt_plan_variant_is_generated_and_validated(cli, tiny_split, tmp_path):
    split = copy_split(tiny_split, tmp_path / "art")
    engine = fake_engine(split.parent, "backbone")
    repo = tmp_path / "repo"
    r = cli("triton", split, "-o", repo, "--backend", "tensorrt_plan", "--backbone", engine, "--max-batch", "16")
    assert r.exit_code == 0, r
    assert "needs TensorRT and an NVIDIA GPU" in r.stdout
    plan = validate_config((repo / "tiny_backbone" / "config.pbtxt").read_text(), where="plan")
    assert plan.platform == "tensorrt_plan" and plan.max_batch_size == 16 and plan.HasField("dynamic_batching")
    assert [i.name for i in plan.input] == ["pixel_values", "input_ids", "attention_mask"]
    assert (repo / "tiny_backbone" / "1" / "model.plan").read_bytes() == b"not a real engine"
    policy = validate_config((repo / "tiny" / "config.pbtxt").read_text(), where="policy")
    assert policy.HasField("sequence_batching") and policy.instance_group[0].kind == policy.instance_group[0].KIND_GPU
    settings = json.loads((repo / "tiny" / "1" / "serving.json").read_text())
    assert settings["backbone_model"] == "tiny_backbone" and "backbone" not in settings["files"]
    r = cli("triton", split, "-o", tmp_path / "r2", "--backend", "tensorrt_plan")
    assert r.exit_code == 2 and "needs TensorRT engines" in r.stderr
    rtx = fake_engine(split.parent, "backbone", flavor="rtx")  # Triton's TensorRT backend is libnvinfer: it cannot load it
    r = cli("triton", split, "-o", tmp_path / "r3", "--backend", "tensorrt_plan", "--backbone", rtx)
    assert_one_error(r, 2, "TensorRT-RTX engine", "--backend trt")


def test_serve_refuses_engines_this_machine_cannot_run(cli, tiny_split, tmp_path, monkeypatch):
    split = copy_split(tiny_split, tmp_path / "art")
    repo = tmp_path / "repo"
    r = cli("triton", split, "-o", repo, "--backend", "trt", "--backbone", fake_engine(split.parent, "backbone"),
            "--head", fake_engine(split.parent, "head"))
    assert r.exit_code == 0, r
    from vla_export import system

    monkeypatch.setattr(system, "gpu_info", lambda device=0: {"name": None, "compute_capability": None})
    r = cli("serve", repo, "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0")
    assert r.exit_code == 3 and "no NVIDIA GPU" in r.stderr
    monkeypatch.setattr(system, "gpu_info", lambda device=0: {"name": "Orin", "compute_capability": "8.7"})
    r = cli("serve", repo, "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0")
    assert r.exit_code == 2 and "built for NVIDIA H100 80GB HBM3 (compute capability 9.0), this GPU is Orin" in r.stderr


def test_serve_refuses_a_folder_not_written_by_triton(cli, tmp_path):
    (tmp_path / "m").mkdir()
    r = cli("serve", tmp_path, "--http-port", "0")
    assert r.exit_code == 2 and "not a repository written by `vla-export triton`" in r.stderr


def test_server_helpers_log_tail_and_library_path(tmp_path):
    """The not-ready message gives the log's error lines; only libpython goes on the library path."""
    import sysconfig

    from vla_export.serve.server import TritonServer, log_tail

    log = tmp_path / "server.log"
    log.write_text("I1 starting\nE1126 model.py] RuntimeError: cuDNN version incompatibility\n" + "".join(f"  frame {i}\n" for i in range(12)))
    tail = log_tail(log)
    assert tail.startswith("E1126 model.py] RuntimeError: cuDNN") and "frame" not in tail
    log.write_text("I1 starting\n" + "".join(f"  frame {i}\n" for i in range(12)))  # no error line: the last lines
    assert log_tail(log).endswith("frame 11") and "frame 2 " not in log_tail(log)
    assert log_tail(tmp_path / "none.log") == "(no log)"
    folder = TritonServer._python_library_dir(tmp_path / "lib")
    entries = list(folder.iterdir())
    assert len(entries) <= 1 and all(e.name.startswith("libpython") and e.is_symlink() for e in entries)
    assert str(folder) != sysconfig.get_config_var("LIBDIR")


def test_cuda_graph_and_compile_options(cli, tiny_ckpt, tiny_split, tmp_path):
    """--cuda-graphs: buckets up to --max-batch, warm-up at load; refused where it cannot apply."""
    from vla_export.errors import ConfigError
    from vla_export.serve.repository import TritonOptions, batch_buckets, write_repository

    assert batch_buckets(64) == (1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64) and batch_buckets(12) == (1, 2, 4, 8, 12)
    assert batch_buckets(1) == (1,) and batch_buckets(3) == (1, 2, 3) and batch_buckets(8) == (1, 2, 4, 8)
    assert batch_buckets(6, step=1) == (1, 2, 3, 4, 5, 6) and batch_buckets(40, step=16) == (1, 2, 4, 8, 16, 32, 40)
    with pytest.raises(ConfigError, match="--bucket-step must be >= 1"):
        write_repository(tiny_ckpt, tmp_path / "bad", TritonOptions(device="cuda", cuda_graphs=True, bucket_step=0))
    repo = write_repository(tiny_ckpt, tmp_path / "r", TritonOptions(max_batch=12, device="cuda", dtype="float16", cuda_graphs=True))
    s = repo.settings
    assert s["warm_up"] == [1, 2, 4, 8, 12] and s["runner"]["batch_buckets"] == [1, 2, 4, 8, 12] and s["runner"]["cuda_graph"] is True
    assert "KIND_GPU" in (repo.path / repo.models[0] / "config.pbtxt").read_text()
    from vla_export.serve.repository import load_seconds, read_repository

    assert load_seconds(read_repository(repo.path)) == 60
    compiled = write_repository(tiny_ckpt, tmp_path / "c", TritonOptions(device="cuda", cuda_graphs=True, compile="default"))
    assert load_seconds(read_repository(compiled.path)) == 900  # `vla-export serve` waits for the compile
    plain = write_repository(tiny_ckpt, tmp_path / "p", TritonOptions())
    assert plain.settings["runner"] == {} and plain.settings["warm_up"] == []
    for options, problem in (
        (TritonOptions(cuda_graphs=True), "needs --device cuda"),
        (TritonOptions(device="cuda", compile="fastest"), "--compile must be one of"),
        (TritonOptions(device="cuda", cuda_graphs=True, compile="reduce-overhead"), "captures its own CUDA graphs"),
    ):
        with pytest.raises(ConfigError, match=problem):
            write_repository(tiny_ckpt, tmp_path / "bad", options)
    with pytest.raises(ConfigError, match="apply to --backend torch"):
        write_repository(tiny_split.manifest_path, tmp_path / "bad", TritonOptions(cuda_graphs=True, device="cuda"))
    assert not (tmp_path / "bad").exists()
    r = cli("triton", tiny_ckpt, "-o", tmp_path / "bad", "--cuda-graphs")
    assert r.exit_code == 2 and "--cuda-graphs needs --device cuda" in r.stderr and not (tmp_path / "bad").exists()


def test_triton_records_and_applies_the_loading_options(cli, tiny_ckpt, tiny_split, tmp_path):
    """--config/--set reach the serving settings, and the model instance loads the checkpoint with them."""
    from vla_export.models.config import get_preset
    from vla_export.serve.fleet import policy_from_serving, read_serving

    repo = tmp_path / "repo"
    r = cli("triton", tiny_ckpt, "-o", repo, "--set", "window=2", "--set", "head_tanh=false")
    assert r.exit_code == 0, r
    version = repo / "tiny" / "1"
    settings = read_serving(version)
    assert settings["load"]["sets"] == [["window", 2], ["head_tanh", False]] and settings["load"]["config"] is None
    assert settings["window"] == 2 and settings["config"]["head_tanh"] is False
    policy = policy_from_serving(version, settings)
    assert policy.window == 2 and policy.config.head_tanh is False and policy.config.window == 2
    settings.pop("load")  # what a server would load without the recorded options: the checkpoint as it is
    plain = policy_from_serving(version, settings).config
    assert plain.window == 4 and plain.head_tanh is True

    config = tmp_path / "cfg.json"
    config.write_text(json.dumps(get_preset("tiny").to_dict() | {"head_tanh": False}))
    r = cli("triton", tiny_ckpt, "-o", repo, "--config", config)
    assert r.exit_code == 0, r
    settings = read_serving(version)
    assert settings["load"]["config_file"] == str(config) and settings["load"]["config"]["head_tanh"] is False
    assert policy_from_serving(version, settings).config.head_tanh is False

    r = cli("triton", tiny_ckpt, "-o", tmp_path / "plain")
    assert r.exit_code == 0 and "load" not in read_serving(tmp_path / "plain" / "tiny" / "1")  # nothing given, nothing recorded


@pytest.mark.parametrize("artifact", ["split", "preset:tiny"])
def test_triton_refuses_loading_options_for_what_is_not_a_checkpoint(cli, tiny_split, tmp_path, artifact):
    target = tiny_split.manifest_path if artifact == "split" else artifact
    assert_one_error(cli("triton", target, "-o", tmp_path / "repo", "--set", "head_tanh=true"), 2, "load a checkpoint")
    assert not (tmp_path / "repo").exists()
