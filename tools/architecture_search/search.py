"""Placeholder: architecture_search.search (being written)."""
