"""Input data and a command for Triton's ``perf_analyzer`` in sequence mode against the served policy model.

The policy model (:mod:`vla_export.serve.repository`) is a sequence-batching model: one sequence per
robot, START on its first request, END on its last, its correlation id in CORRID. perf_analyzer sets
those three itself in sequence mode (``--sequence-id-range``); the input-data JSON gives, per stream
(one stream = one sequence, one entry per step), the inputs the model takes:

* ``FRAME``: the camera frame, UINT8 ``[H, W, 3]`` (the batch axis is perf_analyzer's ``-b``);
* ``INSTRUCTION``: the instruction's UTF-8 bytes as a UINT8 ``[n]`` tensor (what the model reads on
  START; the model ignores it on later steps, so every step carries it: perf_analyzer sends the same
  inputs on every request of a stream).

The model's own ``RELEASE`` input is left out (it marks the END this model sends itself). Tensors are
given as ``b64`` (the raw bytes in base64) with an explicit ``shape``, as perf_analyzer's input-data
format allows for any data type. :func:`check_perf_data` checks a file against the model's config.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vla_export.errors import ArtifactError, ConfigError
from vla_export.fileio import atomic_write
from vla_export.lazy import lazy_import
from vla_export.serve.fleet import RELEASE
from vla_export.serve.repository import SERVE_INSTALL

FRAME, INSTRUCTION = "FRAME", "INSTRUCTION"
DEFAULT_INSTRUCTION = "go to the cup"
_NUMPY = {"TYPE_UINT8": np.uint8, "TYPE_FP32": np.float32, "TYPE_INT64": np.int64, "TYPE_INT32": np.int32, "TYPE_UINT64": np.uint64}


def _b64(array: np.ndarray) -> dict[str, Any]:
    return {"b64": base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii"), "shape": list(array.shape)}


def perf_analyzer_data(*, sequences: int = 2, steps: int = 8, frame_hw: tuple[int, int] = (480, 640),
                       instruction: str = DEFAULT_INSTRUCTION, seed: int = 0) -> dict[str, Any]:
    """perf_analyzer's input data: ``sequences`` streams of ``steps`` requests, seeded random frames."""
    if sequences < 1 or steps < 1:
        raise ConfigError(f"perf_analyzer data needs at least one sequence of one step, got {sequences} x {steps}")
    if len(frame_hw) != 2 or min(frame_hw) < 1:
        raise ConfigError(f"a frame is HxW with both >= 1, got {frame_hw}")
    text = np.frombuffer(instruction.encode("utf-8"), dtype=np.uint8)
    if text.size == 0:
        raise ConfigError("the instruction is empty: a START needs one")
    rng = np.random.default_rng(seed)
    streams = [[{FRAME: _b64(rng.integers(0, 256, (*frame_hw, 3), dtype=np.uint8)), INSTRUCTION: _b64(text)}
                for _ in range(steps)] for _ in range(sequences)]
    return {"data": streams}


def write_perf_data(path: str | Path, data: Mapping[str, Any]) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data) + "\n"))


def check_perf_data(data: Any, config: Any, *, where: str = "perf_analyzer data") -> dict[str, int]:
    """Check perf_analyzer input ``data`` against the parsed ``config`` (Triton's ``ModelConfig``): every
    stream a non-empty list of steps; every step gives exactly the model's required inputs plus optional
    ones it takes (not ``RELEASE``), each with a ``shape`` that fits the config's dims and a ``b64`` payload
    of exactly that many elements of the config's type. {"sequences": n, "steps": m} or ArtifactError."""
    pb2 = lazy_import("tritonclient.grpc.model_config_pb2", purpose="checking perf_analyzer data", install=SERVE_INSTALL)
    inputs = {t.name: t for t in config.input}
    required = {n for n, t in inputs.items() if not t.optional}
    problems: list[str] = []
    streams = data.get("data") if isinstance(data, dict) else None
    if not isinstance(streams, list) or not streams or not all(isinstance(s, list) and s for s in streams):
        raise ArtifactError(f"{where}: 'data' must be a non-empty list of streams (one per sequence), each a non-empty list of steps")
    for i, stream in enumerate(streams):
        for j, step in enumerate(stream):
            at = f"stream {i} step {j}"
            if not isinstance(step, dict):
                problems.append(f"{at}: not an object of inputs")
                continue
            missing = sorted(required - set(step))
            if missing:
                problems.append(f"{at}: lacks required input(s) {missing}")
            for name, tensor in step.items():
                if name == RELEASE:
                    problems.append(f"{at}: {RELEASE} is the model's own input (it marks the END the model sends itself); leave it out")
                    continue
                if name not in inputs:
                    problems.append(f"{at}: {name!r} is not an input of {config.name!r} ({sorted(inputs)})")
                    continue
                dims = list(inputs[name].dims)
                shape = tensor.get("shape") if isinstance(tensor, dict) else None
                if not isinstance(shape, list) or len(shape) != len(dims) or any(
                        not isinstance(s, int) or s < 1 or (d != -1 and s != d) for s, d in zip(shape, dims)):
                    problems.append(f"{at}: {name} shape {shape} does not fit the config's dims {dims} (batch axis excluded)")
                    continue
                kind = pb2.DataType.Name(inputs[name].data_type)
                if kind not in _NUMPY or "b64" not in tensor:
                    problems.append(f"{at}: {name} needs a 'b64' payload of {kind}")
                    continue
                try:
                    raw = base64.b64decode(tensor["b64"], validate=True)
                except ValueError as exc:
                    problems.append(f"{at}: {name} 'b64' is not base64 ({exc})")
                    continue
                want = int(np.prod(shape)) * np.dtype(_NUMPY[kind]).itemsize
                if len(raw) != want:
                    problems.append(f"{at}: {name} holds {len(raw)} bytes, shape {shape} of {kind} is {want}")
            if len(problems) > 5:
                break
    if problems:
        raise ArtifactError(f"{where}: does not fit model {config.name!r}: {'; '.join(problems[:5])}")
    return {"sequences": len(streams), "steps": sum(len(s) for s in streams)}


def perf_analyzer_command(model: str, data_path: str | Path, *, url: str = "127.0.0.1:8001", concurrency: Sequence[int] = (1, 4),
                          measurement_ms: int = 5000, stability: float = 50, csv: str | Path | None = None,
                          binary: str = "perf_analyzer") -> list[str]:
    """perf_analyzer in sequence mode over gRPC: each concurrent client runs whole sequences (START ... END)
    of the data's streams with fresh correlation ids, from ``concurrency[0]`` to ``concurrency[-1]`` robots at once.
    ``stability``: perf_analyzer's --stability-percentage (a contended machine needs more than its default 10)."""
    lo, hi = (concurrency[0], concurrency[-1]) if concurrency else (1, 1)
    cmd = [binary, "-m", model, "-i", "grpc", "-u", url, "--input-data", str(data_path),
           "--sequence-id-range", "1:1000000000", f"--concurrency-range={lo}:{hi}", "--measurement-interval", str(measurement_ms),
           "--stability-percentage", f"{stability:g}", "--max-trials", "5"]
    return cmd + (["-f", str(csv)] if csv else [])


def check_instruction(settings: Mapping[str, Any], instruction: str = DEFAULT_INSTRUCTION) -> int:
    """The instruction's prompt tokens, tokenised as the served model does (``serving.json`` settings);
    ConfigError when they exceed its text length (every START of the run would be refused)."""
    from vla_export.data.preprocess import prompt_for
    from vla_export.data.tokenizer import BuiltinTokenizer, tokenizer_for
    from vla_export.errors import DataError
    from vla_export.models.config import PolicyConfig

    cfg = PolicyConfig.from_dict(settings["config"])
    tokenizer = BuiltinTokenizer(cfg) if settings.get("preset") else tokenizer_for(cfg)
    try:
        _, mask = tokenizer.encode(prompt_for(instruction), settings["text_len"])
    except DataError as exc:
        raise ConfigError(f"--perf-data: the instruction {instruction!r} does not fit the served text length ({exc}); "
                          "raise --text-len") from None
    return int(np.sum(mask))
