"""Reasoning agents: goal intake, analysis, planning and evaluation.

Each agent is one module holding its typed input and output schemas, the name of its prompt in `prompts/`, and
its rule-based counterpart, side by side, so the LLM and the rules answer the same question in the same shape.
Agents call a `Reasoner` (`agents.base`): the offline `RuleReasoner` or the `LLMReasoner` (`agents.llm`).
"""
