"""Re-packings of a policy's own weights that run the same function with fewer or cheaper GEMMs.

At batch 1 the mobile-vla backbone is ~290 small GEMMs (M = 50 to 257 tokens) that stream the weights
at a fraction of the card's bandwidth (benchmarks/latency-h200.md). Two re-packings, each a
``vla-bench`` torch option:

- :func:`fuse_qkv` (``fuseqkv``): every self-attention's Q, K and V projections as one GEMM over the
  concatenated weights (3 launches -> 1, one pass over the activations). Exact up to GEMM rounding.
  The policy's MLPs are fc1 -> GELU -> fc2 (no gate/up pair to fuse).
- :func:`quantize_linears` (``int8``, ``fp8``): each large ``nn.Linear`` keeps its weights in 8 bits
  (symmetric, one scale per output channel: half the bytes of fp16) and quantises its input per token
  at run time (dynamic scales), then runs an 8-bit GEMM (``torch._int_mm``: cuBLAS int8; or
  ``torch._scaled_mm``: float8 e4m3 with row-wise scales). A weight-only 8-bit GEMM (fp16 activations,
  8-bit weights) would need a mixed-input kernel that torch does not ship for CUDA
  (``_weight_int8pack_mm`` has only a scalar fp32 kernel there), so these are W8A8. Not exact: the
  error is reported against fp32 next to each latency.

Both rewrite modules in place after the cast to the run dtype; the policy's parameter names change
(``qkv`` instead of ``q_proj``/``k_proj``/``v_proj``; ``weight_q``/``weight_scale``), so they are for
running, not for saving.
"""

from __future__ import annotations

from vla_export.choices import Precision
import functools
import sys
from typing import Any

QUANT_KINDS = (Precision.INT8, "fp8")
#: Below this many rows (tokens x batch) a GEMM keeps the dequantised weights: cuBLAS int8 needs M > 16,
#: and the per-frame projection and head (M = batch) are too small to matter.
MIN_ROWS = 17
_QKV = ("q_proj", "k_proj", "v_proj")


@functools.cache
def _classes():
    """Defined lazily (once) so this module imports without torch."""
    import torch
    from torch import nn

    class FusedQKVAttention(nn.Module):
        """A Hugging Face self-attention module (Kosmos-2 vision/text, CLIP) with Q/K/V as one GEMM.

        Keeps the original's output projection, optional inner LayerNorm, scaling and causal flag, and
        calls the same attention function (``config._attn_implementation``: SDPA here) with the same
        arguments. Self-attention only: a call with ``encoder_hidden_states`` is refused. The text model
        passes a KV cache that this policy never reads (one forward per frame, no generation); the fused
        path does not fill it.
        """

        def __init__(self, attn: nn.Module):
            super().__init__()
            q, k, v = (getattr(attn, n) for n in _QKV)
            self.config = attn.config
            self.is_causal = getattr(attn, "is_causal", False)
            self.head_dim = attn.head_dim
            self.scaling = getattr(attn, "scaling", None) or attn.scale
            self.out_proj = attn.out_proj
            self.inner_attn_ln = getattr(attn, "inner_attn_ln", None)
            self.layer_idx = getattr(attn, "layer_idx", None)
            bias = q.bias is not None
            self.qkv = nn.Linear(q.in_features, 3 * q.out_features, bias=bias, device=q.weight.device, dtype=q.weight.dtype)
            with torch.no_grad():
                self.qkv.weight.copy_(torch.cat([q.weight, k.weight, v.weight]))
                if bias:
                    self.qkv.bias.copy_(torch.cat([q.bias, k.bias, v.bias]))
            self.wrapped = type(attn).__name__
            self._attention = _attention_function(self.config, getattr(sys.modules[type(attn).__module__], "eager_attention_forward", None))

        def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, **kwargs):
            if encoder_hidden_states is not None or kwargs.pop("causal_attention_mask", None) is not None:
                raise RuntimeError(f"fuseqkv: {self.wrapped} called as cross-attention or with a causal mask; only plain self-attention is fused")
            for name in ("cache", "past_key_values", "past_key_value"):
                kwargs.pop(name, None)
            kwargs.pop("output_attentions", None)
            shape = hidden_states.shape[:-1]
            qkv = self.qkv(hidden_states).view(*shape, 3, -1, self.head_dim)
            q, k, v = (qkv.select(-3, i).transpose(1, 2) for i in range(3))
            out, weights = self._attention(self, q, k, v, attention_mask, is_causal=self.is_causal, scaling=self.scaling, dropout=0.0, **kwargs)
            out = out.reshape(*shape, -1).contiguous()
            if self.inner_attn_ln is not None:
                out = self.inner_attn_ln(out)
            return self.out_proj(out), weights

    class QuantLinear(nn.Module):
        """``nn.Linear`` with 8-bit weights (per output channel) and inputs quantised per token at run time."""

        def __init__(self, linear: nn.Linear, kind: str):
            super().__init__()
            self.kind, self.in_features, self.out_features = kind, linear.in_features, linear.out_features
            w = linear.weight.detach().float()
            top = 127.0 if kind == Precision.INT8 else 448.0
            scale = w.abs().amax(dim=1).clamp(min=1e-12) / top
            q = w / scale[:, None]
            # float8 kept as its bytes (uint8): a later module.to(dtype) casts floating buffers, not integer ones
            q = q.round().clamp(-127, 127).to(torch.int8) if kind == Precision.INT8 else q.to(torch.float8_e4m3fn).view(torch.uint8)
            self.register_buffer("weight_q", q.contiguous())
            self.register_buffer("weight_scale", scale.reshape(1, -1).contiguous())  # float32 [1, N]
            self.bias = linear.bias
            self.out_dtype = linear.weight.dtype

        def _weight(self):
            return self.weight_q if self.kind == Precision.INT8 else self.weight_q.view(torch.float8_e4m3fn)

        def forward(self, x):
            shape = x.shape[:-1]
            x2 = x.reshape(-1, self.in_features)
            m = int(x2.shape[0])
            if m < MIN_ROWS:
                w = (self._weight().float() * self.weight_scale.t()).to(x.dtype)
                return nn.functional.linear(x, w, self.bias)
            xf = x2.float()
            top = 127.0 if self.kind == Precision.INT8 else 448.0
            sx = xf.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / top  # float32 [M, 1]
            if self.kind == Precision.INT8:
                xq = (xf / sx).round().clamp(-127, 127).to(torch.int8)
                y = torch._int_mm(xq, self._weight().t()).float() * sx * self.weight_scale
            else:
                pad = (-m) % 16  # the float8 GEMM wants M a multiple of 16
                xq = (xf / sx).to(torch.float8_e4m3fn)
                if pad:
                    xq = torch.cat([xq, xq.new_zeros((pad, self.in_features))])
                    sx = torch.cat([sx, sx.new_ones((pad, 1))])
                y = torch._scaled_mm(xq, self._weight().t(), scale_a=sx, scale_b=self.weight_scale, out_dtype=torch.bfloat16)[:m].float()
            if self.bias is not None:
                y = y + self.bias.float()
            return y.to(self.out_dtype).reshape(*shape, self.out_features)

    return FusedQKVAttention, QuantLinear


def _attention_function(config: Any, eager: Any) -> Any:
    """The attention function Hugging Face's module would call (``config._attn_implementation``), resolved once."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    impl = getattr(config, "_attn_implementation", None)
    if impl in (None, "eager"):
        if eager is None:
            raise RuntimeError("fuseqkv: eager attention, but the module's eager_attention_forward was not found")
        return eager
    get = getattr(ALL_ATTENTION_FUNCTIONS, "get_interface", None)
    return get(impl, eager) if get else ALL_ATTENTION_FUNCTIONS[impl]


def _is_self_attention(module: Any) -> bool:
    from torch import nn

    parts = [getattr(module, n, None) for n in _QKV]
    if not all(isinstance(p, nn.Linear) for p in parts) or not isinstance(getattr(module, "out_proj", None), nn.Linear):
        return False
    if len({(p.in_features, p.out_features, p.bias is None) for p in parts}) != 1:
        return False
    return hasattr(module, "config") and hasattr(module, "head_dim") and (hasattr(module, "scaling") or hasattr(module, "scale"))


def fuse_qkv(module: Any, *, skip: tuple[str, ...] = ("image_to_text_projection",)) -> int:
    """Replace every self-attention under ``module`` by :class:`FusedQKVAttention`; returns how many.

    ``skip``: submodule names whose attention is cross-attention (Kosmos-2's image-to-text projection
    attends from its latent queries to the image features), left as they are.
    """
    fused_cls, _ = _classes()
    count = 0
    for name, parent in list(module.named_modules()):
        if any(part in skip for part in name.split(".")):
            continue
        for child_name, child in list(parent.named_children()):
            if child_name in skip or isinstance(child, fused_cls) or not _is_self_attention(child):
                continue
            setattr(parent, child_name, fused_cls(child))
            count += 1
    return count


def quantize_linears(module: Any, kind: str, *, min_features: int = 16) -> int:
    """Replace every ``nn.Linear`` under ``module`` whose sizes are multiples of 16 and at least
    ``min_features`` by :class:`QuantLinear` (``kind``: int8 or fp8); returns how many."""
    from torch import nn

    if kind not in QUANT_KINDS:
        raise ValueError(f"quantisation must be one of {QUANT_KINDS}, got {kind!r}")
    _, quant_cls = _classes()
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if (
                type(child) is nn.Linear
                and child.in_features % 16 == 0
                and child.out_features % 16 == 0
                and min(child.in_features, child.out_features) >= min_features
            ):
                setattr(parent, name, quant_cls(child, kind))
                count += 1
    return count
