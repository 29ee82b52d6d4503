"""TorchRunner: the patch-embedding rewrite computes the same thing, option checks, and (on a GPU) fp16/CUDA-graph parity."""

from __future__ import annotations

import numpy as np
import pytest

from vla_export.backends.torch_runner import TorchRunner, rewrite_patch_convs
from vla_export.data.source import SyntheticSource
from vla_export.errors import RunnerError
from vla_export.models.config import get_preset
from vla_export.models.loader import init_policy


@pytest.fixture(scope="module")
def feed():
    return SyntheticSource(get_preset("tiny"), seed=3, batch=2, window=3).sample(0)


def test_patch_matmul_gives_the_same_outputs(feed):
    with TorchRunner(init_policy(get_preset("tiny")), debug_outputs=True) as r:
        ref = r.infer(feed)
    policy = init_policy(get_preset("tiny"))
    keys = set(policy.state_dict())
    with TorchRunner(policy, debug_outputs=True, patch_matmul=True) as r:
        out = r.infer(feed)
        assert r.name == "torch-cpu-fp32+patchmm" and r.describe()["patch_matmul"] is True
        assert r.config.name == "tiny"
    assert set(policy.state_dict()) == keys  # same parameters under the same names
    np.testing.assert_allclose(out["features"], ref["features"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["actions"], ref["actions"], rtol=1e-5, atol=1e-5)


def test_rewrite_only_touches_non_overlapping_patch_convs():
    from torch import nn

    m = nn.Sequential(nn.Conv2d(3, 4, 8, stride=8), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 2, stride=1))
    assert rewrite_patch_convs(m) == 1
    assert type(m[0]).__name__ == "PatchMatmul" and isinstance(m[1], nn.Conv2d) and isinstance(m[2], nn.Conv2d)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dtype="float64"), "dtype"),
        (dict(cuda_graph=True), "needs device='cuda'"),
        (dict(compile="fastest"), "compile mode"),
        (dict(device="cuda", cuda_graph=True, compile="reduce-overhead"), "already captures CUDA graphs"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(RunnerError, match=match):
        TorchRunner(None, **kwargs)


def test_names_say_what_runs():
    assert TorchRunner(None, device="cuda", dtype="float16", cuda_graph=True, compile="max-autotune-no-cudagraphs").name == (
        "torch-cuda-fp16+compile-max-autotune-no-cudagraphs+cudagraph"
    )
    assert TorchRunner(None, compile=True).name == "torch-cpu-fp32+compile"


@pytest.mark.gpu
def test_fp16_cuda_graph_matches_eager_on_gpu(feed):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    with TorchRunner(init_policy(get_preset("tiny")), device="cuda", dtype="float16") as r:
        eager = r.infer(feed)["actions"]
    with TorchRunner(init_policy(get_preset("tiny")), device="cuda", dtype="float16", cuda_graph=True, patch_matmul=True) as r:
        graph = [r.infer(feed)["actions"] for _ in range(2)]  # capture, then replay
    np.testing.assert_allclose(graph[0], eager, atol=2e-2)
    np.testing.assert_array_equal(graph[0], graph[1])
