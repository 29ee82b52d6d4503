"""Triton's perf_analyzer in sequence mode against the served policy model (beside fleet_bench.py).

    tools/get_perf_analyzer.sh            # once: .venv/perf-analyzer/perf_analyzer (make perf-analyzer)
    .venv/bin/python benchmarks/perf_analyzer_bench.py out/tiny.split.json --robots 1:4 --frame 480x640 \
        --json benchmarks/results/perf-analyzer-cpu-tiny.json

Writes the repository and perf_analyzer's input data (`vla-export triton --perf-data`: uint8 FRAME, the
INSTRUCTION bytes; START/END/CORRID set by perf_analyzer's sequence mode), starts `tritonserver` from the
nvidia-pytriton wheel, runs the printed command:

    perf_analyzer -m tiny -i grpc -u 127.0.0.1:PORT --input-data perf.json --sequence-id-range 1:1000000000 \
        --concurrency-range=1:4 --measurement-interval 5000 --stability-percentage 50 --max-trials 5 -f perf.csv

and records perf_analyzer's table with the server's own counters (requests served, and those the model
answered with an error, which must be 0: a step without START, or a START without its instruction, is one).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from vla_export.bench.env import capture_environment
from vla_export.cli.common import write_json
from vla_export.serve.fleet_bench import scrape
from vla_export.serve.perf_data import check_perf_data, perf_analyzer_command, perf_analyzer_data, write_perf_data
from vla_export.serve.repository import TritonOptions, validate_config, write_repository
from vla_export.serve.server import TritonServer, free_port


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", help="split export (NAME.split.json)")
    ap.add_argument("--robots", default="1:4", help="concurrency range START:END (robots = sequences at once)")
    ap.add_argument("--frame", default="480x640", help="camera frame HxW")
    ap.add_argument("--steps", type=int, default=8, help="steps per sequence (two sequences of data)")
    ap.add_argument("--text-len", type=int, default=16)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--measurement-ms", type=int, default=5000)
    ap.add_argument("--stability", type=float, default=50, help="perf_analyzer --stability-percentage")
    ap.add_argument("--perf-analyzer", default=str(Path(sys.executable).parent.parent / "perf-analyzer" / "perf_analyzer"))
    ap.add_argument("--timeout", type=float, default=600, help="seconds for the whole perf_analyzer run")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    lo, hi = (int(v) for v in args.robots.split(":"))
    hw = tuple(int(v) for v in args.frame.split("x"))
    with tempfile.TemporaryDirectory(prefix="perf-analyzer-") as tmp:
        repo = write_repository(args.artifact, Path(tmp) / "repo", TritonOptions(max_robots=max(hi, 1), max_batch=args.max_batch,
                                                                                 text_len=args.text_len, idle_seconds=60))
        model = repo.models[0]
        data = perf_analyzer_data(steps=args.steps, frame_hw=hw)
        check_perf_data(data, validate_config(repo.configs[model], where=f"{model}/config.pbtxt"))
        data_path = write_perf_data(Path(tmp) / "perf.json", data)
        table = Path(tmp) / "perf.csv"
        with TritonServer(repo.path, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), ready_timeout=120) as srv:
            cmd = perf_analyzer_command(model, data_path, url=srv.grpc_url, concurrency=(lo, hi), measurement_ms=args.measurement_ms,
                                        stability=args.stability, csv=table, binary=args.perf_analyzer)
            print(" ".join(cmd), flush=True)
            before = scrape(srv.metrics_url, model)
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=dict(os.environ))
            after = scrape(srv.metrics_url, model)
        print(run.stdout[-4000:], run.stderr[-2000:], sep="\n", flush=True)
        rows = list(csv.DictReader(table.open())) if table.exists() else []
    served = after["nv_inference_request_success"] - before["nv_inference_request_success"]
    failed = after["vla_export_request_failure"] - before["vla_export_request_failure"]
    print(f"server: {served:.0f} requests served, {failed:.0f} answered with an error; perf_analyzer exit code {run.returncode}")
    if args.json:
        report = {"schema": "vla-export/perf-analyzer/1", "command": " ".join(sys.argv), "perf_analyzer_command": " ".join(cmd),
                  "exit_code": run.returncode, "artifact": args.artifact, "settings": {k: str(v) for k, v in vars(args).items() if k != "json"},
                  "rows": rows, "server": {"served": served, "failed": failed}, "stdout_tail": run.stdout[-3000:],
                  "environment": capture_environment()}
        write_json(args.json, report, what="perf-analyzer")
        print(f"wrote {args.json}")
    return 0 if run.returncode == 0 and failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
