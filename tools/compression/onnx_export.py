"""Placeholder: compression.onnx_export (being written)."""
