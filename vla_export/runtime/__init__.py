"""The robot-side runtime: a streaming :class:`Policy` over one runner per exported part.

Importing this package needs NumPy only (no torch), so a robot that runs the ONNX Runtime or
TensorRT parts does not carry PyTorch. The PyTorch parts live in :mod:`vla_export.runtime.parts`.
"""

from vla_export.runtime.policy import (
    BACKBONE_INPUTS,
    BACKBONE_OUTPUTS,
    HEAD_INPUTS,
    HEAD_OUTPUTS,
    FeatureRing,
    FixedPrompt,
    Policy,
    StepTiming,
    window_indices,
)
from vla_export.runtime.select import policy_for_artifact

__all__ = [
    "BACKBONE_INPUTS",
    "BACKBONE_OUTPUTS",
    "HEAD_INPUTS",
    "HEAD_OUTPUTS",
    "FeatureRing",
    "FixedPrompt",
    "Policy",
    "StepTiming",
    "policy_for_artifact",
    "window_indices",
]
