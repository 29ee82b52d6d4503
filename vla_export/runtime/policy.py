"""The streaming policy a robot calls once per control step.

Each step brings one camera frame. The backbone part turns it (with the instruction's tokens, fixed
since :meth:`Policy.reset`) into one per-frame feature; a ring buffer keeps the last ``window``
features; the head part maps that window to the action. The backbone therefore runs on one frame
per step instead of the whole window.

Warm-up rule (before ``window`` frames exist): the window is padded at the front by repeating the
FIRST frame's feature. After k+1 frames (k < window-1) the head sees
``[f0] * (window-k-1) + [f0, ..., fk]``. The full policy gives the same action when it is fed the
equivalently padded frame window, whose frame indices :func:`window_indices` returns; replay and the
tests compare against exactly that. Padding keeps the head's input shape fixed, which static
TensorRT profiles need.

Windows on the device: a policy whose runners keep tensors on a GPU can be given ``windows``, one
store shared by all its siblings (:class:`~vla_export.backends.torch_frames.DeviceWindows`), which
holds every robot's window in one device tensor. Its steps then keep the feature on the device between
the backbone and the head (same warm-up rule, same values); only the action comes back to the host.

NumPy only: no torch import here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vla_export.backends.base import Runner
from vla_export.data.iospec import ATTENTION_MASK, BACKBONE, HEAD, INPUT_IDS, PIXEL_VALUES
from vla_export.data.preprocess import DEFAULT_INSTRUCTION, check_frame, prompt_for
from vla_export.errors import DataError, RunnerError

#: Tensor names of the split parts (the ONNX files, engines and torch part runners all use them).
BACKBONE_INPUTS = BACKBONE.input_names
BACKBONE_OUTPUTS = BACKBONE.output_names()
HEAD_INPUTS = HEAD.input_names
HEAD_OUTPUTS = HEAD.output_names()


def window_indices(step: int, window: int) -> list[int]:
    """Frame indices of the window the head sees at ``step`` (0-based), under the warm-up rule.

    ``window_indices(1, 4) == [0, 0, 0, 1]``; from ``step >= window - 1`` on it is the last ``window`` frames.
    """
    if step < 0 or window < 1:
        raise ValueError(f"step must be >= 0 and window >= 1, got step={step}, window={window}")
    return [max(0, step - window + 1 + i) for i in range(window)]


class FeatureRing:
    """The last ``window`` per-frame features. The first push fills every slot (the warm-up rule)."""

    def __init__(self, window: int):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self._buf: np.ndarray | None = None
        self._oldest = 0  # slot holding the oldest feature
        self.count = 0  # features pushed since the last clear

    def clear(self) -> None:
        self._buf, self._oldest, self.count = None, 0, 0

    def push(self, feature: np.ndarray) -> None:
        feature = np.asarray(feature, dtype=np.float32).reshape(-1)
        if self._buf is None or self._buf.shape[1] != feature.shape[0]:
            self._buf = np.repeat(feature[None], self.window, axis=0)
            self._oldest = 0
        else:
            self._buf[self._oldest] = feature
            self._oldest = (self._oldest + 1) % self.window
        self.count += 1

    def array(self) -> np.ndarray:
        """The window, oldest first: float32 [window, F]."""
        if self._buf is None:
            raise RunnerError("the feature window is empty: push a feature first")
        return np.concatenate((self._buf[self._oldest :], self._buf[: self._oldest]))


@dataclass(frozen=True)
class FixedPrompt:
    """A tokenizer stand-in that returns given token ids whatever the prompt.

    For configs without a local tokenizer (the full Kosmos-2 vocabulary) in benchmarks and export
    checks, which need the backbone's inputs, not a meaningful instruction.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    name: str = "fixed-ids"

    def encode(self, prompt: str, max_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.input_ids).reshape(-1), np.asarray(self.attention_mask).reshape(-1)


@dataclass(frozen=True)
class StepTiming:
    """Wall-clock milliseconds of the last step; runner ``infer`` synchronises, so these are complete."""

    preprocess_ms: float
    backbone_ms: float
    head_ms: float
    total_ms: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


class Policy:
    """``reset(instruction)`` once per episode, then ``step(frame) -> action`` once per control step.

    ``backbone`` and ``head`` are runners for the two parts (torch, ONNX Runtime or TensorRT, chosen
    per part). ``tokenizer`` is anything with ``encode(prompt, max_len) -> (input_ids, attention_mask)``
    (:func:`vla_export.data.tokenizer.tokenizer_for`); ``text_len`` pads the prompt to a fixed length
    (needed by engines with a static text shape), None keeps its own length.
    """

    def __init__(
        self,
        backbone: Runner,
        head: Runner,
        *,
        tokenizer: Any,
        window: int,
        image_size: int,
        action_dim: int | None = None,
        text_len: int | None = None,
        config: Any = None,
        windows: Any = None,
    ):
        self.backbone, self.head = backbone, head
        self.windows = windows
        self.tokenizer, self.window, self.image_size = tokenizer, window, image_size
        self.action_dim, self.text_len = action_dim, text_len
        self.config = config  # the PolicyConfig, where known (artifacts record it)
        self.ring = FeatureRing(window)
        self.instruction: str | None = None
        self._prompt: dict[str, np.ndarray] | None = None
        self.steps = 0
        self.last_timing: StepTiming | None = None
        self._checked = False

    @classmethod
    def from_artifacts(
        cls,
        split: str | Path,
        *,
        backbone: str | Path | Runner | None = None,
        head: str | Path | Runner | None = None,
        tokenizer: Any = None,
        tokenizer_dir: str | Path | None = None,
        window: int | None = None,
        text_len: int | None = None,
        providers: Sequence[str] | None = None,
    ) -> Policy:
        """A policy over the parts of a split export (``NAME.split.json``, its prefix ``NAME``, or its folder).

        ``backbone``/``head`` replace a part's ONNX file by another artifact, e.g. a TensorRT engine built
        from it (``.engine``), or by a runner (Triton's backbone model); each part's runner comes from
        :func:`~vla_export.backends.select.runner_for_artifact`. ``providers`` go to ONNX Runtime parts.
        :func:`vla_export.runtime.select.policy_for_artifact` also takes a checkpoint or preset.
        Not activated: use it as a context manager.
        """
        from vla_export.backends.select import runner_for_artifact
        from vla_export.data.tokenizer import tokenizer_for
        from vla_export.artifacts.manifest import read_split

        record = read_split(split)
        cfg = record.config
        chosen = {"backbone": backbone, "head": head}
        runners = {}
        for part in ("backbone", "head"):
            given = chosen[part]
            if isinstance(given, Runner):
                runners[part] = given
                continue
            path = Path(given) if given is not None else record.parts[part]
            runners[part] = runner_for_artifact(path, providers=providers)
        return cls(
            runners["backbone"], runners["head"], tokenizer=tokenizer or tokenizer_for(cfg, tokenizer_dir),
            window=window or record.window, image_size=cfg.image_size, action_dim=cfg.action_dim, text_len=text_len,
            config=cfg,
        )

    # --- lifecycle ---
    def activate(self) -> Policy:
        """Activate both runners (those not active yet) and check their inputs and outputs."""
        try:
            for runner in (self.backbone, self.head):
                if not runner.is_active:
                    runner.activate()
            self._check_runners()
        except BaseException:
            self.close()  # a context manager whose __enter__ fails gets no __exit__
            raise
        return self

    def _check_runners(self) -> None:
        parts = (("backbone", self.backbone, BACKBONE_INPUTS, BACKBONE_OUTPUTS), ("head", self.head, HEAD_INPUTS, HEAD_OUTPUTS))
        for role, runner, inputs, outputs in parts:
            if not runner.is_active:
                raise RunnerError(f"the {role} runner {runner.name} is not active: use the Policy as a context manager or call activate()")
            if set(runner.input_names) != set(inputs) or outputs[0] not in runner.output_names:
                raise RunnerError(
                    f"the {role} runner {runner.name} takes {list(runner.input_names)} and gives {list(runner.output_names)}; "
                    f"a {role} part takes {list(inputs)} and gives {list(outputs)} (was it exported with --split?)"
                )
        self._checked = True

    def close(self) -> None:
        for runner in (self.backbone, self.head):
            runner.deactivate()

    def __enter__(self) -> Policy:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- control loop ---
    def prompt_feed(self, instruction: str | None) -> dict[str, np.ndarray]:
        """The backbone's text inputs [1, L] for ``instruction`` (the shared prompt template)."""
        ids, mask = self.tokenizer.encode(prompt_for(instruction), self.text_len)
        return {INPUT_IDS: np.asarray(ids, dtype=np.int64).reshape(1, -1), ATTENTION_MASK: np.asarray(mask, dtype=np.int64).reshape(1, -1)}

    @property
    def prompt(self) -> dict[str, np.ndarray] | None:
        """The backbone's text inputs [1, L] set by the last :meth:`reset` (None before one)."""
        return self._prompt

    def sibling(self) -> Policy:
        """A new policy sharing this one's runners and settings, with no episode yet (one per robot in a server)."""
        return Policy(self.backbone, self.head, tokenizer=self.tokenizer, window=self.window, image_size=self.image_size,
                      action_dim=self.action_dim, text_len=self.text_len, config=self.config, windows=self.windows)

    def reset(self, instruction: str) -> None:
        """Start an episode: tokenise the instruction once and empty the feature window.

        Refused here, not at every later step: an instruction that is not a non-empty string, or one
        longer than the policy's text length (the model has no positions for more tokens).
        """
        if not isinstance(instruction, str) or not instruction.strip():
            raise DataError(
                f"Policy.reset() needs the instruction as a non-empty string, got {instruction!r} "
                f"(e.g. {DEFAULT_INSTRUCTION!r})"
            )
        prompt = self.prompt_feed(instruction)
        limit = self.max_prompt_tokens()
        tokens = int(prompt[ATTENTION_MASK].sum())
        if limit is not None and tokens > limit:
            raise DataError(
                f"the instruction is {tokens} tokens with the prompt template, more than the policy's text length of "
                f"{limit}: shorten it"
            )
        self._prompt = prompt
        self.instruction = instruction
        self.ring.clear()
        if self.windows is not None:
            self.windows.forget(self)
        self.steps = 0
        self.last_timing = None

    def max_prompt_tokens(self) -> int | None:
        """The most prompt tokens a step can take: the config's text length (TensorRT profiles end
        there), and never more than the text model has positions for after the image prefix
        (beyond that ONNX Runtime fails inside a Gather). None when the config is not known.
        """
        cfg = self.config
        if cfg is None:
            return None
        return min(cfg.max_text_len, cfg.kosmos_text.max_position_embeddings - cfg.prefix_len)

    def step(self, frame: np.ndarray) -> np.ndarray:
        """One uint8 [H, W, 3] RGB camera frame -> the action, float32 [action_dim]."""
        if self._prompt is None:
            raise RunnerError("Policy.step() before Policy.reset(instruction): call reset() at the start of each episode")
        check_frame(frame)
        if not self._checked:
            self._check_runners()
        if self.windows is not None:
            return step_on_device([self], [frame])[0]
        t0 = time.perf_counter()
        pixels = self.backbone.preprocess([frame], self.image_size)
        t1 = time.perf_counter()
        feature = self.backbone.infer({PIXEL_VALUES: pixels, **self._prompt})[BACKBONE_OUTPUTS[0]]
        t2 = time.perf_counter()
        self.ring.push(feature[0])
        actions = self.head.infer({HEAD_INPUTS[0]: self.ring.array()[None]})[HEAD_OUTPUTS[0]]
        t3 = time.perf_counter()
        action = np.asarray(actions, dtype=np.float32).reshape(-1)
        if self.action_dim is not None and action.shape[0] != self.action_dim:
            raise RunnerError(f"head {self.head.name} returned {action.shape[0]} actions, expected {self.action_dim}")
        self.steps += 1
        ms = 1e3
        self.last_timing = StepTiming((t1 - t0) * ms, (t2 - t1) * ms, (t3 - t2) * ms, (t3 - t0) * ms)
        return action

    @property
    def last_latency_ms(self) -> float | None:
        """Total milliseconds of the last ``step`` (preprocessing, backbone, head); None before one."""
        return None if self.last_timing is None else self.last_timing.total_ms

    def describe(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "warmup": "pad with the first frame's feature",
            "text_len": self.text_len,
            "tokenizer": getattr(self.tokenizer, "name", type(self.tokenizer).__name__),
            "backbone": self.backbone.describe(),
            "head": self.head.describe(),
        }


def step_on_device(policies: Sequence[Policy], frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    """One step of ``policies`` (sharing runners and a ``windows`` store) with the features kept on the device.

    What :meth:`Policy.step` does, batched: the shared preprocessing where the backbone runs, one backbone
    call, each feature written into its policy's window on the device, one head call on the windows, the
    actions to the host. The caller has checked the frames, the prompts and that the runners are shared.
    """
    first = policies[0]
    backbone, head = first.backbone, first.head
    t0 = time.perf_counter()
    pixels = backbone.preprocess(frames, first.image_size)
    t1 = time.perf_counter()
    feed = {PIXEL_VALUES: pixels, **{name: np.concatenate([p.prompt[name] for p in policies]) for name in first.prompt}}
    features = backbone.execute(backbone.stage(feed))[BACKBONE_OUTPUTS[0]]
    backbone.synchronize()  # so the phase times say which part took the time
    t2 = time.perf_counter()
    windows = first.windows.push(policies, features)
    out = head.execute(head.stage({HEAD_INPUTS[0]: windows}))
    head.synchronize()
    actions = head.to_host(out)[HEAD_OUTPUTS[0]]
    t3 = time.perf_counter()
    return finish_steps(policies, actions, (t0, t1, t2, t3))


def finish_steps(policies: Sequence[Policy], actions: Any, marks: Sequence[float]) -> list[np.ndarray]:
    """The end of a batched step: check each policy's action, count the step, record the timing
    (``marks``: start, preprocessed, backbone done, head done; perf_counter seconds); the actions."""
    t0, t1, t2, t3 = marks
    ms = 1e3
    timing = StepTiming((t1 - t0) * ms, (t2 - t1) * ms, (t3 - t2) * ms, (t3 - t0) * ms)
    result = []
    for p, action in zip(policies, np.asarray(actions, dtype=np.float32).reshape(len(policies), -1)):
        if p.action_dim is not None and action.shape[0] != p.action_dim:
            raise RunnerError(f"head {p.head.name} returned {action.shape[0]} actions, expected {p.action_dim}")
        p.steps += 1
        p.last_timing = timing
        result.append(action.copy())
    return result
