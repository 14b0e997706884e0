"""Placeholder: distillation (being written)."""
