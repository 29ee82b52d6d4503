"""Non-finite (NaN or Inf) weights: counted per component, so a diverged training run is named as
such instead of surfacing later as an ONNX Runtime failure or a parity report full of NaN."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from vla_export.errors import CheckpointError
from vla_export.models.components import component_of


def nonfinite_by_component(named: Iterable[tuple[str, Any]]) -> dict[str, int]:
    """Component -> number of NaN/Inf elements among the floating-point tensors of ``named`` (name, tensor)."""
    import torch

    counts: dict[str, int] = {}
    for name, tensor in named:
        if not torch.is_floating_point(tensor) or tensor.device.type == "meta":
            continue
        bad = int(tensor.numel() - torch.isfinite(tensor).sum().item())
        if bad:
            comp = component_of(name)
            counts[comp] = counts.get(comp, 0) + bad
    return counts


def describe_nonfinite(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{comp} {n:,}" for comp, n in counts.items())


def require_finite_weights(policy, what: Any) -> None:
    """Refuse a policy with NaN or Inf weights (or buffers): nothing useful can be exported from it."""
    named = [*policy.named_parameters(), *policy.named_buffers()]
    counts = nonfinite_by_component(named)
    if counts:
        raise CheckpointError(
            f"{what}: {sum(counts.values()):,} non-finite weights (NaN/Inf) in {describe_nonfinite(counts)}; "
            "the checkpoint is broken (a diverged training run?): export refused"
        )
