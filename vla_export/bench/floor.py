"""The physical floor: no run of the full policy can be faster than its weights' streaming time or its arithmetic.

For one inference at batch 1 the policy must read every weight it uses at least once and do its
multiply-adds. With the device's memory bandwidth and matrix rate (a table of peaks below), the
floor is ``max(weight_bytes / bandwidth, flops / peak)``. A measured latency under the floor was not
a measurement of the full model: the timing missed asynchronous work, or the graph was partial.

Counts are analytic, from the policy config (the same layout the model code builds): a test checks
the parameter count against the real module. For an ONNX artifact without a config, the weight bytes
come from the graph's initializers and the FLOPs stay unknown (the floor is then bandwidth only).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from vla_export.errors import ArtifactError, ConfigError
from vla_export.models.config import PolicyConfig, VisionConfig

DTYPE_BYTES = MappingProxyType({"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1})


# --- counts ----------------------------------------------------------------------------------------

def _vit_params(v: VisionConfig) -> int:
    d, f = v.hidden_size, v.intermediate_size
    embeddings = d + 3 * v.patch_size**2 * d + (v.num_patches + 1) * d  # class token, patch conv (no bias), positions
    layer = 2 * d + 4 * (d * d + d) + 2 * d + (d * f + f) + (f * d + d)
    return embeddings + 2 * d + v.num_layers * layer + 2 * d  # pre- and post-layernorm


def _vit_flops(v: VisionConfig) -> int:
    d, f, n = v.hidden_size, v.intermediate_size, v.num_patches + 1
    patch = 2 * v.num_patches * 3 * v.patch_size**2 * d
    return patch + v.num_layers * (2 * n * (4 * d * d + 2 * d * f) + 4 * n * n * d)


def _lstm_params(cfg: PolicyConfig) -> int:
    h = cfg.lstm_hidden
    return sum(4 * h * ((cfg.frame_feature_dim if i == 0 else h) + h) + 8 * h for i in range(cfg.lstm_layers))


def _head_widths(cfg: PolicyConfig) -> list[tuple[int, int]]:
    widths = [cfg.lstm_hidden, *cfg.head_hidden, cfg.action_dim]
    return list(zip(widths[:-1], widths[1:]))


@dataclass(frozen=True)
class ModelCost:
    """What one inference must do: FLOPs (2 per multiply-add) and weight bytes read, per component."""

    flops: dict[str, int]
    weight_bytes_by_part: dict[str, int]  # bytes read (of the vocabulary table only the rows used)
    total_params: int | None
    dtype: str
    window: int
    text_tokens: int
    source: str  # "config" or "onnx-initializers"

    @property
    def total_flops(self) -> int | None:
        return sum(self.flops.values()) if self.flops else None

    @property
    def weight_bytes(self) -> int:
        return sum(self.weight_bytes_by_part.values())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"total_flops": self.total_flops, "weight_bytes": self.weight_bytes}


def policy_param_counts(cfg: PolicyConfig) -> dict[str, int]:
    """Parameters per component, as the model code builds them (the vocabulary table included)."""
    v, t, q = cfg.kosmos_vision, cfg.kosmos_text, cfg.latent_query_num
    D, F = t.embed_dim, t.ffn_dim
    text_layer = 4 * (D * D + D) + 2 * D + 2 * D + (D * F + F) + 2 * F + (F * D + D) + 2 * D  # attn, inner-attn LN, LNs, FFN + its LN
    counts = {
        "kosmos_vision": _vit_params(v),
        "kosmos_projection": (v.hidden_size * D + D) + q * D + 4 * (D * D + D),
        "kosmos_text_embeddings": t.vocab_size * D,
        "kosmos_text": t.num_layers * text_layer + 2 * D,
    }
    if cfg.clip_vision:
        counts["clip"] = _vit_params(cfg.clip_vision)
    if cfg.feature_proj:
        raw = D + (cfg.clip_vision.hidden_size if cfg.clip_vision else 0)
        counts["proj"] = raw * cfg.feature_proj + cfg.feature_proj
    counts["lstm"] = _lstm_params(cfg)
    counts["head"] = sum(a * b + b for a, b in _head_widths(cfg))
    return counts


def policy_cost(cfg: PolicyConfig, *, window: int = 1, text_len: int = 16, dtype: str = "float16") -> ModelCost:
    """FLOPs and weight bytes of one inference over ``window`` frames with a ``text_len``-token prompt."""
    if dtype not in DTYPE_BYTES:
        raise ConfigError(f"unknown dtype {dtype!r} for the floor; choose one of {tuple(DTYPE_BYTES)}")
    v, t, q = cfg.kosmos_vision, cfg.kosmos_text, cfg.latent_query_num
    D, F, n = t.embed_dim, t.ffn_dim, v.num_patches + 1
    s = cfg.prefix_len + text_len
    per_frame = {
        "kosmos_vision": _vit_flops(v),
        "kosmos_projection": 2 * n * v.hidden_size * D + 2 * 2 * q * D * D + 2 * 2 * (n + q) * D * D + 4 * q * (n + q) * D,
        "kosmos_text": t.num_layers * (2 * s * (4 * D * D + 2 * D * F) + 4 * s * s * D),
    }
    if cfg.clip_vision:
        per_frame["clip"] = _vit_flops(cfg.clip_vision)
    if cfg.feature_proj:
        raw = D + (cfg.clip_vision.hidden_size if cfg.clip_vision else 0)
        per_frame["proj"] = 2 * raw * cfg.feature_proj
    h = cfg.lstm_hidden
    per_frame["lstm"] = sum(2 * 4 * h * ((cfg.frame_feature_dim if i == 0 else h) + h) for i in range(cfg.lstm_layers))
    flops = {k: val * window for k, val in per_frame.items()}
    flops["head"] = sum(2 * a * b for a, b in _head_widths(cfg))
    params = policy_param_counts(cfg)
    read = dict(params)
    read["kosmos_text_embeddings"] = min(s * window, t.vocab_size) * D  # a gather reads only the rows it uses
    size = DTYPE_BYTES[dtype]
    return ModelCost(flops, {k: n * size for k, n in read.items()}, sum(params.values()), dtype, window, s, "config")


def onnx_weight_bytes(path: str | Path) -> dict[str, int]:
    """Bytes of an ONNX graph's initializers (external data included, without reading it), by element type.

    For an exported graph this is exactly what the runtime must stream, whatever its precision (an
    INT8 Q/DQ graph counts its int8 weights at one byte).
    """
    from vla_export.lazy import lazy_import

    onnx = lazy_import("onnx", purpose="reading an ONNX graph's weights")
    path = Path(path)
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (OSError, ValueError, DecodeError) as exc:
        raise ArtifactError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    sizes: dict[str, int] = {}
    for init in model.graph.initializer:
        count = 1
        for d in init.dims:
            count *= d
        np_dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
        key = f"initializers ({np_dtype.name})"
        sizes[key] = sizes.get(key, 0) + count * np_dtype.itemsize
    return sizes


# --- device peaks ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class DevicePeak:
    """Ceilings of one device: memory bandwidth and dense matrix rates (TFLOP/s or TOPS) per precision."""

    name: str
    bandwidth_gbs: float
    tflops: Mapping[str, float]
    source: str

    def rate(self, dtype: str) -> float | None:
        return self.tflops.get(dtype)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "bandwidth_gbs": self.bandwidth_gbs, "tflops": dict(self.tflops), "source": self.source}


DEVICE_PEAKS: Mapping[str, DevicePeak] = MappingProxyType(
    {
        "h200": DevicePeak(
            "NVIDIA H200 SXM",
            4300.0,
            MappingProxyType({"float16": 790.0, "bfloat16": 790.0, "float32": 67.0, "int8": 1979.0}),
            "copy bandwidth and bf16 matmul measured on the lent H200 (4.3 TB/s, 790 TFLOP/s); fp32 and int8 from the datasheet",
        ),
        "agx-orin-64gb": DevicePeak(
            "Jetson AGX Orin 64GB",
            204.8,
            MappingProxyType({"float16": 42.5, "bfloat16": 42.5, "float32": 5.3, "int8": 85.0}),
            "bandwidth from the datasheet; GPU tensor rates inferred from the datasheet's sparse figures",
        ),
        "orin-nx-16gb": DevicePeak(
            "Jetson Orin NX 16GB",
            102.4,
            MappingProxyType({"float16": 21.3, "bfloat16": 21.3, "float32": 2.7, "int8": 50.0}),
            "bandwidth from the datasheet; rates about half of the AGX (inferred)",
        ),
        "orin-nano-8gb": DevicePeak(
            "Jetson Orin Nano 8GB",
            68.0,
            MappingProxyType({"float16": 10.0, "bfloat16": 10.0, "float32": 1.3, "int8": 20.0}),
            "bandwidth from the datasheet; rates inferred from 40 TOPS sparse INT8",
        ),
        "orin-nano-super": DevicePeak(
            "Jetson Orin Nano 8GB (Super mode)",
            102.0,
            MappingProxyType({"float16": 16.7, "bfloat16": 16.7, "float32": 2.1, "int8": 33.5}),
            "bandwidth from the datasheet; rates inferred from 67 TOPS sparse INT8",
        ),
    }
)


def measure_cpu_peak(seconds: float = 0.5) -> DevicePeak:
    """This CPU's ceilings, measured: a large memory copy (bytes read + written) and an fp32 matmul.

    A measured rate is an achieved one, not a datasheet peak, so the best of several trials is kept.
    """
    import numpy as np

    src = np.ones(64 * 2**20 // 4, dtype=np.float32)  # 64 MiB, well past the caches
    dst = np.empty_like(src)
    a = np.random.default_rng(0).standard_normal((1024, 1024), dtype=np.float32)
    best_bw = best_flops = 0.0
    deadline = time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        np.copyto(dst, src)
        t1 = time.perf_counter()
        a @ a
        t2 = time.perf_counter()
        best_bw = max(best_bw, 2 * src.nbytes / (t1 - t0) / 1e9)
        best_flops = max(best_flops, 2 * 1024**3 / (t2 - t1) / 1e12)
        if t2 > deadline:
            break
    # Achieved rates on a possibly busy machine, not datasheet peaks: doubled, so the floor stays a lower bound.
    bw, flops = 2 * best_bw, 2 * best_flops
    rates = {"float32": flops, "float16": flops, "bfloat16": flops, "int8": 4 * flops}
    return DevicePeak(
        f"this CPU ({os.cpu_count()} logical cores)",
        round(bw, 2),
        MappingProxyType({k: round(v, 4) for k, v in rates.items()}),
        "measured now (best 64 MiB NumPy copy and fp32 1024^3 matmul), times 2 as a margin; fp16 as fp32, int8 4x",
    )


def detect_peak(gpu_name: str | None, jetson_model: str | None) -> str | None:
    """The DEVICE_PEAKS key for the machine the run is on, or None (then the CPU is measured)."""
    if jetson_model:
        m = jetson_model.lower()
        if "agx orin" in m:
            return "agx-orin-64gb"
        if "orin nx" in m:
            return "orin-nx-16gb"
        if "orin nano" in m:
            return "orin-nano-super" if "super" in m else "orin-nano-8gb"
    if gpu_name and "h200" in gpu_name.lower():
        return "h200"
    return None


def get_peak(name: str) -> DevicePeak:
    if name == "cpu":
        return measure_cpu_peak()
    try:
        return DEVICE_PEAKS[name]
    except KeyError:
        raise ConfigError(f"unknown device {name!r} for the floor; choose one of: cpu, {', '.join(DEVICE_PEAKS)}") from None


# --- the check -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FloorCheck:
    """The floor for one result and how the measured time compares with it."""

    device: str
    floor_ms: float
    bandwidth_ms: float
    compute_ms: float | None
    bound: str  # "memory" or "compute"
    measured_ms: float
    below_floor: bool
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.measured_ms / self.floor_ms if self.floor_ms > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"ratio": self.ratio}


def check_floor(cost: ModelCost, peak: DevicePeak, measured_ms: float, *, dtype: str | None = None) -> FloorCheck:
    """Compare ``measured_ms`` with ``max(bytes / bandwidth, flops / peak)`` for ``dtype`` (default the cost's)."""
    dtype = dtype or cost.dtype
    notes = []
    bw_ms = cost.weight_bytes / (peak.bandwidth_gbs * 1e9) * 1e3
    compute_ms = None
    rate = peak.rate(dtype)
    if cost.total_flops is None:
        notes.append("FLOPs unknown (no config for this artifact): bandwidth floor only")
    elif rate is None:
        notes.append(f"no {dtype} rate for {peak.name}: bandwidth floor only")
    else:
        compute_ms = cost.total_flops / (rate * 1e12) * 1e3
    floor = max(bw_ms, compute_ms or 0.0)
    below = measured_ms < floor
    if below:
        notes.append(
            f"{measured_ms:.3g} ms is under the physical floor of {floor:.3g} ms on {peak.name}: "
            "not a measurement of the full model (unsynchronised timing or a partial graph)"
        )
    bound = "compute" if compute_ms is not None and compute_ms > bw_ms else "memory"
    return FloorCheck(peak.name, floor, bw_ms, compute_ms, bound, measured_ms, below, notes)
