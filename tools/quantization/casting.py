"""Placeholder: quantization.casting (being written)."""
