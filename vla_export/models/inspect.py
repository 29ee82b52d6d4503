"""``inspect``: what a checkpoint holds and whether it loads strictly as a policy, as a plain dict."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vla_export import schemas
from vla_export.system import peak_rss_bytes
from vla_export.errors import ArchitectureError, ConfigError
from vla_export.models.checkpoint import read_checkpoint, tensor_bytes
from vla_export.models.components import COMPONENTS, OTHER, component_of
from vla_export.models.config import PolicyConfig
from vla_export.models.layouts import map_keys
from vla_export.models.loader import PolicyFromCheckpoint, check_keys
from vla_export.models.resolve import LayoutError, LoadOptions, meta_shapes, resolve_model
from vla_export.models.finite import nonfinite_by_component


def inspect_checkpoint(
    path: str | Path,
    *,
    config: PolicyConfig | None = None,
    renames: Sequence[tuple[str, str]] = (),
    trust: bool = False,
    load: bool = False,
    options: LoadOptions | None = None,
) -> dict[str, Any]:
    """Report sizes per component, metadata, the key layout, the resolved config with the source of
    every value not read from a shape, and the strict-load verdict.

    The verdict compares names and shapes with a meta-device model (no weights are copied). With
    ``load=True`` the policy is also fully loaded and every weight read, and load time and peak RSS
    (with all weights resident) are reported. ``record`` is what ``--save-config`` writes.
    """
    options = options or LoadOptions(config=config, renames=tuple(renames), trust=trust)
    t0 = time.perf_counter()
    ckpt = read_checkpoint(path, trust=options.trust)
    report: dict[str, Any] = {
        "schema": schemas.INSPECT,
        "path": str(ckpt.path),
        "file_size": ckpt.file_size,
        "format": ckpt.file_format,
        "layout": ckpt.layout,
        "metadata": {k: v for k, v in ckpt.metadata.items() if k != "vla_export"},
        "key_layout": None,
        "config": None,
        "config_source": None,
        "matched_preset": None,
        "assumptions": [],
        "warnings": [],
        "summary": None,
        "loadable": False,
        "nonfinite": {},  # component -> NaN/Inf elements
        "load_check": None,
        "reason": None,
    }
    try:
        resolved, sd = resolve_model(ckpt, options)
    except (ArchitectureError, ConfigError) as exc:
        resolved, sd = None, map_keys(ckpt.state_dict, options.renames).state_dict
        report["reason"] = str(exc)
        if isinstance(exc, LayoutError):
            report["diagnosis"] = exc.to_dict()
    report.update(_sizes(sd))
    report["nonfinite"] = nonfinite_by_component(sd.items())
    report["optimizer_state_bytes"] = tensor_bytes(ckpt.optimizer_state)
    if resolved is None:
        return report
    cfg = resolved.config
    report["key_layout"] = resolved.mapping.to_dict()
    report["config"] = cfg.to_dict()
    report["config_source"] = resolved.config_source
    report["matched_preset"] = resolved.matched_preset
    report["assumptions"] = [f.to_dict() for f in resolved.fields]
    report["warnings"] = resolved.warning_lines()
    report["summary"] = resolved.summary_line()
    report["record"] = resolved.record(ckpt)
    shapes = meta_shapes(cfg)
    check = check_keys(shapes, sd)
    report["load_check"] = check.to_dict()
    report["loadable"] = check.ok
    report["policy_params"] = sum(_numel(s) for s in shapes.values())
    report["params_note"] = _params_note(report, resolved)
    if not check.ok:
        report["reason"] = f"strict load failed for config '{cfg.name}': {check.summary()}"
    report["inspect_seconds"] = round(time.perf_counter() - t0, 3)
    if load and check.ok:
        import torch

        t1 = time.perf_counter()
        loaded = PolicyFromCheckpoint(ckpt, options=options)()
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


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _sizes(sd: dict[str, Any]) -> dict[str, Any]:
    params = {c: 0 for c in (*COMPONENTS, OTHER)}
    nbytes = dict(params)
    dtypes: dict[str, int] = {}
    storages: set[tuple[int, int]] = set()
    shared = 0
    for key, tensor in sd.items():
        comp = component_of(key)
        params[comp] += tensor.numel()
        nbytes[comp] += tensor.numel() * tensor.element_size()
        dt = str(tensor.dtype).replace("torch.", "")
        dtypes[dt] = dtypes.get(dt, 0) + tensor.numel()
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset()) if tensor.device.type != "meta" else (id(tensor), 0)
        if ident in storages and tensor.numel():
            shared += tensor.numel()
        storages.add(ident)
    return {
        "total_params": sum(params.values()),
        "total_bytes": sum(nbytes.values()),
        "tied_params": shared,  # elements of tensors that share storage with another (stored once in the file)
        "components": {k: v for k, v in params.items() if v or k != OTHER},
        "component_bytes": {k: v for k, v in nbytes.items() if v or k != OTHER},
        "dtypes": dtypes,
    }


def _params_note(report: dict[str, Any], resolved) -> str:
    """One line reconciling the file's count with the policy's (and so with the export's tables)."""
    parts = [f"{report['total_params']:,} parameters in the file's policy tensors"]
    dropped = resolved.mapping.dropped
    if dropped:
        parts.append("not counted: " + ", ".join(f"{d['prefix']}* {d['parameters']:,} ({d['reason']})" for d in dropped))
    if report["tied_params"]:
        parts.append(f"{report['tied_params']:,} of them in tensors sharing storage with another (tied; stored once)")
    same = report["policy_params"] == report["total_params"]
    parts.append(f"the policy has {report['policy_params']:,}" + (" (the same)" if same else " (differs: see the load check)"))
    return "; ".join(parts)
