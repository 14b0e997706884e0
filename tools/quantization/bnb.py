"""Placeholder: quantization.bnb (being written)."""
