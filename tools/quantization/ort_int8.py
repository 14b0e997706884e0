"""Placeholder: quantization.ort_int8 (being written)."""
