"""Fleet benchmark: N simulated robots at a control rate against a real Triton server on loopback.

    .venv/bin/python benchmarks/fleet_bench.py out/tiny.split.json --robots 1,2,4,8 --rate 10 --seconds 10 \
        --json benchmarks/results/fleet-cpu-tiny.json

Writes the repository (`vla-export triton`), starts `tritonserver` from the nvidia-pytriton wheel
(`vla-export serve`), drives each fleet size in turn (vla_export.serve.fleet_bench), then measures the
same policy's batched step in this process with no server (raw frames/s), and stops the server.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from vla_export.bench.env import capture_environment
from vla_export.cli.common import write_json
from vla_export.serve.fleet import policy_from_serving, read_serving
from vla_export.serve.fleet_bench import anchor_rates, drive_fleet, fleet_report, raw_backbone_rate, raw_step_rate
from vla_export.serve.repository import TritonOptions, write_repository
from vla_export.serve.server import TritonServer, free_port


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", help="split export (NAME.split.json) or checkpoint (with --backend torch)")
    ap.add_argument("--backend", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", help="torch backend dtype")
    ap.add_argument("--robots", default="1,2,4,8", help="fleet sizes, comma-separated")
    ap.add_argument("--rate", type=float, default=10.0, help="control rate per robot in Hz (0: closed loop)")
    ap.add_argument("--seconds", type=float, default=10.0, help="duration per fleet size")
    ap.add_argument("--frame", default="480x640", help="camera frame HxW")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--text-len", type=int, default=None, help="prompt tokens (vla-export triton --text-len; default: the config's max_text_len)")
    ap.add_argument("--instances", type=int, default=1, help="model instances (each preprocesses its robots' frames in its own process)")
    ap.add_argument("--queue-delay-us", type=int, default=2000)
    ap.add_argument("--cuda-graphs", action="store_true", help="torch backend: CUDA graphs per batch bucket (vla-export triton --cuda-graphs)")
    ap.add_argument("--compile", default=None, help="torch backend: torch.compile mode for the served backbone")
    ap.add_argument("--bucket-step", type=int, default=8, help="batch sizes captured (vla-export triton --bucket-step)")
    ap.add_argument("--client-processes", type=int, default=1, help="robots spread over this many client processes")
    ap.add_argument("--raw-seconds", type=float, default=3.0, help="in-process batched step per fleet size (0: skip)")
    ap.add_argument("--raw-batches", default="", help="backbone alone at these batch sizes, served configuration (comma-separated)")
    ap.add_argument("--anchor-compile", default=None, help="also the backbone compiled with this mode + CUDA graph + patch matmul (the issue's anchor)")
    ap.add_argument("--anchor-batches", default="64", help="batch sizes for the anchor (each compiles once)")
    ap.add_argument("--ready-timeout", type=float, default=300, help="seconds for the server to load the model (compiling takes minutes)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    sizes = [int(n) for n in args.robots.split(",")]
    hw = tuple(int(v) for v in args.frame.split("x"))
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        repo = write_repository(args.artifact, Path(tmp) / "repo", TritonOptions(
            backend=args.backend, device=args.device, dtype=args.dtype, max_robots=max(sizes), max_batch=args.max_batch,
            queue_delay_us=args.queue_delay_us, idle_seconds=60, instances=args.instances, cuda_graphs=args.cuda_graphs, text_len=args.text_len,
            compile=args.compile, bucket_step=args.bucket_step))
        model = repo.models[0]
        rows = []
        with TritonServer(repo.path, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), ready_timeout=args.ready_timeout) as srv:
            for i, n in enumerate(sizes):
                row = drive_fleet(srv.grpc_url, srv.metrics_url, model, robots=n, rate_hz=args.rate, seconds=args.seconds,
                                  frame_hw=hw, first_id=1000 * (i + 1), processes=args.client_processes)
                rows.append(row)
                print(f"N={n:3d}: {row.step_rate:8.1f} steps/s  e2e p50 {row.e2e.get('p50_ms', float('nan')):7.2f} ms  "
                      f"p99 {row.e2e.get('p99_ms', float('nan')):7.2f} ms  queue {row.server['queue_ms_per_request']:6.2f} ms  "
                      f"compute {row.server['compute_ms_per_request']:6.2f} ms  robots/exec {row.server['robots_per_execution']:.2f}  "
                      f"missed {row.missed_deadlines}  failed {row.failed}", flush=True)
        raw: dict[str, list] = {"served_config": [], "anchor": []}
        if args.raw_seconds > 0:
            folder = repo.path / model / "1"
            with policy_from_serving(folder, read_serving(folder)) as template:
                for b in [int(v) for v in args.raw_batches.split(",") if v]:
                    raw["served_config"].append(raw_backbone_rate(template, b, seconds=args.raw_seconds, frame_hw=hw))
                    print(f"backbone alone, served configuration, batch {b}: {raw['served_config'][-1]}", flush=True)
                for row in rows:
                    row.raw_frames_per_s = raw_step_rate(template, row.robots, seconds=args.raw_seconds, frame_hw=hw)
                    print(f"N={row.robots:3d}: raw in-process batched step {row.raw_frames_per_s:8.1f} frames/s; served/raw "
                          f"{row.step_rate / row.raw_frames_per_s:.2f} (meaningful at saturation, rate 0)", flush=True)
        if args.anchor_compile:  # from a plain (eager) copy of the policy, so the served configuration is not compiled again here
            folder = repo.path / model / "1"
            with policy_from_serving(folder, read_serving(folder) | {"runner": {}, "warm_up": []}) as template:
                raw["anchor"] = anchor_rates(template, [int(v) for v in args.anchor_batches.split(",") if v], mode=args.anchor_compile,
                                             seconds=max(args.raw_seconds, 1.0), frame_hw=hw)
            for row in raw["anchor"]:
                print(f"backbone alone, anchor, batch {row['batch']}: {row}", flush=True)
        best = max((r["frames_per_s"] for r in raw["anchor"] or raw["served_config"]), default=None)
        if best:
            for row in rows:
                print(f"N={row.robots:3d}: served {row.step_rate:.1f} steps/s = {row.step_rate / best:.2f} of the raw backbone's "
                      f"{best:.1f} frames/s ({'anchor' if raw['anchor'] else 'served configuration'}), p99 {row.e2e.get('p99_ms', float('nan')):.1f} ms")
        report = fleet_report(rows, command=" ".join(sys.argv), artifact=args.artifact, backend=repo.backend,
                              settings={k: v for k, v in vars(args).items() if k != "json"} | {"frame_hw": hw},
                              environment=capture_environment(), raw_backbone=raw, raw_backbone_best_frames_per_s=best)
    if args.json:
        write_json(args.json, report, what="fleet-bench")  # atomic; the fleet report names its own schema
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
