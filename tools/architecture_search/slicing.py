"""Placeholder: architecture_search.slicing (being written)."""
