"""Placeholder: compression.lowrank (being written)."""
