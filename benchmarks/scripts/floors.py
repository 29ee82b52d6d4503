"""The physical floors the README quotes, computed from the config and the device peaks (no model runs).

Run: .venv/bin/python benchmarks/scripts/floors.py   (prints the table in benchmarks/readme-figures.md)
"""

from vla_export.bench.floor import check_floor, get_peak, policy_cost
from vla_export.models.config import get_preset

cfg = get_preset("mobile-vla")
for peak_name in ("h200", "agx-orin-64gb"):
    peak = get_peak(peak_name)
    for dtype in ("float16", "int8"):
        for window in (1, 8):
            cost = policy_cost(cfg, window=window, dtype=dtype)
            f = check_floor(cost, peak, 1e9, dtype=dtype)
            print(f"| mobile-vla | {peak.name} | {dtype} | {window} | {cost.total_flops / 1e9:.1f} GFLOP | "
                  f"{cost.weight_bytes / 1e6:.1f} MB | {f.floor_ms:.2f} ms |")
