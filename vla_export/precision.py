"""Precisions and their parity tolerances: one table that parity, replay and the engine builder share.

What an artifact must match depends on the precision it computes in; the defaults are argued in
the README ("INT8 parity"). Low level on purpose: the runtime, export and CLI all ask it.
"""

from __future__ import annotations

from collections.abc import Iterable


#: From the most to the least exact: the "loosest" of several is the last one present.
PRECISIONS = ("fp32", "fp16", "int8")








def loosest(precisions: Iterable[str]) -> str:
    """The least exact of ``precisions`` (fp32 when none is given)."""
    return max(["fp32", *precisions], key=PRECISIONS.index)






