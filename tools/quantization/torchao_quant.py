"""Placeholder: quantization.torchao_quant (being written)."""
