"""Prompt templates of the reasoning agents, one markdown file per agent (loaded by `agents.prompts`)."""
