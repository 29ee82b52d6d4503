"""`small` through TensorRT for RTX's real builder: build time, peak RSS and engine size per graph kind.

    .venv/bin/python benchmarks/trt_rtx_small.py --out /tmp/rtx-small --json benchmarks/results/trt-rtx-small.json

Makes the `small` checkpoint (random weights, seed 0), exports it (whole and split, `vla-export onnx`), quantizes the
whole graph (`quantize --fp16`, `--int8` on synthetic episodes, `--int8-weights`), then builds each graph in its own
process (`vla-export trt`, so each peak RSS is that build's alone: the process's ru_maxrss, read by a wrapper)
and records the manifest's build time, the engine size and the layers by precision. Writes the JSON and prints a
markdown table. The machine, its load and the versions are recorded beside the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
WRAP = ("import resource, runpy, sys; sys.argv = sys.argv[1:]; code = 0\n"
        "try:\n    runpy.run_module('vla_export.cli.main', run_name='__main__')\n"
        "except SystemExit as e:\n    code = e.code or 0\n"
        "print('PEAK_RSS_BYTES', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, file=sys.stderr); sys.exit(code)")


def run(*args: str) -> tuple[float, int, str]:
    """Run `vla-export ARGS` in a fresh process; (wall seconds, peak RSS bytes, stderr)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", WRAP, "vla-export", *args], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"vla-export {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}")
    peak = next(int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_BYTES"))
    return wall, peak, proc.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/rtx-small"))
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/trt-rtx-small.json"))
    a = ap.parse_args()
    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    steps = {}
    ckpt, onnx = out / "small.pt", out / "small.onnx"
    if not ckpt.exists():
        steps["init"] = run("init", "--preset", "small", "-o", str(ckpt), "--seed", "0")[:2]
    if not onnx.exists():
        steps["export"] = run("onnx", str(ckpt), "-o", str(onnx), "--no-ort-check")[:2]
    if not (out / "small.split.json").exists():
        steps["export --split"] = run("onnx", str(ckpt), "--split", "-o", str(onnx))[:2]
    if not (out / "small.fp16.onnx").exists():
        steps["quantize --fp16"] = run("quantize", str(onnx), "--fp16")[:2]
    if not (out / "small.int8w.onnx").exists():
        steps["quantize --int8-weights"] = run("quantize", str(onnx), "--int8-weights")[:2]
    if not (out / "small.int8.onnx").exists():
        run("episodes", "-o", str(out / "episodes"), "--count", "2", "--frames", "8", "--size", "180x320")
        run("calib", str(out / "episodes"), "--onnx", str(onnx), "-o", str(out / "calib.npz"), "--samples", "8")
        steps["quantize --int8"] = run("quantize", str(onnx), "--int8", "--calib", str(out / "calib.npz"))[:2]
    graphs = {"fp32": onnx, "fp16": out / "small.fp16.onnx", "Q/DQ int8": out / "small.int8.onnx",
              "weight-only int8": out / "small.int8w.onnx", "split backbone": out / "small.backbone.onnx",
              "split head": out / "small.head.onnx"}
    rows = []
    for kind, path in graphs.items():
        engine = path.with_suffix(".engine")
        wall, peak, _ = run("trt", str(path), "-o", str(engine))
        m = json.loads(engine.with_name(engine.name + ".json").read_text())
        rows.append({"graph": kind, "onnx": path.name, "onnx_bytes": sum(f.stat().st_size for f in out.glob(path.name + "*") if f.suffix != ".json"),
                     "build_s": m["build_seconds"], "process_wall_s": round(wall, 1), "peak_rss_bytes": peak,
                     "engine_bytes": engine.stat().st_size, "precision": m["onnx"]["precision"],
                     "layers_by_precision": m["layers"]["by_precision"], "gemms_by_precision": m["layers"]["gemm_by_precision"],
                     "warnings": m["build_warnings"]})
        print(f"{kind}: {m['build_seconds']} s, {peak / 2**30:.2f} GB, {engine.stat().st_size / 2**20:.0f} MiB", flush=True)
    record = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "load_average_at_end": os.getloadavg()},
        "versions": m["versions"], "tensorrt": m["tensorrt"], "tensorrt_flavor": m["tensorrt_flavor"],
        "preparation_s_and_peak_rss": {k: [round(v[0], 1), v[1]] for k, v in steps.items()},
        "rows": rows,
    }
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(record, indent=1))
    print("\n| graph | build s | process wall s | peak RSS GB | engine MB | GEMM/conv layers by precision |\n| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        gemms = ", ".join(f"{n} {k}" for k, n in sorted(r["gemms_by_precision"].items(), key=lambda kv: -kv[1]))
        print(f"| {r['graph']} | {r['build_s']:.1f} | {r['process_wall_s']:.1f} | {r['peak_rss_bytes'] / 1e9:.2f} | "
              f"{r['engine_bytes'] / 1e6:.0f} | {gemms} |")


if __name__ == "__main__":
    main()
