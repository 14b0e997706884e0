"""Placeholder: quantization.gptq (being written)."""
