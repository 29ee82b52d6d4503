"""Broken artifacts that a check against a random policy lets through: ONNX graphs whose ``actions`` output is
replaced, by graph surgery, with a constant (the reference's mean action)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper


def constant_actions(src: Path, dst: Path, value) -> Path:
    """A copy of ``src`` whose ``actions`` output is ``0 * actions + value`` (same shape, batch kept), with its manifest."""
    model = onnx.load(str(src))
    inner = "actions__before_constant"
    for node in model.graph.node:
        node.output[:] = [inner if o == "actions" else o for o in node.output]
        node.input[:] = [inner if i == "actions" else i for i in node.input]
    value = np.asarray(value, dtype=np.float32).reshape(1, -1)
    model.graph.initializer.extend([numpy_helper.from_array(np.zeros((1, 1), np.float32), "constant__zero"),
                                    numpy_helper.from_array(value, "constant__value")])
    model.graph.node.extend([
        helper.make_node("Mul", [inner, "constant__zero"], ["actions__zeroed"], name="constant__mul"),
        helper.make_node("Add", ["actions__zeroed", "constant__value"], ["actions"], name="constant__add"),
    ])
    onnx.save(model, str(dst))
    manifest = Path(str(src) + ".json")
    if manifest.exists():
        shutil.copy(manifest, str(dst) + ".json")
    return dst
