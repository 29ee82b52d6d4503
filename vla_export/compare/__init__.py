"""Comparing outputs, below every tool: tolerances, the per-output comparator, its discrimination rule and
locate's per-layer rule (as Polygraphy keeps its ``comparator`` below its tools).

Verify orchestrates what is compared; export (split, sensitivity) and bench (the parity column) reuse the same
comparator, so none of them imports another tool.
"""
