"""Deterministic work on models: intake, profiling, techniques, measurement, targets, version store.

Nothing here knows about LLMs, graphs or HTTP; this is the part a user can script directly.
"""
