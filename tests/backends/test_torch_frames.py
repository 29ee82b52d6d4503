"""Frames and feature windows on a torch device: the same numbers as the NumPy path (here on the CPU, and
on a GPU with ``-m gpu``), buffers reused without stale data, windows with the ring's warm-up rule."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from vla_export.data.preprocess import preprocess_frame
from vla_export.runtime.policy import FeatureRing

torch = pytest.importorskip("torch")

from vla_export.backends.torch_frames import DeviceWindows, FrameStaging  # noqa: E402


def _frames(seed, shapes):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, hw + (3,), dtype=np.uint8) for hw in shapes]


def test_staging_equals_numpy_and_reuses_its_buffers_without_stale_frames():
    staging = FrameStaging("cpu", "float32")
    shapes = ((224, 224), (720, 1280), (224, 224), (60, 80))
    for seed in (1, 2):  # the second call refills the same buffers: the results must follow the new frames
        frames = _frames(seed, shapes)
        want = np.stack([preprocess_frame(f, 224) for f in frames])
        got = staging(frames, 224).numpy()
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    first = staging(_frames(1, shapes[:1]), 224).numpy()
    assert np.abs(first - want[:1]).max() > 1.0  # seed 1's frame, not seed 2's left in the buffer
    grown = _frames(3, [(224, 224)] * 5)  # more frames of one size than before: the buffer grows
    np.testing.assert_allclose(staging(grown, 224).numpy(), np.stack([preprocess_frame(f, 224) for f in grown]), atol=1e-5, rtol=0)
    assert staging(grown[:2], 224).dtype == torch.float32
    with pytest.raises(Exception, match="uint8"):
        staging([grown[0].astype(np.float32)], 224)


def _ring_windows(features, pushes, window):
    rings = {}
    out = []
    for robots, fresh in pushes:
        step = []
        for r in robots:
            if r in fresh or r not in rings:
                rings[r] = FeatureRing(window)
            rings[r].push(features[len(out), r])
            step.append(rings[r].array())
        out.append(np.stack(step))
    return out


class _Robot:  # stands for a Policy: DeviceWindows keys on identity
    pass


@pytest.mark.parametrize("window", [1, 3])
def test_device_windows_follow_the_ring_rule(window):
    rng = np.random.default_rng(window)
    robots = [_Robot() for _ in range(11)]  # more than the first 8 slots: the table grows
    pushes = [(list(range(11)), set()), ([1, 4, 9], set()), ([0, 1, 2, 10], {1}), (list(range(11)), set()), ([3, 1], set())]
    features = rng.standard_normal((len(pushes), 11, 5)).astype(np.float32)
    want = _ring_windows(features, pushes, window)
    store = DeviceWindows(window, device="cpu")
    for k, (ids, fresh) in enumerate(pushes):
        for r in fresh:
            store.forget(robots[r])
        got = store.push([robots[r] for r in ids], torch.from_numpy(features[k, ids])).numpy()
        np.testing.assert_array_equal(got, want[k])
    assert store.robots == 11
    if window > 1:  # the order matters: a reversed window is far from the ring's
        assert np.abs(want[3][:, ::-1] - want[3]).max() > 0.5
    del robots[5]
    gc.collect()
    assert store.robots == 10  # a dropped policy frees its slot
    with pytest.raises(ValueError, match="twice"):
        store.push([robots[0], robots[0]], torch.zeros(2, 5))


def _tiny_policies(windows):
    from vla_export.data.tokenizer import BuiltinTokenizer
    from vla_export.models.config import get_preset
    from vla_export.models.loader import init_policy
    from vla_export.runtime.parts import torch_streaming_policy
    from vla_export.runtime.policy import Policy

    cfg = get_preset("tiny")
    ref = torch_streaming_policy(init_policy(cfg, seed=0), tokenizer=BuiltinTokenizer(cfg), window=3, text_len=16)
    ref.activate()
    dev = Policy(ref.backbone, ref.head, tokenizer=ref.tokenizer, window=3, image_size=cfg.image_size, action_dim=cfg.action_dim,
                 text_len=16, config=cfg, windows=windows)
    return ref, dev


class _Reversed(DeviceWindows):
    """A broken store: the newest feature first."""

    def push(self, policies, features):
        return super().push(policies, features).flip(1)


@pytest.mark.parametrize("broken", [False, True])
def test_policies_with_device_windows_step_as_the_numpy_ring(broken):
    from vla_export.runtime.batch import step_batch

    ref, dev = _tiny_policies((_Reversed if broken else DeviceWindows)(3, device="cpu"))
    try:
        frames = np.random.default_rng(0).integers(0, 256, (5, 4, 64, 80, 3), dtype=np.uint8)
        a_pols, b_pols = [ref.sibling() for _ in range(4)], [dev.sibling() for _ in range(4)]
        for p in a_pols + b_pols:
            p.reset("go to the cup")
        worst, spread = 0.0, 0.0
        for k in range(5):
            idx = [0, 1, 2, 3] if k % 2 == 0 else [1, 3]
            a = np.array(step_batch([a_pols[i] for i in idx], [frames[k, i] for i in idx]))
            b = np.array(step_batch([b_pols[i] for i in idx], [frames[k, i] for i in idx]))
            worst, spread = max(worst, float(np.abs(a - b).max())), max(spread, float(np.abs(a - a[::-1]).max()))
        b_pols[1].reset("go left")
        a_pols[1].reset("go left")
        single = float(np.abs(a_pols[1].step(frames[0, 0]) - b_pols[1].step(frames[0, 0])).max())
        assert spread > 1e-3  # robots' actions differ far beyond the tolerance below
        if broken:
            assert worst > 1e-4
        else:
            assert worst <= 1e-6 and single <= 1e-6
            assert b_pols[0].last_timing is not None and b_pols[0].steps == 3
    finally:
        ref.close()


@pytest.mark.gpu
def test_staging_and_windows_on_gpu():
    """On a GPU: pinned host buffers, the preprocessing equals NumPy (camera and served frame sizes, fp16 too),
    and a policy with device windows steps as the NumPy ring does on the CPU."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    staging = FrameStaging("cuda", "float32")
    runs = ((0, [(720, 1280)]), (1, [(224, 224)] * 3 + [(480, 640)]), (2, [(720, 1280)]), (3, [(224, 224)] * 2), (4, [(224, 224)] * 2))
    for seed, shapes in runs:  # one size per call: a captured graph, replayed on new frames; mixed sizes: eager
        frames = _frames(seed, shapes)
        got = staging(frames, 224)
        assert got.device.type == "cuda"
        np.testing.assert_allclose(got.cpu().numpy(), np.stack([preprocess_frame(f, 224) for f in frames]), atol=1e-4, rtol=0)
    assert all(b.host.is_pinned() for b in staging._buffers.values())
    assert sorted(staging._graphed) == [(1, 720, 1280, 224), (2, 224, 224, 224)]
    half = FrameStaging("cuda", "float16")(_frames(3, [(720, 1280)]), 224)
    assert half.dtype == torch.float16

    from vla_export.data.tokenizer import BuiltinTokenizer
    from vla_export.models.config import get_preset
    from vla_export.models.loader import init_policy
    from vla_export.runtime.batch import step_batch
    from vla_export.runtime.parts import torch_streaming_policy
    from vla_export.runtime.policy import Policy

    cfg = get_preset("tiny")
    frames = np.random.default_rng(5).integers(0, 256, (4, 3, 224, 224, 3), dtype=np.uint8)
    with torch_streaming_policy(init_policy(cfg, seed=0), tokenizer=BuiltinTokenizer(cfg), window=3, text_len=16, device="cuda",
                                cuda_graph=True, batch_buckets=[1, 2, 4]) as template:
        assert template.windows is not None
        ring = Policy(template.backbone, template.head, tokenizer=template.tokenizer, window=3, image_size=cfg.image_size,
                      action_dim=cfg.action_dim, text_len=16, config=cfg)  # same runners, the NumPy ring
        results = []
        for source in (template, ring):
            pols = [source.sibling() for _ in range(3)]
            for p in pols:
                p.reset("go to the cup")
            results.append(np.array([step_batch(pols, list(frames[k])) for k in range(4)]))
    np.testing.assert_allclose(results[0], results[1], atol=1e-5, rtol=0)
    assert np.abs(results[1][:, 0] - results[1][:, 2]).max() > 1e-4  # robots differ by more than 10x the tolerance
