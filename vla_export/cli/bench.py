"""``vla-export bench`` (also installed as ``vla-bench``): latency and FPS of a policy across backends, with a physical-limit check.

A thin layer over :mod:`vla_export.bench`: it plans the (artifact, backend) targets, runs them one at
a time, renders one Rich table and writes the report JSON. Exit code 1 (a check failed) means a row is
not a valid measurement (under the physical floor, or non-finite outputs); the JSON is still written.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from vla_export import schemas
from vla_export.cli.common import DEBUG_FLAG, STDOUT, console, err_console, new_app, run_app, write_json, wrote
from vla_export.cli.junit import bench_cases, write_reports
from vla_export.cli.options import BenchReportOptions, with_loading_options, with_option_groups
from vla_export.cli import checks
from vla_export.errors import ExitCode
from vla_export.models.resolve import LoadOptions

app = new_app("Honest latency and FPS of a policy across backends, with a physical-limit check.")
INVALID_EXIT = ExitCode.CHECK_FAILED  # below the floor: not a valid measurement


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}" if x < 10 else f"{x:.2f}" if x < 100 else f"{x:.1f}"


def _num(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


#: Jetson columns, shown when any row has jtop readings: header -> value of a mode's "jetson" summary.
JETSON_COLUMNS = {
    "W": lambda j: _num((j.get("power_w") or {}).get("mean"), 2),
    "mJ/inf": lambda j: _num(j.get("energy_mj_per_inference"), 1),
    "GPU MHz": lambda j: _num((j.get("gpu_mhz") or {}).get("mean"), 0),
    "max °C": lambda j: _num(j.get("temp_c_max"), 1),
}


def render_report(report: Any) -> None:
    """One table for all rows and modes, then per-row details (what ran, memory, phases, warnings)."""
    table = Table(title=f"vla-bench: batch {report.settings.batch}, window {report.settings.window}, floor on {report.device_peak.name}")
    jetson = any(m.watched.get("jetson", {}).get("samples") for r in report.results for m in r.modes.values())
    rows: list[tuple[str, ...]] = []
    one_artifact = len({r.artifact for r in report.results}) == 1
    if one_artifact:
        table.title += f"\n{report.results[0].artifact}"
    for mode in report.settings.modes:
        ratios = report.ratios(mode)
        for r, ratio in zip(report.results, ratios):
            m = r.modes.get(mode)
            if m is None:
                continue
            s, f = m.stats, m.floor
            flag = "[red]BELOW FLOOR[/]" if f and f.below_floor else "[red]NON-FINITE[/]" if not r.outputs_finite else ""
            if m.contended:
                flag = f"{flag} [yellow]CONTENDED[/]".strip()
            others = (m.watched.get("contention") or {}).get("others_cpu_cores")
            j = m.watched.get("jetson") or {}
            rows.append((
                r.backend if one_artifact else r.label, mode, _ms(s.p50_ms), _ms(s.p90_ms), _ms(s.p99_ms), f"{s.fps:.1f}",
                "-" if ratio is None else f"{ratio:.2f}x", _ms(f.floor_ms if f else None),
                "-" if f is None else f"{f.ratio:.1f}", *(fmt(j) for fmt in JETSON_COLUMNS.values() if jetson),
                "-" if others is None else f"{others:.2f}", flag,
            ))
    # The "flag" column (BELOW FLOOR, NON-FINITE, CONTENDED) only when a row has one.
    flagged = any(row[-1] for row in rows)
    for col in ("backend", "mode", "p50 ms", "p90", "p99", "FPS", "vs 1st", "floor", "x floor", *(JETSON_COLUMNS if jetson else ()),
                "others CPU", *(("flag",) if flagged else ())):
        table.add_column(col, justify="left" if col in ("backend", "mode", "flag") else "right")
    for row in rows:
        table.add_row(*(row if flagged else row[:-1]))
    console.print(table)
    if report.contention is not None:
        console.print(f"others CPU: cores used by other processes during each timing; {report.contention['rule']}", style="dim", markup=False)
    if jetson:
        console.print("Jetson (jtop): W = mean board power (total rail) and mJ/inf = W x mean latency, both including the idle "
                      "power (energy above idle in the JSON); GPU MHz = mean GPU clock; max °C = hottest sensor", style="dim", markup=False)
    for r in report.results:
        what = ", ".join(f"{k}={v}" for k, v in r.runner.items() if k not in ("name",))
        mem = f"peak RSS {r.peak_rss_bytes / 1e9:.2f} GB" + (f", peak GPU {r.peak_gpu_bytes / 1e9:.2f} GB" if r.peak_gpu_bytes else "")
        console.print(f"{r.label}: {r.runner.get('name')} ({what}); activate {r.activate_s:.1f} s, first inference {r.first_infer_s:.1f} s, warm-up {r.warmup_s:.1f} s; {mem}", markup=False)
        if r.cost:
            flops = f"{r.cost.total_flops / 1e9:.4g} GFLOP" if r.cost.total_flops else "FLOPs unknown"
            console.print(f"  per inference: {flops}, {r.cost.weight_bytes / 1e6:.4g} MB of weights ({r.cost.source})", markup=False)
        for name, m in r.modes.items():
            console.print(f"  {name}: min {_ms(m.stats.min_ms)}, mean {_ms(m.stats.mean_ms)}, max {_ms(m.stats.max_ms)} ms over {m.stats.n}", markup=False)
        for name in ("e2e", "e2e-gpu"):
            if name in r.modes and r.modes[name].phases_ms:
                phases = ", ".join(f"{k} {v:.2f}" for k, v in r.modes[name].phases_ms.items())
                ratio = f"; p50 {r.modes[name].stats.p50_ms / r.modes['compute'].stats.p50_ms:.2f}x compute" if "compute" in r.modes else ""
                console.print(f"  {name} phases (p50 ms): {phases}{ratio}", markup=False)
        if r.parity:
            parts = [f"{k}: rel {o['max_row_rel']:.2e}, cosine {o['cosine']:.6f}, max abs {o['max_abs']:.3g} (reference spread {o['ref_std']:.3g})"
                     for k, o in r.parity["outputs"].items()]
            console.print(f"  parity vs float32 over {r.parity['inputs']} inputs: {'; '.join(parts)}", markup=False)
        if r.profile:
            p = r.profile
            dev = f"{p.device_time_ms_per_iter:.3f} ms kernel time and {p.kernels_per_iter:.0f} kernels per inference, " if p.device_time_ms_per_iter is not None else ""
            console.print(f"  profile: {dev}{p.cpu_time_ms_per_iter:.3f} ms host time (top ops in the JSON)", markup=False)
        for w in r.warnings:
            err_console.print(f"  warning: {w}", style="yellow", markup=False)
    from vla_export.bench.contention import warning_line

    line = warning_line(report.contention or {})
    if line:
        err_console.print(line, style="yellow", markup=False)


def _peak(name: Optional[str]):
    from vla_export.bench.env import jetson_model_name
    from vla_export.system import gpu_info
    from vla_export.bench.floor import detect_peak, get_peak

    if name is None:
        gpu = gpu_info()
        name = detect_peak(gpu.get("name") if gpu else None, jetson_model_name()) or "cpu"
    return get_peak(name)


@app.command()
@with_loading_options
@with_option_groups
def bench(
    artifacts: list[str] = typer.Argument(..., metavar="ARTIFACT_OR_CKPT...", help="Checkpoints, .onnx files, TensorRT engines, or preset:NAME (random weights built on the device)."),
    backend: Optional[list[str]] = typer.Option(
        None, "--backend", "-b",
        help="Repeatable: torch[:cpu|cuda][:fp32|fp16|bf16][:cudagraph][:compile[=MODE]][:patchmm][:fuseqkv][:int8|fp8], onnxrt[:cpu|cuda|trt], trt. Default: one per artifact kind.",
    ),
    batch: int = typer.Option(1, "--batch", help="Batch size."),
    window: Optional[int] = typer.Option(None, "--window", help="Frames per inference (default: the window the artifacts were exported for, else 1 = one new frame)."),
    text_len: int = typer.Option(16, "--text-len", help="Prompt tokens (the model adds its 67-token image prefix)."),
    warmup: int = typer.Option(10, "--warmup", help="Untimed iterations first (compilation and CUDA-graph capture happen here)."),
    iters: Optional[int] = typer.Option(None, "--iters", help="Timed iterations per mode (default 100)."),
    duration: Optional[float] = typer.Option(None, "--duration", help="Time each mode for this many seconds instead of --iters."),
    mode: Optional[list[str]] = typer.Option(None, "--mode", help="compute (inputs already on the device), e2e (raw 720x1280 frame, NumPy preprocessing, to action on host), e2e-gpu (the same with the frame preprocessed on the GPU: torch CUDA rows only). Default: compute and e2e."),
    device_peak: Optional[str] = typer.Option(None, "--device-peak", help="Device for the floor: h200, agx-orin-64gb, orin-nx-16gb, orin-nano-8gb, orin-nano-super, cpu (measured). Default: detected."),
    load: LoadOptions = LoadOptions(),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic inputs and preset weights."),
    reports: BenchReportOptions = BenchReportOptions(),
    parity: int = typer.Option(0, "--parity", help="Compare each torch row's actions and features with the same weights in float32 (eager, same device) on this many synthetic inputs; 0: off."),
    profile: bool = typer.Option(False, "--profile", help="Also profile each row's compute loop (torch.profiler): kernel time, kernel count, top ops."),
    streaming: bool = typer.Option(False, "--streaming", help="Time one control step of the split runtime (backbone on one frame + head on the window) against the single-frame backbone, per window T. Artifacts: checkpoints/preset:NAME (torch) or split exports (NAME.split.json, onnxrt or trt)."),
    windows: Optional[str] = typer.Option(None, "--windows", help="With --streaming: comma-separated windows T, e.g. 1,8,16 (default: the policy's window)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Draw the latency distribution per row (CDF, physical floor marked) and the e2e phases into this PNG (needs matplotlib)."),
    debug: bool = typer.Option(False, DEBUG_FLAG, help="Show full tracebacks on errors."),
) -> int:
    """Time each artifact on each backend; one table with ratios to the first row and the physical floor."""
    json_path, junit = reports.json_path, reports.junit
    from vla_export.bench.core import DEFAULT_MODES, BenchSettings, run_benchmark
    from vla_export.bench.env import capture_environment
    from vla_export.bench.targets import default_window, plan_targets
    from vla_export.errors import ConfigError

    if iters is not None and duration is not None:
        raise ConfigError("give --iters or --duration, not both")
    if duration is not None and not duration > 0:
        raise ConfigError(f"--duration must be more than 0 seconds, got {duration}")
    checks.at_least(1, batch=batch, window=window, text_len=text_len, iters=iters)
    checks.at_least(0, warmup=warmup, parity=parity)
    for artifact in artifacts:
        checks.checkpoint_or_preset(artifact)
    checks.output_file(json_path, junit, plot)
    if window is None:  # --streaming takes its windows from --windows
        window = 1 if streaming else default_window(artifacts)
    settings = BenchSettings(
        batch=batch, window=window, warmup=warmup, iters=None if duration is not None else (100 if iters is None else iters),
        duration_s=duration, modes=tuple(mode or DEFAULT_MODES), seed=seed, text_len=text_len, parity_inputs=parity,
    )
    if streaming:
        if plot:
            raise ConfigError("--plot draws the per-backend benchmark, not --streaming")
        if parity:
            raise ConfigError("--parity checks the per-backend benchmark's rows, not --streaming")

        words = ["vla-bench", "--streaming", *artifacts, *(w for b in backend or [] for w in ("-b", b)), *(("--windows", windows) if windows else ()),
                 "--warmup", warmup, "--iters", settings.iters, "--seed", seed, *(("--json", json_path) if json_path else ())]
        return _bench_streaming(artifacts, backend or [], windows=windows, warmup=warmup, iters=settings.iters or 100, seed=seed,
                                load=load, json_path=json_path, command=" ".join(shlex.quote(str(w)) for w in words))
    targets = plan_targets(artifacts, backend or [], config=load.config, seed=seed, load=load, parity=parity > 0)
    peak = _peak(device_peak)
    # The command as an explicit, reproducible line (every setting spelled out), not whatever argv held.
    words = ["vla-bench", *artifacts, *(w for b in backend or [] for w in ("-b", b)), "--batch", batch, "--window", window,
             "--text-len", text_len, "--warmup", warmup, *(("--duration", duration) if duration is not None else ("--iters", settings.iters)),
             *(w for m in settings.modes for w in ("--mode", m)), "--seed", seed, *(("--device-peak", device_peak) if device_peak else ()),
             *(("--config", load.config_file) if load.config_file else ()), *(w for a, b in load.renames for w in ("--rename", f"{a}={b}")),
             *(w for k, v in load.sets for w in ("--set", f"{k}={v if isinstance(v, str) else json.dumps(v)}")), *(("--json", json_path) if json_path else ()), *(("--profile",) if profile else ()),
             *(("--parity", parity) if parity else ())]
    command = " ".join(shlex.quote(str(w)) for w in words)

    def progress(report: Any) -> None:
        r = report.results[-1]
        p50 = ", ".join(f"{m} p50 {_ms(v.stats.p50_ms)} ms" for m, v in r.modes.items())
        busy = [f"{m} {v.watched['contention']['others_cpu_cores']:.2f}" for m, v in r.modes.items() if v.contended]
        err_console.print(f"done: {r.label}: {p50}" + (f" (contended: other processes' CPU cores {', '.join(busy)})" if busy else ""),
                          style="dim", markup=False)
        # Environment after each row: CUDA is initialised and the runtimes are loaded by then.
        report.environment = capture_environment()
        report.contention = contention.report([(x.label, m, v.watched["contention"]) for x in report.results for m, v in x.modes.items()
                                               if "contention" in v.watched])
        if json_path and str(json_path) != STDOUT:  # rewritten after every row, so a long run that dies keeps what it measured
            write_json(json_path, report.to_dict())

    from vla_export.bench.contention import BEFORE_S, ContentionMonitor, describe_busiest
    from vla_export.bench.env import JetsonTelemetry

    # Other work on the machine (before and during every timing) and, on a Jetson, power, GPU clock and temperatures.
    with ContentionMonitor() as contention, JetsonTelemetry() as telemetry:
        before = contention.before(BEFORE_S)
        if before["contended"]:
            load = before["load_average_1_5_15"]
            err_console.print(f"warning: the machine is busy before the run: other processes use {before['others_cpu_cores']:.2f} CPU cores"
                              + (f" (load average {load[0]:.2f} on {before['cores']} cores)" if load else "")
                              + f"; {describe_busiest(before)}; timings it overlaps will be marked CONTENDED", style="yellow", markup=False)
        if telemetry.active:
            telemetry.before(BEFORE_S)  # the idle board's power, for the energy above idle
        monitors = [contention, telemetry] if telemetry.active else [contention]
        report = run_benchmark(targets, settings, peak=peak, environment={}, command=command, on_result=progress, profile=profile,
                               monitors=monitors)
    if telemetry.summary() is not None:
        report.environment["jetson_telemetry"] = telemetry.summary()
    render_report(report)
    # the complete report (standard output gets only this one)
    write_reports(report.to_dict(), json_path, junit, suite="vla-bench floor check", cases=bench_cases, classname="vla-bench.floor")
    if plot:
        from vla_export.plots import plot_bench

        wrote(plot_bench(report.to_dict(), plot), "plot")
    invalid = [r.label for r in report.results if r.below_floor or not r.outputs_finite]
    if invalid:
        err_console.print(f"error: not valid measurements of the full model: {', '.join(invalid)}", style="red", markup=False)
        return INVALID_EXIT
    return 0


def _bench_streaming(
    artifacts: list[str], backends: list[str], *, windows: Optional[str], warmup: int, iters: int, seed: int,
    load: LoadOptions, json_path: Optional[Path], command: str,
) -> int:
    """``vla-bench --streaming``: each (artifact, backend) run of vla_export.bench.streaming, rendered as it ends."""
    from vla_export.bench.streaming import streaming_runs
    from vla_export.errors import ConfigError

    try:
        ts = [int(t) for t in windows.split(",")] if windows else []
    except ValueError:
        raise ConfigError(f"--windows takes comma-separated integers, e.g. 1,8,16, got {windows!r}") from None
    if any(t < 1 for t in ts):
        raise ConfigError("--windows must be positive")
    reports = []
    for artifact, backend, result in streaming_runs(artifacts, backends, windows=ts, warmup=warmup, iters=iters, seed=seed,
                                                    load=load, command=command):
        render_streaming(result.to_dict())
        reports.append(result.to_dict() | {"artifact": artifact, "backend": backend})
    if json_path:
        write_json(json_path, reports[0] if len(reports) == 1 else {"kind": "streaming", "runs": reports}, schemas.BENCH_STREAMING)
        wrote(json_path)
    return 0


def render_streaming(r: dict[str, Any]) -> None:
    b = r["backbone_single_frame"]
    table = Table(title=f"vla-bench --streaming: {r['model']}, backbone {r['runners']['backbone']['name']}, head {r['runners']['head']['name']}\n"
                        f"single-frame backbone p50 {b['p50_ms']:.3f} ms (p90 {b['p90_ms']:.3f}); target: step <= {r['target'].split('<= ')[1]}")
    for col in ("window T", "step p50 ms", "p90", "p99", "head p50", "step / backbone", "full window p50", "speed-up", ""):
        table.add_column(col, justify="right" if col else "left")
    for w in r["windows"]:
        full = w["full_window"]
        table.add_row(
            str(w["window"]), f"{w['step']['p50_ms']:.3f}", f"{w['step']['p90_ms']:.3f}", f"{w['step']['p99_ms']:.3f}",
            f"{w['head']['p50_ms']:.3f}", f"{w['ratio_step_to_backbone']:.3f}x", "-" if full is None else f"{full['p50_ms']:.3f}",
            "-" if w["speedup_vs_full_window"] is None else f"{w['speedup_vs_full_window']:.2f}x",
            "[green]within target[/]" if w["within_target"] else "[red]over target[/]",
        )
    console.print(table)
    s = r["settings"]
    console.print(f"{s['iters']} timed steps per window after {s['warmup']} warm-up, interleaved; step = backbone + head inside "
                  f"Policy.step (preprocessing of a {s['frame_hw'][0]}x{s['frame_hw'][1]} frame reported apart in the JSON)", markup=False)


def main() -> None:
    sys.exit(run_app(app, prog_name="vla-bench"))


if __name__ == "__main__":
    main()
