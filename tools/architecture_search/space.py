"""Placeholder: architecture_search.space (being written)."""
