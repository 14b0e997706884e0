"""Placeholder: quantization.ort_int4 (being written)."""
