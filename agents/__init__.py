"""Reasoning agents (intake, analysis, planning, evaluation): prompt + typed output schema + reasoner call."""
