"""Where the time goes: a torch.profiler pass over the compute-only loop of one runner.

Reports the device (kernel) time per inference against the wall time, the number of kernels per
inference, and the top operators. Device time far under wall time means launch overhead or host
work dominates (what CUDA graphs remove); device time near the floor means the kernels are as fast
as the memory allows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from vla_export.backends.base import Runner

ROW_LIMIT = 30


@dataclass
class ProfileSummary:
    iters: int
    device_time_ms_per_iter: float | None
    kernels_per_iter: float | None
    cpu_time_ms_per_iter: float
    table: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["top_ops"] = d.pop("table")
        return d


def profile_runner(runner: Runner, staged: Any, *, iters: int = 5) -> ProfileSummary:
    """Profile ``iters`` compute-only inferences (already warmed up) with torch.profiler."""
    from vla_export.lazy import lazy_import

    profiler = lazy_import("torch.profiler", purpose="--profile")
    cuda = runner.device == "cuda"
    activities = [profiler.ProfilerActivity.CPU] + ([profiler.ProfilerActivity.CUDA] if cuda else [])
    with profiler.profile(activities=activities) as prof:
        for _ in range(iters):
            runner.execute(staged)
            runner.synchronize()
    averages = prof.key_averages()
    device_us = kernels = None
    if cuda:
        kernel_events = [e for e in prof.events() if e.device_type.name == "CUDA"]
        kernels = len(kernel_events) / iters
        device_us = sum(e.device_time for e in kernel_events) / iters
    cpu_us = max((e.cpu_time_total for e in averages), default=0.0) / iters
    table = averages.table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=ROW_LIMIT, max_name_column_width=60)
    return ProfileSummary(iters, device_us / 1e3 if device_us is not None else None, kernels, cpu_us / 1e3, table)
