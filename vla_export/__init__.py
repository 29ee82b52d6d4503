"""vla-export: from a VLA policy checkpoint to a verified ONNX model and TensorRT engine.

Importing this package is cheap and has no side effects: torch, transformers, onnx and the
optional GPU stacks are imported inside the functions that need them.
"""

__version__ = "0.1.0"
