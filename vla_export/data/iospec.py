"""The policy's I/O, specified once: names, dtypes, axis roles, dynamic axes, dummy inputs.

Optimum keeps one ``OnnxConfig`` per model for the same reason: the exporter, the TensorRT profile
builder, calibration, the streaming runtime and the data sources must agree on what goes in and
comes out. Three graphs share the vocabulary: the whole ``POLICY``, and the ``BACKBONE`` (one
frame -> one feature) and ``HEAD`` (a window of features -> the action) of a split export.

Axis roles say what a dimension means, so that defaults can be derived from them: ``batch`` and
``text`` are always dynamic in an export; ``window`` is dynamic in the head (one file serves any
window) and, on request, in the whole policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from vla_export.data.source import SyntheticSource
from vla_export.models.config import PolicyConfig

#: The policy's tensor names: every module that feeds or reads a graph spells them with these.
PIXEL_VALUES = "pixel_values"
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
ACTIONS = "actions"
#: The per-frame features of a window (the whole policy's debug output, the head's input).
FEATURES = "features"
#: One frame's feature (the backbone's output).
FEATURE = "feature"

#: The name each dynamic role gets in an exported graph.
DIM_NAMES = {"batch": "batch", "text": "text_len", "window": "window"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # NumPy dtype name
    axes: tuple[str, ...]  # the role of each axis

    def role(self, axis: int) -> str | None:
        return self.axes[axis] if 0 <= axis < len(self.axes) else None


@dataclass(frozen=True)
class GraphSpec:
    """One exported graph's inputs and outputs."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    #: Outputs added with ``--debug-outputs`` (intermediate tensors parity can compare too).
    debug_outputs: tuple[TensorSpec, ...] = ()
    #: Roles that are dynamic in every export of this graph.
    dynamic_roles: tuple[str, ...] = ("batch", "text")

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    def output_names(self, debug: bool = False) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs + (self.debug_outputs if debug else ()))

    def dynamic_axes(self, *, dynamic_window: bool = False, outputs: bool = False) -> dict[str, dict[int, str]]:
        """``{input name: {axis: dim name}}`` for the exporter (outputs too when asked)."""
        roles = set(self.dynamic_roles) | ({"window"} if dynamic_window else set())
        tensors = self.inputs + ((self.outputs + self.debug_outputs) if outputs else ())
        return {t.name: {i: DIM_NAMES[r] for i, r in enumerate(t.axes) if r in roles} for t in tensors}

    def role(self, name: str, axis: int) -> str | None:
        for t in self.inputs + self.outputs + self.debug_outputs:
            if t.name == name:
                return t.role(axis)
        return None


_PIXELS = ("channel", "height", "width")
_IDS = TensorSpec(INPUT_IDS, "int64", ("batch", "text"))
_MASK = TensorSpec(ATTENTION_MASK, "int64", ("batch", "text"))

POLICY = GraphSpec(
    "policy",
    inputs=(TensorSpec(PIXEL_VALUES, "float32", ("batch", "window", *_PIXELS)), _IDS, _MASK),
    outputs=(TensorSpec(ACTIONS, "float32", ("batch", "action")),),
    debug_outputs=(TensorSpec(FEATURES, "float32", ("batch", "window", "feature")),),
)
BACKBONE = GraphSpec(
    "backbone",
    inputs=(TensorSpec(PIXEL_VALUES, "float32", ("batch", *_PIXELS)), _IDS, _MASK),
    outputs=(TensorSpec(FEATURE, "float32", ("batch", "feature")),),
)
HEAD = GraphSpec(
    "head",
    inputs=(TensorSpec(FEATURES, "float32", ("batch", "window", "feature")),),
    outputs=(TensorSpec(ACTIONS, "float32", ("batch", "action")),),
    dynamic_roles=("batch", "window"),
)
GRAPHS: Mapping[str, GraphSpec] = {g.name: g for g in (POLICY, BACKBONE, HEAD)}
#: The whole policy's inputs, the names data sources, calibration sets and runners use.
INPUT_NAMES = POLICY.input_names


def axis_role(name: str, axis: int) -> str | None:
    """The role of axis ``axis`` of the tensor called ``name`` in any of the graphs (None if unknown)."""
    for graph in GRAPHS.values():
        role = graph.role(name, axis)
        if role is not None:
            return role
    return None


def dummy_inputs(graph: GraphSpec, config: PolicyConfig, *, batch: int = 1, window: int | None = None,
                 text_len: int | None = None, seed: int = 0, index: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs of ``graph`` for ``config``: what exports trace with and checks compare on.

    The head's features are random here; checks that need the real features of a frame window run
    the backbone (or the PyTorch policy) on :func:`dummy_inputs` of ``POLICY``.
    """
    if graph is HEAD:
        rng = np.random.default_rng([seed, index])
        t = config.window if window is None else window
        return {FEATURES: rng.standard_normal((batch, t, config.frame_feature_dim), dtype=np.float32)}
    sample = SyntheticSource(config, seed=seed, batch=batch, window=window, text_len=text_len).sample(index)
    if graph is BACKBONE:
        sample = {**sample, PIXEL_VALUES: sample[PIXEL_VALUES][:, 0]}
    return {name: sample[name] for name in graph.input_names}
