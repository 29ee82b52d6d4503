"""Full-size ``mobile-vla`` through quantize and TensorRT-RTX, step by step, on a machine with room for it.

Steps (each writes OUT/STEP.json and OUT/STEP.log): ``export`` (init --preset mobile-vla, random weights; onnx
export; fp32 build), ``fp16`` and ``int8w`` (quantize, build), ``int8`` (synthetic episodes, a small
calibration set, W8A8 quantize, build). Every command runs in a child process timed with its peak RSS
(os.wait4). Builds use benchmarks/trt_rtx_build.py. A step whose estimated time does not fit before
``--deadline`` seconds is recorded as skipped, so partial results survive a time limit.

usage: python rtx_mobile_vla.py WORK OUT --deadline S [--tokenizer DIR] [--samples N] STEP...
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

HERE = Path(__file__).resolve().parent
BUILD = HERE.parent / "trt_rtx_build.py"
#: Rough seconds per step on a 16-core machine, to skip what cannot finish before the deadline.
ESTIMATE = {"export": 330, "fp16": 150, "int8w": 150, "int8": 420}


def run(cmd: list[str], log, cwd: Path) -> dict:
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    print(f"$ {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
    _, status, usage = os.wait4(proc.pid, 0)
    rc = os.waitstatus_to_exitcode(status)
    rec = {"command": " ".join(cmd), "rc": rc, "seconds": round(time.perf_counter() - start, 1), "peak_rss_gb": round(usage.ru_maxrss / 1e6, 2)}
    log.write(f"-> {json.dumps(rec)}\n")
    log.flush()
    print(f"-> {json.dumps(rec)}", flush=True)
    return rec


def environment() -> dict:
    from importlib import metadata

    env = {"cpus": os.cpu_count(), "python": platform.python_version(), "versions": {}}
    for name in ("torch", "transformers", "onnx", "onnxruntime", "onnxscript", "protobuf", "numpy", "tensorrt-rtx-cu12-bindings"):
        try:
            env["versions"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    try:
        import tensorrt_rtx_bindings

        env["versions"]["tensorrt_rtx"] = tensorrt_rtx_bindings.__version__
    except ImportError as exc:
        env["versions"]["tensorrt_rtx"] = f"absent ({exc})"
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"], capture_output=True, text=True)
        env["gpu"] = smi.stdout.strip() or smi.stderr.strip()
    except FileNotFoundError:
        env["gpu"] = "none (no nvidia-smi)"
    env["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    return env


def files(path: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(path.parent.glob(path.name + "*")) if p.is_file()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("work", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("steps", nargs="+")
    ap.add_argument("--deadline", type=float, default=560)
    ap.add_argument("--tokenizer", type=Path)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--preset", default="mobile-vla", help="another preset only to try the script (tiny)")
    a = ap.parse_args()
    t0 = time.perf_counter()
    w = a.work
    w.mkdir(parents=True, exist_ok=True)
    vla = [sys.executable, "-m", "vla_export.cli.main"]
    ckpt, onnx = w / "mvla.pt", w / "mobile-vla.onnx"
    env = environment()
    print(json.dumps(env), flush=True)
    steps = list(a.steps)
    if "export" not in steps and not onnx.exists():
        steps.insert(0, "export")  # a fresh machine: the float model first
    for step in steps:
        left = a.deadline - (time.perf_counter() - t0)
        record: dict = {"step": step, "machine": env, "commands": []}
        model = None
        with open(a.out / f"{step}.log", "w") as log:
            if step == "export" and onnx.exists() and "export" not in a.steps:
                record["skipped"] = "the float model exists"
            elif left < ESTIMATE[step]:
                record["skipped"] = f"{left:.0f} s left before the deadline, the step needs about {ESTIMATE[step]} s"
            else:
                cmds: list[list[str]] = []
                if step == "export":
                    if not ckpt.exists():
                        cmds.append(vla + ["init", "--preset", a.preset, "-o", str(ckpt), "--seed", "0"])
                    cmds.append(vla + ["onnx", str(ckpt), "-o", str(onnx), "--no-ort-check", "--json", str(w / "export.json")])
                    model = onnx
                elif step in ("fp16", "int8w"):
                    model = w / f"mobile-vla.{step}.onnx"
                    cmds.append(vla + ["quantize", str(onnx), "--fp16" if step == "fp16" else "--int8-weights", "-o", str(model),
                                       "--json", str(w / f"{step}.quantize.json")])
                else:
                    model = w / "mobile-vla.int8.onnx"
                    cmds.append(vla + ["episodes", "-o", str(w / "episodes"), "--count", "2", "--frames", "18", "--size", "240x320"])
                    cmds.append(vla + ["calib", str(w / "episodes"), "-o", str(w / "calib.npz"), "--onnx", str(onnx),
                                       "--samples", str(a.samples)] + (["--tokenizer", str(a.tokenizer)] if a.tokenizer else []))
                    cmds.append(vla + ["quantize", str(onnx), "--int8", "--calib", str(w / "calib.npz"), "-o", str(model),
                                       "--json", str(w / "int8.quantize.json")])
                cmds.append([sys.executable, str(BUILD), str(model), str(w / f"{step}.build.json")])
                for cmd in cmds:
                    rec = run(cmd, log, w)
                    record["commands"].append(rec)
                    if rec["rc"] != 0:
                        record["failed"] = rec["command"]
                        break
                record["files"] = files(model)
                for name, key in ((f"{step}.quantize.json", "quantize"), (f"{step}.build.json", "build"), ("export.json", "export")):
                    p = w / name
                    if p.exists() and (key != "export" or step == "export"):
                        record[key] = json.loads(p.read_text())
        if step != "export":  # measured: free the disk (64 GB) for the next step's copies
            for f in model.parent.glob(model.name + "*") if model else ():
                f.unlink()
        elif ckpt.exists() and onnx.exists():
            ckpt.unlink()
        (a.out / f"{step}.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
        print(json.dumps({k: v for k, v in record.items() if k in ("step", "commands", "files", "skipped", "failed")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
