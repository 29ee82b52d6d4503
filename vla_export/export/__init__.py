"""Exporters: PyTorch modules and policies to ONNX (and, elsewhere, ONNX to TensorRT engines)."""
