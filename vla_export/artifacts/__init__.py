"""What vla-export writes and reads back, below every tool: artifact kinds, typed manifests and split records,
ONNX files and graph helpers, saved references, and ``inspect``.

export, verify, bench and serve all read artifacts; none of them owns the format, so it lives here.
"""
