"""One control step for several robots at once: :meth:`Policy.step` with the backbone and head batched.

A server holds one :class:`Policy` per robot, all sharing the same two runners. Stepping them one by
one runs the backbone once per robot; :func:`step_batch` does exactly what ``Policy.step`` does for
each of them (the same frame check, the same shared preprocessing, the same feature ring and warm-up
rule, the same action check) but feeds all their frames to the backbone in one call and all their
windows to the head in one call. The parts have a dynamic batch axis, and every prompt must have the
same length (a fixed ``text_len``), so the results equal the one-by-one steps within float tolerance.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from vla_export.data.iospec import INPUT_IDS, PIXEL_VALUES
from vla_export.data.preprocess import check_frame
from vla_export.errors import RunnerError
from vla_export.runtime.policy import BACKBONE_OUTPUTS, HEAD_INPUTS, HEAD_OUTPUTS, Policy, finish_steps, step_on_device


def step_batch(policies: Sequence[Policy], frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``policies[i].step(frames[i])`` for every i, with one backbone call and one head call.

    The policies must share their backbone and head runners and have been reset; one policy is just
    ``Policy.step``. Raises :class:`RunnerError` when they do not share runners or their prompts differ
    in length (tokenise with a fixed ``text_len``), :class:`~vla_export.errors.DataError` for a bad frame.
    """
    if len(policies) != len(frames):
        raise ValueError(f"{len(policies)} policies but {len(frames)} frames")
    if not policies:
        return []
    if len(policies) == 1:
        return [policies[0].step(frames[0])]
    first = policies[0]
    for p in policies:
        if p.backbone is not first.backbone or p.head is not first.head:
            raise RunnerError("step_batch: the policies must share one backbone runner and one head runner")
        if p.prompt is None:
            raise RunnerError("Policy.step() before Policy.reset(instruction): call reset() at the start of each episode")
        if p.prompt[INPUT_IDS].shape != first.prompt[INPUT_IDS].shape:
            raise RunnerError(
                f"step_batch: prompts of {p.prompt['input_ids'].shape[1]} and {first.prompt['input_ids'].shape[1]} tokens "
                "cannot share a batch; tokenise with a fixed text_len"
            )
        if p.image_size != first.image_size or p.window != first.window:
            raise RunnerError("step_batch: the policies differ in image size or window")
        if p.windows is not first.windows:
            raise RunnerError("step_batch: the policies must share one feature-window store (or all have none)")
    for frame in frames:
        check_frame(frame)
    if first.windows is not None:  # features and windows stay on the device
        return step_on_device(policies, frames)
    t0 = time.perf_counter()
    pixels = first.backbone.preprocess(frames, first.image_size)  # the shared preprocessing, where the backbone runs
    t1 = time.perf_counter()
    feed = {PIXEL_VALUES: pixels}
    for name in first.prompt:
        feed[name] = np.concatenate([p.prompt[name] for p in policies])
    features = first.backbone.infer(feed)[BACKBONE_OUTPUTS[0]]
    t2 = time.perf_counter()
    for p, feature in zip(policies, features):
        p.ring.push(feature)
    windows = np.stack([p.ring.array() for p in policies])
    actions = first.head.infer({HEAD_INPUTS[0]: windows})[HEAD_OUTPUTS[0]]
    t3 = time.perf_counter()
    return finish_steps(policies, actions, (t0, t1, t2, t3))


def warm_up(template: Policy, batch_sizes: Sequence[int], *, frame_hw: tuple[int, int] = (224, 224)) -> None:
    """One :func:`step_batch` per batch size, largest first, on fresh policies sharing ``template``'s runners.

    A server calls this before its first robot: CUDA graphs are captured (and ``torch.compile`` runs) for
    every batch size it will meet, instead of inside some robot's control step.
    """
    frame = np.zeros((*frame_hw, 3), dtype=np.uint8)
    for n in sorted({int(b) for b in batch_sizes}, reverse=True):
        policies = [template.sibling() for _ in range(n)]
        for p in policies:
            p.reset("warm up")
        step_batch(policies, [frame] * n)
