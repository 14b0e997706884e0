"""The reasoner contract: an agent is a prompt + typed input + typed output + expert rules; a reasoner decides.

`AgentSpec` binds one agent's schemas, prompt name, rules and semantic check. A `Reasoner` turns an input into a
validated output and says where it came from (`Decision.source`): the rules, the LLM, or the rules after the LLM
failed (`fallback_reason` then says why). The graph records that source with every decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Generic, Literal, Protocol, TypeVar

from pydantic import BaseModel

In = TypeVar("In", bound=BaseModel)
Out = TypeVar("Out", bound=BaseModel)

DecisionSource = Literal["rules", "llm", "rules_fallback"]


@dataclass(frozen=True)
class AgentSpec(Generic[In, Out]):
    """One agent: its name, prompt template, input and output types, expert rules and semantic check.

    `check(payload, output)` raises `tools.errors.ValidationError` when an output is well-formed but wrong for
    this input (a technique that is not available, a criterion the user never asked for); the LLM reasoner
    treats that like malformed output. The rules' own output must always pass it.
    """

    name: str
    prompt: str
    input_type: type[In]
    output_type: type[Out]
    rules: Callable[[In], Out]
    check: Callable[[In, Out], None] | None = None

    def run_rules(self, payload: In) -> Out:
        """Answer with the expert rules, checked like any other output."""
        output = self.rules(payload)
        if self.check is not None:
            self.check(payload, output)
        return output


@dataclass(frozen=True)
class Decision(Generic[Out]):
    """A reasoner's validated answer and its provenance."""

    output: Out
    source: DecisionSource
    reasoner: str
    model: str | None = None
    llm_attempts: int = 0
    fallback_reason: str | None = None
    notes: list[str] = field(default_factory=list)


class Reasoner(Protocol):
    """Anything that can answer an agent's question with a validated output."""

    name: str

    async def decide(self, agent: AgentSpec[In, Out], payload: In) -> Decision[Out]:
        """Return the agent's output for `payload`, validated against `agent.output_type` and `agent.check`."""
        ...


class RuleReasoner:
    """The offline default: every agent answers with its expert rules; deterministic, no network."""

    name = "rules"

    async def decide(self, agent: AgentSpec[In, Out], payload: In) -> Decision[Out]:
        """Answer with the agent's rules."""
        return Decision(output=agent.run_rules(payload), source="rules", reasoner=self.name)
