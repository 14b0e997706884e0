"""Tests of the reasoning agents (goal intake, ...)."""
