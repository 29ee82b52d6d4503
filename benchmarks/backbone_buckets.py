"""What a GPU serving instance does before and inside each execution, measured in one process without a server.

    python3 benchmarks/backbone_buckets.py preset:mobile-vla --buckets 1,2,4,8,16,32,64 --measure 1,4,16,64 \
        --compile default --compile-batches 64 --json out/backbone-buckets.json

For the preset's policy in PyTorch on CUDA (fp16 by default, random weights), with the options
`vla-export triton --cuda-graphs` writes: the seconds to capture each batch bucket's CUDA graphs (the
model-load warm-up), the backbone alone per batch size (frames/s, median and p99 ms per call, each call
timed to its synchronize), the shared preprocessing of a batch of raw frames on the GPU against the NumPy
path, the whole batched step (``step_batch``: preprocessing, backbone, feature rings, head), and optionally
the backbone with ``torch.compile`` + CUDA graph + patch matmul (the issue's "compiled" anchor), with the
seconds its first call took (compile and capture).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    import torch

    from vla_export.bench.env import capture_environment
    from vla_export.cli.common import write_json
    from vla_export.artifacts.kinds import PRESET_PREFIX
    from vla_export.models.loader import PresetPolicy
    from vla_export.data.preprocess import preprocess_frames
    from vla_export.data.tokenizer import BuiltinTokenizer
    from vla_export.models.config import get_preset
    from vla_export.runtime.batch import warm_up
    from vla_export.runtime.parts import torch_streaming_policy
    from vla_export.serve.fleet_bench import anchor_rates, raw_backbone_rate, raw_step_rate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("preset", help="preset:NAME")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--buckets", default="1,2,4,8,16,32,64")
    ap.add_argument("--measure", default="1,4,16,64", help="batch sizes for the backbone alone")
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--step-robots", default="64", help="robots for the whole batched step")
    ap.add_argument("--frame", default="224x224")
    ap.add_argument("--text-len", type=int, default=16, help="prompt tokens (vla-bench's default)")
    ap.add_argument("--compile", default=None, help="also the compiled anchor, with this torch.compile mode")
    ap.add_argument("--compile-batches", default="64")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if not args.preset.startswith(PRESET_PREFIX) or not torch.cuda.is_available():
        print("needs preset:NAME and a CUDA GPU", file=sys.stderr)
        return 2
    hw = tuple(int(v) for v in args.frame.split("x"))
    buckets = [int(v) for v in args.buckets.split(",")]
    cfg = get_preset(args.preset[len(PRESET_PREFIX):])
    report: dict = {"command": " ".join(sys.argv), "settings": vars(args) | {"json": str(args.json)}, "environment": capture_environment()}

    t0 = time.perf_counter()
    loaded = PresetPolicy(cfg, device="cuda")()
    template = torch_streaming_policy(loaded, tokenizer=BuiltinTokenizer(cfg), text_len=args.text_len, device="cuda", dtype=args.dtype,
                                      cuda_graph=True, patch_matmul=True, batch_buckets=buckets, head_opts={"compile": False, "patch_matmul": False})
    template.activate()
    report["build_s"] = round(time.perf_counter() - t0, 2)
    capture = {}
    for b in sorted(buckets, reverse=True):
        t = time.perf_counter()
        warm_up(template, [b], frame_hw=hw)
        capture[b] = round(time.perf_counter() - t, 2)
        print(f"bucket {b}: warm-up (capture) {capture[b]} s", flush=True)
    report["capture_s"] = capture
    report["gpu_memory_gib_after_capture"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)

    report["backbone"] = []
    for b in [int(v) for v in args.measure.split(",") if v]:
        row = raw_backbone_rate(template, b, seconds=args.seconds, frame_hw=hw)
        report["backbone"].append(row)
        print(f"backbone alone (fp16 + CUDA graph, bucketed), batch {b}: {row}", flush=True)

    pre = {}
    for fhw in ((224, 224), (480, 640), (720, 1280)):
        frames = list(np.random.default_rng(0).integers(0, 256, (64, *fhw, 3), dtype=np.uint8))
        gpu = []
        for _ in range(20):
            t = time.perf_counter()
            template.backbone.preprocess(frames, cfg.image_size)
            torch.cuda.synchronize()
            gpu.append(time.perf_counter() - t)
        t = time.perf_counter()
        preprocess_frames(frames, cfg.image_size)
        cpu = time.perf_counter() - t
        pre[f"{fhw[0]}x{fhw[1]}"] = {"frames": 64, "gpu_ms_p50": round(float(np.median(gpu)) * 1e3, 2), "numpy_ms": round(cpu * 1e3, 1)}
        print(f"preprocess 64 frames {fhw}: {pre[f'{fhw[0]}x{fhw[1]}']}", flush=True)
    report["preprocess"] = pre

    report["step_batch"] = {}
    for n in [int(v) for v in args.step_robots.split(",") if v]:
        rate = raw_step_rate(template, n, seconds=args.seconds, frame_hw=hw)
        report["step_batch"][n] = round(rate, 1)
        print(f"whole batched step, {n} robots: {rate:.1f} frames/s", flush=True)

    if args.compile:
        report["anchor"] = anchor_rates(template, [int(v) for v in args.compile_batches.split(",") if v], mode=args.compile,
                                        seconds=args.seconds, frame_hw=hw)
        for row in report["anchor"]:
            print(f"anchor backbone, batch {row['batch']}: {row}", flush=True)
    template.close()
    if args.json:
        write_json(args.json, report, what="backbone-buckets")  # atomic; the fleet report names its own schema
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
