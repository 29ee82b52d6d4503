"""``inspect``: what a checkpoint holds and whether it loads strictly as a policy, as a plain dict."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vla_export.bench.env import peak_rss_bytes
from vla_export.errors import ArchitectureError
from vla_export.models.checkpoint import normalize_keys, read_checkpoint, tensor_bytes
from vla_export.models.components import COMPONENTS, OTHER, component_of
from vla_export.models.config import PolicyConfig
from vla_export.models.finite import nonfinite_by_component
from vla_export.models.loader import check_keys, load_policy, model_shapes, resolve_config


def inspect_checkpoint(
    path: str | Path,
    *,
    config: PolicyConfig | None = None,
    renames: Sequence[tuple[str, str]] = (),
    trust: bool = False,
    load: bool = False,
) -> dict[str, Any]:
    """Report sizes per component, metadata, the inferred config and the strict-load verdict.

    The verdict compares names and shapes with a meta-device model (no weights are copied). With
    ``load=True`` the policy is also fully loaded and every weight read, and load time and peak RSS
    (with all weights resident) are reported.
    """
    t0 = time.perf_counter()
    ckpt = read_checkpoint(path, trust=trust)
    sd = normalize_keys(ckpt.state_dict, renames)
    params = {c: 0 for c in (*COMPONENTS, OTHER)}
    nbytes = dict(params)
    dtypes: dict[str, int] = {}
    for key, tensor in sd.items():
        comp = component_of(key)
        params[comp] += tensor.numel()
        nbytes[comp] += tensor.numel() * tensor.element_size()
        dt = str(tensor.dtype).replace("torch.", "")
        dtypes[dt] = dtypes.get(dt, 0) + tensor.numel()
    report: dict[str, Any] = {
        "path": str(ckpt.path),
        "file_size": ckpt.file_size,
        "format": ckpt.file_format,
        "layout": ckpt.layout,
        "metadata": ckpt.metadata,
        "total_params": sum(params.values()),
        "total_bytes": sum(nbytes.values()),
        "components": {k: v for k, v in params.items() if v or k != OTHER},
        "component_bytes": {k: v for k, v in nbytes.items() if v or k != OTHER},
        "dtypes": dtypes,
        "optimizer_state_bytes": tensor_bytes(ckpt.optimizer_state),
        "config": None,
        "matched_preset": None,
        "assumptions": [],
        "loadable": False,
        "nonfinite": nonfinite_by_component(sd.items()),  # component -> NaN/Inf elements
        "load_check": None,
        "reason": None,
    }
    try:
        cfg, inferred = resolve_config(sd, config)
    except ArchitectureError as exc:
        report["reason"] = str(exc)
        return report
    report["config"] = cfg.to_dict()
    report["config_source"] = "--config" if config is not None else "inferred from tensor shapes"
    if inferred is not None:
        report["matched_preset"] = inferred.matched_preset
        report["assumptions"] = inferred.assumptions
    check = check_keys(model_shapes(cfg), sd)
    report["load_check"] = check.to_dict()
    report["loadable"] = check.ok
    if not check.ok:
        report["reason"] = f"strict load failed for config '{cfg.name}': {check.summary()}"
    report["inspect_seconds"] = round(time.perf_counter() - t0, 3)
    if load and check.ok:
        import torch

        t1 = time.perf_counter()
        loaded = load_policy(ckpt, config=cfg, renames=renames)
        # Memory-mapped weights cost nothing until read: read every one so the peak RSS is honest.
        checksum = float(sum(p.detach().sum(dtype=torch.float64) for p in loaded.policy.parameters()))
        report["load"] = {
            "seconds": round(time.perf_counter() - t1 + report["inspect_seconds"], 3),
            "peak_rss_bytes": peak_rss_bytes(),
            "weights_bytes": report["total_bytes"],
            "params_loaded": sum(p.numel() for p in loaded.policy.parameters()),
            "weights_checksum": checksum,
        }
    return report
