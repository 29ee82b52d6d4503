"""The policy is the real Kosmos-2/CLIP stack, and its outputs depend on its inputs."""

import numpy as np
import torch

from vla_export.data.source import SyntheticSource
from vla_export.models.config import get_preset


def _inputs(cfg, batch=4, seed=0):
    s = SyntheticSource(cfg, seed=seed, batch=batch).sample(0)
    return {k: torch.from_numpy(v) for k, v in s.items()}


def test_kosmos_features_equal_hf_forward_with_image_mask(tiny_policy):
    """Building the image prefix by concatenation gives exactly what HF's own (scatter) path gives."""
    cfg = tiny_policy.cfg
    x = _inputs(cfg, batch=3)
    frames, ids, mask = x["pixel_values"][:, 0], x["input_ids"], x["attention_mask"]
    n, q, t = 3, cfg.latent_query_num, cfg.tokens
    placeholder = 7  # any non-padding id: HF overwrites these positions with the image features
    prefix = torch.tensor([t.bos, t.image_start] + [placeholder] * q + [t.image_end]).expand(n, -1)
    full_ids = torch.cat([prefix, ids], dim=1)
    image_mask = torch.zeros_like(full_ids)
    image_mask[:, 2 : 2 + q] = 1
    full_mask = torch.cat([torch.ones(n, q + 3, dtype=torch.long), mask], dim=1)
    with torch.no_grad():
        hf = tiny_policy.kosmos_model(
            pixel_values=frames, input_ids=full_ids, image_embeds_position_mask=image_mask, attention_mask=full_mask
        ).last_hidden_state
        ours = tiny_policy.encode_frames(frames, ids, mask)
    last = full_mask.sum(1) - 1
    expected = hf[torch.arange(n), last]
    torch.testing.assert_close(ours[:, : cfg.kosmos_text.embed_dim], expected, rtol=1e-5, atol=1e-5)
    clip = tiny_policy.clip(pixel_values=frames).pooler_output
    torch.testing.assert_close(ours[:, cfg.kosmos_text.embed_dim :], clip)


def test_actions_vary_across_inputs_far_more_than_tolerances(tiny_policy):
    with torch.no_grad():
        actions = tiny_policy(**_inputs(tiny_policy.cfg, batch=8)).numpy()
    spread = actions.std(axis=0)
    assert actions.shape == (8, 3)
    assert np.all(spread > 0.03), spread  # >> the fp32 (1e-4) and fp16 (1e-2-ish) parity tolerances
    assert np.all(np.abs(actions) < 1.0)  # Tanh head


def test_text_and_images_both_matter(tiny_policy):
    x = _inputs(tiny_policy.cfg, batch=2)
    swapped_text = dict(x, input_ids=x["input_ids"].flip(0), attention_mask=x["attention_mask"].flip(0))
    swapped_img = dict(x, pixel_values=x["pixel_values"].flip(0))
    with torch.no_grad():
        base, by_text, by_img = (tiny_policy(**v) for v in (x, swapped_text, swapped_img))
    assert (base - by_text).abs().max() > 1e-3
    assert (base - by_img).abs().max() > 1e-3


def test_single_frame_input_and_features(tiny_policy):
    cfg = tiny_policy.cfg
    x = _inputs(cfg, batch=2)
    one = dict(x, pixel_values=x["pixel_values"][:, 0])
    with torch.no_grad():
        actions, feats = tiny_policy(**one, return_features=True)
        windowed = tiny_policy(**dict(x, pixel_values=x["pixel_values"][:, :1]))
    assert feats.shape == (2, 1, cfg.frame_feature_dim)
    torch.testing.assert_close(actions, windowed)


def test_padding_does_not_change_actions(tiny_policy):
    """Right-padding a prompt (mask 0) leaves the action unchanged."""
    x = _inputs(tiny_policy.cfg, batch=1)
    valid = int(x["attention_mask"].sum())
    short = {k: v for k, v in x.items()}
    short["input_ids"] = x["input_ids"][:, :valid]
    short["attention_mask"] = x["attention_mask"][:, :valid]
    padded = dict(x)
    padded["input_ids"] = torch.cat([short["input_ids"], torch.full((1, 5), tiny_policy.cfg.tokens.pad)], 1)
    padded["attention_mask"] = torch.cat([short["attention_mask"], torch.zeros(1, 5, dtype=torch.long)], 1)
    with torch.no_grad():
        torch.testing.assert_close(tiny_policy(**short), tiny_policy(**padded), rtol=1e-5, atol=1e-5)
