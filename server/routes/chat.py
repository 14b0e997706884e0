"""/chat: one chat turn. The intake agent reads the conversation's goal; with a model (an uploaded one, or a
bundled reference by name), the job starts.

The latest user message is the goal; earlier user messages are the base it amends (as `robopt optimize`'s
intake reads them). A goal that needs an answer is refused with 422 `goal_unclear` whose message is the
question: the client shows it, and sends the user's answer as the next message.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response, status

from agents.intake import AccuracyKind, GoalSpec, ModelFacts
from server.deps import AppServices, ServicesDep
from server.routes.jobs import start_job
from server.schemas import ChatRequest, ChatResponse, JobCreate, error_responses
from tools.errors import ValidationError

router = APIRouter(tags=["chat"])
CLOSED_LOOP = AccuracyKind(level="closed_loop", metric="success_rate", higher_is_better=True)


def _simulator_accuracy(simulator: str) -> AccuracyKind:
    """The headline a job with this simulator measures: action agreement in LeRobot's, else success rate."""
    from tools.evaluation.simulators import judges_by_agreement

    if judges_by_agreement(simulator):
        return AccuracyKind(level="closed_loop_agreement", metric="action_agreement", higher_is_better=True)
    return CLOSED_LOOP


def describe_goal(goal: GoalSpec) -> str:
    """The criteria and assumptions in one short paragraph, as the assistant's reply."""
    c = goal.criteria
    parts = []
    if c.max_size_mb is not None:
        parts.append(f"at most {c.max_size_mb:g} MiB")
    if c.max_latency_ms is not None:
        parts.append(f"p50 at most {c.max_latency_ms:g} ms on {c.latency_target}")
    if c.max_memory_mb is not None:
        parts.append(f"peak memory at most {c.max_memory_mb:g} MB")
    if c.min_speedup is not None:
        parts.append(f"at least {c.min_speedup:g}x faster")
    if c.min_compression is not None:
        parts.append(f"at least {c.min_compression:g}x smaller")
    if c.accuracy_floor is not None:
        parts.append(f"{c.accuracy_metric} at least {c.accuracy_floor:g}")
    if c.max_accuracy_drop is not None:
        unit = "" if c.accuracy_drop_unit == "absolute" else "%"
        parts.append(f"{c.accuracy_metric} drop at most {c.max_accuracy_drop:g}{unit}")
    text = "Goal: " + (", ".join(parts) or "no hard limit") + f"; objective: {goal.objective}."
    if goal.assumptions:
        text += " Assumed: " + "; ".join(goal.assumptions) + "."
    return text


def _split(request: ChatRequest) -> tuple[str, list[str]]:
    """The latest user message (the goal) and the earlier ones (its base)."""
    said = [m.content for m in request.messages if m.role == "user"]
    if not said:
        raise ValidationError(
            "the conversation has no user message", hint='add {"role": "user", "content": "<your goal>"}'
        )
    return said[-1], said[:-1]


def _one_model(request: ChatRequest) -> None:
    """Refuse a turn that names both an uploaded model and a reference: the job could start on only one."""
    if request.model_id is not None and request.reference is not None:
        raise ValidationError(
            "give at most one of model_id and reference",
            hint="pass the id of a model uploaded with POST /api/v1/models, or name a reference model "
            "(GET /api/v1/references), not both",
        )


def _reference_facts(name: str, client_params: int | None) -> ModelFacts:
    """What is known of a reference without building it: its name, the format a job gets, and the size of the
    weights that ship with it (else the parameter count the client gave)."""
    from tools.reference import REFERENCE_FORMATS, reference_entry
    from tools.reference.shipped import shipped_parameter_count

    entry = reference_entry(name)
    params = shipped_parameter_count(name)
    return ModelFacts(
        name=name,
        format=REFERENCE_FORMATS[entry.kind],
        params=params if params is not None else client_params,
    )


async def _facts(services: AppServices, request: ChatRequest) -> ModelFacts:
    """What is known of the model: the uploaded one, the reference, or the parameter count the client gave."""
    if request.reference is not None:
        return await asyncio.to_thread(_reference_facts, request.reference, request.model_params)
    if request.model_id is None:
        return ModelFacts(params=request.model_params)
    record = await asyncio.to_thread(services.models.get, request.model_id)
    return ModelFacts(
        name=record.name, format=record.format, params=record.params, artifact_bytes=record.size_bytes
    )


@router.post(
    "/chat",
    response_model=ChatResponse,
    responses={
        202: {"model": ChatResponse, "description": "The goal is clear and the job started."},
        **error_responses(400, 404, 409, 422, 503),
    },
)
async def chat(request: ChatRequest, response: Response, services: ServicesDep) -> ChatResponse:
    """Read the goal from the conversation: the criteria, 422 with a question, or a started job (202)."""
    text, history = _split(request)
    _one_model(request)
    facts = await _facts(services, request)
    accuracy = _simulator_accuracy(request.simulator) if request.simulator else AccuracyKind()
    goal = await services.jobs.parse_goal(text, facts, accuracy, request.target, history)
    has_model = request.model_id is not None or request.reference is not None
    if not has_model or not request.start:
        hint = (
            ""
            if has_model
            else " Upload the model (POST /api/v1/models) and send its model_id, or name a reference model"
            " (GET /api/v1/references), to start."
        )
        return ChatResponse(reply=describe_goal(goal) + hint, goal=goal)
    body = JobCreate(
        model_id=request.model_id,
        reference=request.reference,
        goal=text,
        target=request.target,
        dataset_id=request.dataset_id,
        simulator=request.simulator,
        max_attempts=request.max_attempts,
        time_budget_s=request.time_budget_s,
        stop_at_first=request.stop_at_first,
    )
    accepted = await start_job(services, body, history)
    response.status_code = status.HTTP_202_ACCEPTED
    started = accepted.goal or goal
    return ChatResponse(
        reply=f"{describe_goal(started)} Started job {accepted.job.id}; follow {accepted.job.links.events}.",
        goal=started,
        job=accepted.job,
    )
