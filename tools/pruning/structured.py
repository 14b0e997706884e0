"""Placeholder: pruning.structured (being written)."""
