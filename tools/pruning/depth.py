"""Placeholder: pruning.depth (being written)."""
