"""Backend runners: one interface (activate / infer / deactivate) for torch, ONNX Runtime and TensorRT."""
