"""Precisions and their parity tolerances: one table that parity, replay and the engine builder share.

What an artifact must match depends on the precision it computes in; the defaults are argued in
the README ("INT8 parity"). Low level on purpose: the runtime, export and CLI all ask it.
"""

from __future__ import annotations

from collections.abc import Iterable

from vla_export.choices import TOLERANCE_PRECISIONS, Precision

#: From the most to the least exact: the "loosest" of several is the last one present.
PRECISIONS = TOLERANCE_PRECISIONS








def loosest(precisions: Iterable[str]) -> Precision:
    """The least exact of ``precisions`` (fp32 when none is given)."""
    return max([Precision.FP32, *(Precision(p) for p in precisions)], key=PRECISIONS.index)






