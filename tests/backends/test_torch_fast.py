"""Weight re-packings (fused Q/K/V, 8-bit linears): the same function as the policy they rewrite, within
their tolerance, and each check fails on a deliberately broken re-packing."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from vla_export.backends.torch_fast import fuse_qkv, quantize_linears  # noqa: E402
from vla_export.backends.torch_runner import TorchRunner  # noqa: E402
from vla_export.data.source import SyntheticSource  # noqa: E402
from vla_export.errors import RunnerError  # noqa: E402
from vla_export.models.config import get_preset  # noqa: E402
from vla_export.models.loader import init_policy  # noqa: E402


@pytest.fixture(scope="module")
def feeds():
    src = SyntheticSource(get_preset("tiny"), seed=3, batch=2, window=2)
    return [src.sample(i) for i in range(2)]


@pytest.fixture(scope="module")
def reference(feeds):
    with TorchRunner(init_policy(get_preset("tiny"), seed=0), debug_outputs=True) as r:
        return [r.infer(f) for f in feeds]


def _outputs(feeds, **opts):
    with TorchRunner(init_policy(get_preset("tiny"), seed=0), debug_outputs=True, **opts) as r:
        return [r.infer(f) for f in feeds], r


def _rel(a, b):
    return max(float(np.linalg.norm(x["features"] - y["features"]) / np.linalg.norm(y["features"])) for x, y in zip(a, b))


def test_reference_features_vary_beyond_the_bounds(reference):
    """Two inputs' features differ by more than every bound below (the random tiny policy: ~6.5%)."""
    f = reference[0]["features"].reshape(-1, reference[0]["features"].shape[-1])
    assert float(np.linalg.norm(f[0] - f[1]) / np.linalg.norm(f[1])) > 1.5 * 0.035


def test_fused_qkv_is_the_same_function(feeds, reference):
    out, runner = _outputs(feeds, fuse_qkv=True)
    assert runner.name == "torch-cpu-fp32+fuseqkv" and runner.rewrites == {"fused_qkv": 5}  # 2 + 2 + 1 self-attentions
    assert _rel(out, reference) < 1e-5
    # broken: K and V swapped in one layer's fused weight
    policy = init_policy(get_preset("tiny"), seed=0)
    assert fuse_qkv(policy) == 5
    attn = policy.kosmos_model.text_model.model.layers[0].self_attn
    d = attn.qkv.out_features // 3
    with torch.no_grad():
        w = attn.qkv.weight
        w[d:2 * d], w[2 * d:] = w[2 * d:].clone(), w[d:2 * d].clone()
    with TorchRunner(policy, debug_outputs=True) as r:
        broken = [r.infer(f) for f in feeds]
    assert _rel(broken, reference) > 1e-3
    assert type(policy.kosmos_model.image_to_text_projection.x_attn).__name__ != "FusedQKVAttention"  # cross-attention kept


def test_fused_attention_refuses_cross_attention():
    policy = init_policy(get_preset("tiny"), seed=0)
    fuse_qkv(policy)
    attn = policy.kosmos_model.text_model.model.layers[0].self_attn
    x = torch.zeros(1, 3, attn.qkv.in_features)
    with pytest.raises(RuntimeError, match="cross-attention"):
        attn(x, encoder_hidden_states=x)
    with pytest.raises(RunnerError, match="no self-attention"):
        with TorchRunner(torch.nn.Sequential(torch.nn.Linear(4, 4)), fuse_qkv=True):
            pass


@pytest.mark.parametrize("kind, bound", [("int8", 0.015), ("fp8", 0.035)])
def test_8bit_linears_stay_within_their_bound_and_a_bad_scale_does_not(feeds, reference, kind, bound):
    out, runner = _outputs(feeds, quantize=kind)
    assert runner.rewrites[f"{kind}_linears"] > 30 and runner.name == f"torch-cpu-fp32+{kind}"
    rel = _rel(out, reference)
    assert 0 < rel < bound
    # broken: one layer's weight scale off by 1.5x
    policy = init_policy(get_preset("tiny"), seed=0).eval()
    quantize_linears(policy, kind)
    with torch.no_grad():
        policy.kosmos_model.text_model.model.layers[1].ffn.fc2.weight_scale.mul_(1.5)
    with TorchRunner(policy, debug_outputs=True) as r:
        broken = [r.infer(f) for f in feeds]
    assert _rel(broken, reference) > bound


def test_quantize_option_checks():
    with pytest.raises(RunnerError, match="quantize"):
        TorchRunner(None, quantize="int4")
    with pytest.raises(ValueError, match="quantisation"):
        quantize_linears(torch.nn.Linear(16, 16), "int4")


@pytest.mark.gpu
@pytest.mark.parametrize("opts, bound", [(dict(fuse_qkv=True), 1e-2), (dict(fuse_qkv=True, quantize="int8"), 3e-2), (dict(fuse_qkv=True, quantize="fp8"), 5e-2)])
def test_repackings_on_gpu_fp16_with_cuda_graphs(feeds, reference, opts, bound):
    """On a GPU, in fp16 with CUDA-graph replay and patch matmul: within the bound of float32 on the CPU."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    with TorchRunner(init_policy(get_preset("tiny"), seed=0), debug_outputs=True, device="cuda", dtype="float16", cuda_graph=True,
                     patch_matmul=True, **opts) as r:
        out = [r.infer(f) for f in feeds]
        again = r.infer(feeds[0])
    assert _rel(out, reference) < bound
    np.testing.assert_array_equal(again["features"], out[0]["features"])  # replays are deterministic
