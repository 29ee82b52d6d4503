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


class _Recorder:
    """A small module that records the batch sizes it is called with; output varies with every input row."""

    def __new__(cls):
        torch = pytest.importorskip("torch")

        class Rec(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Linear(4, 3)
                self.seen: list[int] = []

            def forward(self, x):
                self.seen.append(int(x.shape[0]))
                return self.lin(x) * 10

        return Rec()


def test_batch_buckets_pad_split_and_give_the_unpadded_result():
    from vla_export.backends.torch_runner import ModuleRunner

    module = _Recorder()
    x = np.random.default_rng(0).standard_normal((11, 4)).astype(np.float32)
    with ModuleRunner(module, ["x"], ["y"]) as plain:
        want = plain.infer({"x": x})["y"]
    assert np.abs(want[0] - want[1]).max() > 1.0  # rows differ far beyond the tolerance
    with ModuleRunner(module, ["x"], ["y"], batch_buckets=[4, 1, 2]) as r:
        assert r.batch_buckets == (1, 2, 4)
        module.seen.clear()
        for n, seen in ((3, [4]), (1, [1]), (11, [4, 4, 4]), (9, [4, 4, 1])):
            got = r.infer({"x": x[:n]})["y"]
            assert module.seen == seen, (n, module.seen)
            module.seen.clear()
            assert got.shape == (n, 3)
            np.testing.assert_allclose(got, want[:n], atol=1e-5)
    with pytest.raises(RunnerError, match="buckets must be >= 1"):
        ModuleRunner(module, ["x"], ["y"], batch_buckets=[0, 4])


def test_preprocess_on_a_device_keeps_the_order_of_mixed_frame_sizes():
    """The GPU route of ModuleRunner.preprocess (run here on the CPU): frames grouped by size, order kept."""
    torch = pytest.importorskip("torch")
    from vla_export.backends.torch_runner import ModuleRunner, preprocess_on
    from vla_export.data.preprocess import preprocess_frame

    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, hw + (3,), dtype=np.uint8) for hw in ((224, 224), (480, 640), (224, 224), (60, 80), (480, 640))]
    want = np.stack([preprocess_frame(f, 224) for f in frames])
    got = preprocess_on(frames, 224, device="cpu", dtype="float32")
    assert isinstance(got, torch.Tensor)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5, rtol=0)
    half = preprocess_on(frames[:2], 224, device="cpu", dtype="float16")
    assert half.dtype == torch.float16
    with pytest.raises(Exception, match="uint8"):
        preprocess_on([frames[0].astype(np.float32)], 224, device="cpu")
    # a CPU runner keeps the NumPy route, and its stage takes a tensor as it is
    runner = ModuleRunner(_Recorder(), ["x"], ["y"])
    assert isinstance(runner.preprocess(frames[:1], 224), np.ndarray)
    staged = runner.stage({"x": torch.ones(2, 4)})
    assert staged["x"].shape == (2, 4)


@pytest.mark.gpu
def test_cuda_graph_buckets_and_gpu_preprocessing_on_gpu():
    """On a GPU: one graph per bucket, replays equal eager for every batch size; CUDA preprocessing equals NumPy."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from vla_export.backends.torch_runner import ModuleRunner
    from vla_export.data.preprocess import preprocess_frame

    module = _Recorder()
    x = np.random.default_rng(0).standard_normal((11, 4)).astype(np.float32)
    with ModuleRunner(module, ["x"], ["y"], device="cuda") as plain:
        want = plain.infer({"x": x})["y"]
    with ModuleRunner(module, ["x"], ["y"], device="cuda", cuda_graph=True, batch_buckets=[1, 2, 4, 8]) as r:
        for n in (3, 1, 8, 5, 11, 3):
            np.testing.assert_allclose(r.infer({"x": x[:n]})["y"], want[:n], atol=1e-4)
        assert len(r._graphs) == 3  # buckets 4, 1 and 8 (5 -> 8; 11 -> 8 + 4): each captured once
    frames = [np.random.default_rng(i).integers(0, 256, (480, 640, 3), dtype=np.uint8) for i in range(3)]
    got = r.preprocess(frames, 224)
    assert got.device.type == "cuda"
    np.testing.assert_allclose(got.cpu().numpy(), np.stack([preprocess_frame(f, 224) for f in frames]), atol=1e-4, rtol=0)
