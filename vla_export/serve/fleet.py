"""The per-robot state inside one Triton model instance: one :class:`Policy` per correlation id.

Triton's sequence batcher routes every request of a robot (its correlation id) to the same model
instance and flags the first one START and the last one END; Triton does not tell the model when it
expires an idle sequence, so :class:`Fleet` drops states by age too. All robots' policies share the
instance's two runners, and :func:`~vla_export.runtime.batch.step_batch` steps several robots with one
backbone call. NumPy only apart from the runners: testable without a server.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vla_export import schemas
from vla_export.data.preprocess import check_frame
from vla_export.errors import ArtifactError, DataError
from vla_export.runtime.batch import step_batch
from vla_export.runtime.policy import Policy, StepTiming

SERVING_FILE = "serving.json"
#: The phases of a model instance's execute() that it counts in Prometheus (``vla_export_<phase>_us``).
PHASES = ("parse", "preprocess", "backbone", "head", "respond")
SERVING_SCHEMA = schemas.TRITON_SERVING
#: The requests a model instance answered with an error (Triton's own failure counter cannot see them).
FAILURE_METRIC = "vla_export_request_failure"
#: The optional input marking the END a model sends itself to close a refused START's sequence.
RELEASE = "RELEASE"


@dataclass(frozen=True)
class StepRequest:
    """One robot's request in a Triton execute(): its correlation id, flags, frame and (on START) instruction."""

    robot: int
    frame: np.ndarray
    start: bool = False
    end: bool = False
    instruction: str | None = None


@dataclass(frozen=True)
class StepResult:
    """The action for one request (and the robot's step count), or the error message for it."""

    robot: int
    action: np.ndarray | None = None
    steps: int = 0
    error: str | None = None


class Fleet:
    """Robot id -> its :class:`Policy`, all sharing ``template``'s runners and settings.

    ``max_robots`` bounds the states held; ``idle_seconds`` drops a robot not heard from for that long
    (as Triton's ``max_sequence_idle_microseconds`` does with the sequence).
    """

    def __init__(self, template: Policy, *, max_robots: int, idle_seconds: float, clock: Callable[[], float] = time.monotonic):
        if max_robots < 1:
            raise ValueError(f"max_robots must be >= 1, got {max_robots}")
        self.template, self.max_robots, self.idle_seconds, self.clock = template, max_robots, idle_seconds, clock
        self.robots: dict[int, Policy] = {}
        self.last_seen: dict[int, float] = {}
        self.last_timing: StepTiming | None = None  # of the last execute's batched step (None when it stepped no robot)

    def expire(self) -> list[int]:
        """Drop the robots idle for longer than ``idle_seconds``; their ids."""
        now = self.clock()
        gone = [r for r, seen in self.last_seen.items() if now - seen > self.idle_seconds]
        for robot in gone:
            self.end(robot)
        return gone

    def start(self, robot: int, instruction: str | None) -> Policy:
        """START: a new episode for ``robot`` (``Policy.reset``); an instruction that does not fit is a DataError."""
        self.end(robot)  # a START always begins afresh, even when its instruction is refused
        if instruction is None:
            raise DataError(f"robot {robot}: a START request needs the INSTRUCTION input (the episode's instruction as UTF-8 bytes)")
        if len(self.robots) >= self.max_robots:
            raise DataError(f"robot {robot}: no free slot: {len(self.robots)} robots hold an episode here, the limit is "
                            f"{self.max_robots} (--max-robots); START again when one ENDs or is idle for {self.idle_seconds:g} s")
        policy = self.template.sibling()
        policy.reset(instruction)
        self.robots[robot] = policy
        self.last_seen[robot] = self.clock()
        return policy

    def policy(self, robot: int) -> Policy:
        """The robot's policy; a DataError when it has no episode (no START yet, ended, or expired)."""
        if robot not in self.robots:
            raise DataError(
                f"robot {robot} has no episode here: its first request must carry START (and the instruction); "
                f"an episode ends with END or after {self.idle_seconds:g} s idle"
            )
        return self.robots[robot]

    def end(self, robot: int) -> None:
        self.robots.pop(robot, None)
        self.last_seen.pop(robot, None)

    def execute(self, requests: Sequence[StepRequest]) -> list[StepResult]:
        """One Triton execute(): every request's START/step/END; a bad request fails alone.

        The good requests' frames go through the backbone together (one robot appears at most once
        per execute: the sequence batcher sends a robot's next request only after this one is answered).
        """
        self.expire()
        self.last_timing = None
        results: list[StepResult | None] = [None] * len(requests)
        batch: list[tuple[int, Policy]] = []
        seen: set[int] = set()
        for i, req in enumerate(requests):
            try:
                if req.robot in seen:
                    raise DataError(f"robot {req.robot}: two requests in one batch (send the next step after the answer)")
                check_frame(req.frame)  # before START: a refused request changes no state
                policy = self.start(req.robot, req.instruction) if req.start else self.policy(req.robot)
                batch.append((i, policy))
                seen.add(req.robot)
            except DataError as exc:
                results[i] = StepResult(req.robot, error=str(exc))
        if batch:
            actions = step_batch([p for _, p in batch], [requests[i].frame for i, _ in batch])
            self.last_timing = batch[0][1].last_timing
            now = self.clock()
            for (i, policy), action in zip(batch, actions):
                req = requests[i]
                results[i] = StepResult(req.robot, action=action, steps=policy.steps)
                self.last_seen[req.robot] = now
        for req in requests:
            if req.end:
                self.end(req.robot)
        return [r for r in results if r is not None]


def read_serving(folder: str | Path) -> dict[str, Any]:
    """The settings the generated model reads at load time (``1/serving.json``)."""
    path = Path(folder) / SERVING_FILE
    if not path.exists():
        raise ArtifactError(f"{path}: not found (write the repository with `vla-export triton`)")
    data = json.loads(path.read_text())
    if data.get("schema") != SERVING_SCHEMA:
        raise ArtifactError(f"{path}: schema {data.get('schema')!r}, expected {SERVING_SCHEMA!r}")
    return data


def policy_from_serving(folder: str | Path, settings: Mapping[str, Any], *, backbone: Any = None) -> Policy:
    """The template :class:`Policy` a model instance serves, from the files in its version folder.

    ``settings["backend"]``: ``onnxrt`` (the split's ONNX parts), ``trt`` (engines run in the Python
    backend) or ``torch`` (the checkpoint's parts in PyTorch, loaded with the recorded loading options,
    see :func:`serving_load_options`). ``backbone`` replaces the backbone runner (the ``tensorrt_plan``
    variant calls Triton's TensorRT model for it). Built by :func:`vla_export.runtime.select.policy_for_artifact`.
    """
    from vla_export.artifacts.kinds import PRESET_PREFIX
    from vla_export.runtime.select import policy_for_artifact

    folder = Path(folder)
    files = settings["files"]
    text_len, window = int(settings["text_len"]), int(settings["window"])
    if settings["backend"] == "torch":
        artifact = f"{PRESET_PREFIX}{settings['preset']}" if settings.get("preset") else folder / files["checkpoint"]
        runner_opts = {"device": settings.get("device", "cpu"), "dtype": settings.get("dtype", "float32"), **settings.get("runner", {})}
        return policy_for_artifact(artifact, window=window, text_len=text_len, load=serving_load_options(settings), runner_opts=runner_opts)
    parts = {part: folder / files[part] for part in ("backbone", "head") if part in files}
    return policy_for_artifact(folder / files["split"], backbone=backbone if backbone is not None else parts["backbone"], head=parts["head"],
                               window=window, text_len=text_len, providers=list(settings.get("providers") or []) or None)


def serving_load_options(settings: Mapping[str, Any]) -> Any:
    """The loading options (``--config/--rename/--set``) that ``vla-export triton`` recorded for a checkpoint;
    None when it recorded none (a preset, a split export, or a checkpoint loaded as it is)."""
    recorded = settings.get("load")
    if not recorded:
        return None
    from vla_export.models.resolve import LoadOptions

    return LoadOptions.from_record(recorded)
