"""Placeholder: compression.clustering (being written)."""
