"""``vla-export triton``: write a Triton model repository (vla_export.serve.repository)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vla_export.cli import checks
from vla_export.cli.common import console, write_json
from vla_export.cli.options import with_loading_options
from vla_export.errors import ConfigError
from vla_export.models.resolve import LoadOptions


@with_loading_options
def triton(
    artifact: str = typer.Argument(..., help="A split export (NAME.split.json, its prefix or folder), a checkpoint (--backend torch), or preset:NAME (random weights, for benchmarks)."),
    output: Path = typer.Option(..., "-o", "--output", help="The model repository folder to write (replaced as a whole if written by this command)."),
    name: Optional[str] = typer.Option(None, "--name", help="The policy model's name (default: the artifact's name, e.g. tiny)."),
    backend: Optional[str] = typer.Option(None, "--backend", help="onnxrt (split default), trt (engines in the Python backend), torch (checkpoint default), tensorrt_plan (Triton's TensorRT backend for the backbone; GPU server only)."),
    max_robots: int = typer.Option(16, "--max-robots", help="Robots (sequences) one model instance holds state for at once."),
    max_batch: int = typer.Option(8, "--max-batch", help="Most robots' steps in one execution (max_batch_size)."),
    preferred_batch: Optional[int] = typer.Option(None, "--preferred-batch", help="Batch size the batcher waits for (default: --max-batch)."),
    queue_delay_us: int = typer.Option(2000, "--queue-delay-us", help="Longest wait, in microseconds, to fill a batch."),
    idle_seconds: float = typer.Option(30.0, "--idle-seconds", help="A robot silent this long loses its state (its next request must START again)."),
    instances: int = typer.Option(1, "--instances", help="Model instances (each holds its own robots)."),
    text_len: Optional[int] = typer.Option(None, "--text-len", help="Prompt tokens (default: the config's max_text_len); a longer instruction is refused."),
    backbone: Optional[Path] = typer.Option(None, "--backbone", help="Serve this artifact as the backbone (e.g. NAME.backbone.engine)."),
    head: Optional[Path] = typer.Option(None, "--head", help="Serve this artifact as the head (e.g. NAME.head.engine)."),
    providers: Optional[list[str]] = typer.Option(None, "--provider", help="onnxruntime execution provider for ONNX parts (repeatable)."),
    device: str = typer.Option("cpu", "--device", help="torch backend: cpu or cuda[:N]."),
    dtype: str = typer.Option("float32", "--dtype", help="torch backend: float32, float16 or bfloat16."),
    cuda_graphs: bool = typer.Option(False, "--cuda-graphs", help="torch backend on CUDA: replay CUDA graphs, one per batch size (powers of two up to --max-batch, a batch padded up), captured at model load."),
    bucket_step: int = typer.Option(8, "--bucket-step", help="With --cuda-graphs/--compile: capture batch sizes 1, 2, 4, ... below this, then its multiples up to --max-batch (1: every size; more GPU memory, no padding)."),
    compile_mode: Optional[str] = typer.Option(None, "--compile", help="torch backend: torch.compile the backbone with this mode (e.g. default, max-autotune-no-cudagraphs); compiles per batch size at model load."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write what was generated as JSON."),
    perf_data: Optional[Path] = typer.Option(None, "--perf-data", help="Also write input data for Triton's perf_analyzer in sequence mode (JSON: uint8 FRAME, the INSTRUCTION bytes; perf_analyzer sets START/END/CORRID), checked against the model config, and print the command."),
    perf_frame: Optional[str] = typer.Option(None, "--perf-frame", help="With --perf-data: the camera frame HxW (default 480x640)."),
    perf_steps: Optional[int] = typer.Option(None, "--perf-steps", help="With --perf-data: steps per sequence (default 8; two sequences)."),
    load: LoadOptions = LoadOptions(),
) -> None:
    """Write a Triton model repository serving many robots: one sequence (state) per robot, several robots per batch."""
    from vla_export.serve.repository import TritonOptions, write_repository

    if perf_data is None and (perf_frame is not None or perf_steps is not None):
        raise ConfigError("--perf-frame and --perf-steps go with --perf-data")
    frame_hw = checks.frame_size(perf_frame or "480x640", "--perf-frame") if perf_data is not None else None
    checks.at_least(1, perf_steps=perf_steps)
    if perf_data is not None and perf_data.suffix != ".json":
        raise ConfigError(f"{perf_data}: --perf-data writes perf_analyzer's JSON input data, a .json file")
    checks.output_file(json_path, perf_data)

    options = TritonOptions(
        name=name, backend=backend, max_robots=max_robots, max_batch=max_batch, preferred_batch=preferred_batch,
        queue_delay_us=queue_delay_us, idle_seconds=idle_seconds, instances=instances, text_len=text_len,
        backbone=str(backbone) if backbone else None, head=str(head) if head else None, providers=tuple(providers or ()), device=device,
        dtype=dtype, cuda_graphs=cuda_graphs, compile=compile_mode, bucket_step=bucket_step,
    )
    result = write_repository(artifact, output, options, load=load)
    for model in result.models:
        console.print(f"{output}/{model}/config.pbtxt: valid Triton model config", markup=False)
    s = result.settings
    console.print(f"wrote {output}: policy model {result.models[0]!r} ({result.backend}), window {s['window']}, text length {s['text_len']}, "
                  f"up to {options.max_robots} robots, {options.max_batch} per batch", markup=False)
    if text_len is None:  # a value the user did not give: said out loud, it sets the backbone's cost
        console.print(f"note: every prompt is padded to {s['text_len']} tokens (the config's max_text_len, assumed since --text-len "
                      "was not given); the backbone's cost grows with it: pass --text-len N for the longest instruction the robots send",
                      markup=False)
    if not result.runnable_here:
        console.print(f"note: the {result.backend} variant needs TensorRT and an NVIDIA GPU in the server (NVIDIA's Triton container); "
                      "`vla-export serve` cannot run it on a machine without them", markup=False)
    report = result.to_dict()
    if perf_data is not None:
        from vla_export.serve.perf_data import (DEFAULT_INSTRUCTION, check_instruction, check_perf_data, perf_analyzer_command,
                                                perf_analyzer_data, write_perf_data)
        from vla_export.serve.repository import validate_config

        model = result.models[0]
        try:
            check_instruction(result.settings)
        except ConfigError as exc:  # known only once the repository's settings are: say what was written
            raise ConfigError(f"{exc} (the repository {output} was written; the perf_analyzer data was not)") from None
        data = perf_analyzer_data(steps=perf_steps or 8, frame_hw=frame_hw)
        counts = check_perf_data(data, validate_config(result.configs[model], where=f"{model}/config.pbtxt"), where=str(perf_data))
        write_perf_data(perf_data, data)
        command = " ".join(perf_analyzer_command(model, perf_data, concurrency=(1, min(4, options.max_robots))))
        report["perf_analyzer"] = {"data": str(perf_data), "frame_hw": list(frame_hw), "instruction": DEFAULT_INSTRUCTION, **counts,
                                   "command": command}
        console.print(f"wrote {perf_data}: perf_analyzer input data, {counts['sequences']} sequences of {counts['steps'] // counts['sequences']} "
                      f"steps, seeded random {frame_hw[0]}x{frame_hw[1]} frames, instruction {DEFAULT_INSTRUCTION!r} (not from your "
                      f"files: a stand-in), checked against {model}/config.pbtxt", markup=False)
        console.print(f"with the server running (`vla-export serve {output}`): {command}", markup=False)
    if json_path:
        write_json(json_path, report)
        console.print(f"wrote {json_path}")
