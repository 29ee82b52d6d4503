"""Backend specs and the (artifact, backend) plan."""

from __future__ import annotations

import pytest

from vla_export.bench.targets import BackendSpec, plan_targets
from vla_export.errors import ArtifactError, ConfigError


def test_torch_specs():
    s = BackendSpec.parse("torch:cuda:fp16:compile=max-autotune-no-cudagraphs:cudagraph:patchmm")
    assert (s.kind, s.device, s.dtype, s.compile, s.cuda_graph, s.patch_matmul) == (
        "torch", "cuda", "float16", "max-autotune-no-cudagraphs", True, True,
    )
    assert BackendSpec.parse("torch") == BackendSpec("torch", text="torch")
    assert BackendSpec.parse("torch:fp16:cudagraph").device == "cuda"  # a CUDA graph implies CUDA
    assert BackendSpec.parse("torch:compile").compile == "default"
    s = BackendSpec.parse("torch:cuda:fp16:fuseqkv:int8")
    assert (s.fuse_qkv, s.quantize) == (True, "int8") and BackendSpec.parse("torch:fp8").quantize == "fp8"


def test_runtime_specs():
    assert BackendSpec.parse("onnxrt").provider == "CPUExecutionProvider"
    assert BackendSpec.parse("onnxrt:cuda").provider == "CUDAExecutionProvider"
    assert BackendSpec.parse("onnxrt:trt").provider == "TensorrtExecutionProvider"
    assert BackendSpec.parse("trt").device == "cuda"


@pytest.mark.parametrize("text", ["tensorflow", "torch:fp4", "torch:int8:fp8", "onnxrt:rocm", "trt:fp16", "torch:cudagraphs"])
def test_bad_specs(text):
    with pytest.raises(ConfigError):
        BackendSpec.parse(text)


def test_plan_pairs_each_artifact_with_the_backends_that_run_it(tiny_ckpt, tiny_onnx):
    plan = plan_targets([str(tiny_ckpt), str(tiny_onnx)], ["torch", "torch:bf16", "onnxrt"])
    assert [(t.kind, t.spec.text) for t in plan] == [("checkpoint", "torch"), ("checkpoint", "torch:bf16"), ("onnx", "onnxrt")]
    defaults = plan_targets(["preset:tiny", str(tiny_onnx)], [])
    assert [(t.kind, t.spec.text) for t in defaults] == [("preset", "torch"), ("onnx", "onnxrt")]
    assert defaults[0].config.name == "tiny" and defaults[0].label == "preset:tiny [torch]"


def test_plan_errors(tiny_ckpt, tmp_path):
    with pytest.raises(ConfigError, match="fit none"):
        plan_targets([str(tiny_ckpt)], ["onnxrt"])
    with pytest.raises(ArtifactError, match="not found"):
        plan_targets([str(tmp_path / "missing.pt")], [])
    with pytest.raises(ArtifactError):
        plan_targets([str(tmp_path / "weights.xyz")], [])
    with pytest.raises(ConfigError, match="unknown preset"):
        plan_targets(["preset:huge"], [])
