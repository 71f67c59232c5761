"""Exporting trained models to other runtimes (ONNX)."""
