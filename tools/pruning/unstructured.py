"""Placeholder: pruning.unstructured (being written)."""
