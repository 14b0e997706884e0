"""Schemathesis against a running robopt service, in process: every phase (examples, coverage, fuzzing,
stateful) and every check, with a tally of what it sent and what it found (the test and the benchmark share it).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tests.server.api_support import Server

# The operations that judge the *content* of a schema-valid request: a goal in plain words that intake cannot
# read (422 goal_unclear, with the question), or a file that is not a model or data robopt reads (422
# unsupported_format / input_spec_error). No JSON schema can say "an ONNX file" or "a goal that makes sense", so
# a schema-valid request may rightly get 422 there (RFC 9110: well-formed, but not processable). Everywhere else
# positive_data_acceptance keeps its default: no 422 for schema-valid data.
CONTENT_JUDGED = r"^/api/v1/(models|datasets|jobs|chat|jobs/\{job_id\}/replay)$"
ACCEPTED_STATUSES = ["2XX", "3XX", "401", "403", "404", "409", "422", "429", "5XX"]


@dataclass
class Tally:
    """What a run sent and found."""

    requests: int = 0
    by_status_class: Counter[str] = field(default_factory=Counter)
    by_phase: Counter[str] = field(default_factory=Counter)
    failures_by_check: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """The counts, one per line."""
        lines = [f"requests: {self.requests}"]
        lines += [f"  {name}: {count}" for name, count in sorted(self.by_status_class.items())]
        lines += [f"  phase {name}: {count}" for name, count in sorted(self.by_phase.items())]
        lines.append(f"failures: {sum(self.failures_by_check.values())}")
        lines += [f"  {name}: {count}" for name, count in sorted(self.failures_by_check.items())]
        lines.append(f"errors: {len(self.errors)}")
        return "\n".join(lines)


def schema_config(max_examples: int, seed: int, max_steps: int) -> Any:
    """Every check and phase, a bounded number of examples and stateful steps, 422 allowed where the server
    judges content."""
    import schemathesis

    return schemathesis.Config.from_dict(
        {
            "seed": seed,
            "checks": {"enabled": True},
            "generation": {"max-examples": max_examples, "database": "none"},  # no .hypothesis/ in the repo
            "phases": {"stateful": {"max-steps": max_steps}},
            "operations": [
                {
                    "include-method": "POST",
                    "include-path-regex": CONTENT_JUDGED,
                    "checks": {"positive_data_acceptance": {"expected-statuses": ACCEPTED_STATUSES}},
                }
            ],
        }
    )


def load_schema(server: Server, *, max_examples: int = 5, seed: int = 0, max_steps: int = 6) -> Any:
    """The server's live /openapi.json as schemathesis reads it."""
    import schemathesis

    config = schema_config(max_examples, seed, max_steps)
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json", config=config, timeout=30)


def run_schemathesis(server: Server, *, max_examples: int, seed: int = 0, max_steps: int = 6) -> Tally:
    """Run every phase against the server's live /openapi.json; tally requests, statuses and failures."""
    from schemathesis.engine import Status, events, from_schema

    schema = load_schema(server, max_examples=max_examples, seed=seed, max_steps=max_steps)
    tally = Tally()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            for interaction in recorder.interactions.values():
                tally.requests += 1
                tally.by_phase[str(event.phase.value)] += 1
                status = interaction.response.status_code if interaction.response is not None else None
                tally.by_status_class["no response" if status is None else f"{status // 100}xx"] += 1
            for case_id, checks in recorder.checks.items():
                for check in checks:
                    if check.status == Status.FAILURE:
                        tally.failures_by_check[check.name] += 1
                        request = recorder.interactions.get(case_id)
                        where = recorder.label
                        if request is not None:
                            answer = request.response.status_code if request.response is not None else None
                            where = f"{request.request.method} {request.request.uri} -> {answer}"
                        title = check.failure_info.failure.title if check.failure_info else ""
                        tally.failures.append(f"{check.name}: {where}: {title}")
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            tally.errors.append(str(getattr(event, "value", None) or getattr(event, "exception", "")))
    return tally
