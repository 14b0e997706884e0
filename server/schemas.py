"""Request and response bodies of the HTTP API (`XCreate` in, `XPublic` out, `XsPublic(data, count)` lists).

Everything the OpenAPI document at /docs shows is generated from these models.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agents.intake import GoalSpec

JobStatus = Literal["queued", "running", "succeeded", "best_effort", "failed", "cancelled", "needs_input"]
"""A job's status (the history DB's JOB_STATUSES)."""


class ErrorPublic(BaseModel):
    """Every error answer: a stable code, one line, what was wrong in detail, and what to do."""

    code: str = Field(description="Stable machine-readable code, e.g. not_found, goal_unclear, service_busy.")
    message: str
    detail: dict[str, Any] = Field(default_factory=dict)
    hint: str | None = None


ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "The body could not be parsed as the content type it names (bad_request).",
    401: "No valid API key (only when the server has ROBOPT_API_KEY set).",
    403: "The request reached a non-loopback address of a server without an API key (insecure_bind).",
    404: "An id that does not exist (not_found).",
    409: "The resource's state does not allow it now (conflict), or a stored artifact failed its hash check.",
    413: "The upload passed ROBOPT_MAX_UPLOAD_BYTES (upload_too_large); nothing was kept.",
    422: "The request is invalid, or its content cannot be used: a body or query outside the schema "
    "(validation_error), a goal needing an answer (goal_unclear), a file that is not a usable model or data.",
    503: "The service cannot take the job now (service_busy): queue full or not enough free memory.",
}
ERROR_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    503: {
        "Retry-After": {"description": "Seconds to wait before trying again.", "schema": {"type": "string"}}
    },
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of the error statuses a route answers, each with the `ErrorPublic` body."""
    return {
        status: {
            "model": ErrorPublic,
            "description": ERROR_DESCRIPTIONS[status],
            **({"headers": ERROR_HEADERS[status]} if status in ERROR_HEADERS else {}),
        }
        for status in statuses
    }


class ModelPublic(BaseModel):
    """An uploaded model: what intake found and the measured profile (the analysis)."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    filename: str
    format: str
    size_bytes: int
    sha256: str
    params: int
    created: datetime
    options: dict[str, Any] = Field(description="How the model is loaded (architecture, input specs, trust).")
    profile: dict[str, Any] = Field(
        description="Parameters, FLOPs, components, architecture, and latency/memory measured on this server."
    )


class ModelsPublic(BaseModel):
    data: list[ModelPublic]
    count: int


class ReferencePublic(BaseModel):
    """A bundled reference model a job can start from (`"reference": name` instead of `model_id`)."""

    name: str
    description: str
    kind: Literal["torch_policy", "hf_directory", "archives"] = Field(
        description="torch_policy: a trained torch policy; hf_directory: a tiny random-weight Hugging Face "
        "model; archives: a .zip of one."
    )
    format: str = Field(description="What the job is given: torch_state_dict, hf_directory or zip.")
    trained: bool = Field(description="Whether it ships trained weights (else random weights).")
    task: str | None = Field(
        default=None, description="The task whose data a job judges it with; null: synthetic inputs."
    )
    simulator: str | None = Field(
        default=None,
        description="The simulator of the task it was trained on: send it as `simulator` (on POST /jobs or "
        "/chat) to judge it by closed-loop success, as `robopt demo` does; null: none.",
    )


class ReferencesPublic(BaseModel):
    data: list[ReferencePublic]
    count: int


class DatasetPublic(BaseModel):
    """An uploaded data file: inputs (and labels) for calibration and accuracy."""

    id: str
    filename: str
    size_bytes: int
    sha256: str
    arrays: dict[str, list[int]] = Field(
        description="Array name -> shape (a LeRobotDataset: feature -> shape)."
    )
    has_labels: bool
    kind: Literal["arrays", "lerobot"] = Field(
        default="arrays",
        description="A file of arrays, or a LeRobotDataset directory uploaded as an archive.",
    )
    episodes: int | None = Field(default=None, description="For a LeRobotDataset: its number of episodes.")


class JobCreate(BaseModel):
    """Start an optimization: a model, a goal in plain words, and optionally a target, data and simulator."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={  # exactly one of model_id and reference (start_job refuses anything else with 422)
            "oneOf": [
                {"required": ["model_id"], "properties": {"model_id": {"type": "string"}}},
                {"required": ["reference"], "properties": {"reference": {"type": "string"}}},
            ]
        },
    )

    model_id: str | None = Field(default=None, description="An uploaded model (POST /models).")
    reference: str | None = Field(
        default=None, description="Or a bundled reference model by name (vla, conv_policy, reacher, ...)."
    )
    goal: str = Field(
        min_length=1,
        max_length=2000,
        description='Plain words, e.g. "under 8 MB and 2 ms on a Jetson Orin Nano, lose at most 2 points".',
    )
    target: str | None = Field(
        default=None, description="Edge target to report on, e.g. jetson-orin-nano-8gb."
    )
    dataset_id: str | None = Field(default=None, description="Uploaded data (POST /datasets).")
    simulator: str | None = Field(
        default=None, description="Closed-loop simulator: reaching, gym:<id>, pusht, aloha."
    )
    episodes: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description="Closed-loop episodes per evaluation (default 100; 10 for action agreement in pusht/aloha).",
    )
    max_attempts: int | None = Field(default=None, ge=1, le=200)
    time_budget_s: float | None = Field(default=None, gt=0, le=7 * 24 * 3600)
    stop_at_first: bool = Field(
        default=False,
        description="Stop at the first version that meets the goal instead of searching for a better one "
        "(the goal text can ask the same: 'good enough', 'stop at the first').",
    )


class AttemptPublic(BaseModel):
    """One attempt: the technique chain, the verdict and what it measured."""

    model_config = ConfigDict(from_attributes=True)

    index: int
    technique: str
    params: dict[str, Any]
    status: str
    reason: str
    version_id: str | None
    metrics: dict[str, Any] | None
    duration_s: float | None


class JobLinks(BaseModel):
    events: str
    websocket: str
    report: str
    checkpoints: str


class JobPublic(BaseModel):
    """A job: where it stands, its attempts and, once it ended, its result."""

    id: str
    goal: str
    model: str
    target: str | None
    reasoner: str
    status: str
    created: datetime
    updated: datetime
    finished: datetime | None
    parent_job_id: str | None
    fork_checkpoint_id: str | None
    goal_met: bool | None
    best_version: str | None
    error: str | None
    attempts_count: int
    queue_position: int | None = Field(default=None, description="0 = next to start; None when not waiting.")
    attempts: list[AttemptPublic] = Field(default_factory=list)
    links: JobLinks


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


class JobAccepted(BaseModel):
    """A queued job, as POST /jobs, /chat and /replay answer (202)."""

    job: JobPublic
    goal: GoalSpec | None = Field(default=None, description="The goal as intake read it.")
    estimated_memory_mb: float | None = Field(
        default=None, description="Memory admission's estimate of what one attempt needs (an estimate)."
    )


class CancelPublic(BaseModel):
    id: str
    status: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant"]
    content: str = Field(max_length=4000)


class ChatRequest(BaseModel):
    """One chat turn: the conversation so far; with a model the job starts once the goal is clear."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={  # at most one of model_id and reference (chat refuses both with 422)
            "not": {"required": ["model_id", "reference"]}
        },
    )

    messages: list[ChatMessage] = Field(min_length=1, max_length=50)
    model_id: str | None = Field(default=None, description="Start a job on this uploaded model.")
    reference: str | None = Field(
        default=None,
        description="Or start it on a bundled reference model by name (GET /references); not with model_id.",
    )
    model_params: int | None = Field(
        default=None, ge=1, description="Without a model: its parameter count, to check the goal is possible."
    )
    target: str | None = None
    simulator: str | None = None
    dataset_id: str | None = None
    start: bool = Field(
        default=True,
        description="Start the job when the goal is clear and a model (model_id or reference) is given.",
    )
    max_attempts: int | None = Field(default=None, ge=1, le=200)
    time_budget_s: float | None = Field(default=None, gt=0, le=7 * 24 * 3600)
    stop_at_first: bool = Field(
        default=False,
        description="Stop the started job at the first version that meets the goal (as JobCreate).",
    )


class ChatResponse(BaseModel):
    """The intake agent's answer: the criteria it read (and assumed), and the job when one started."""

    reply: str
    goal: GoalSpec
    job: JobPublic | None = None


class CheckpointPublic(BaseModel):
    checkpoint_id: str
    step: int
    node: str | None
    next: list[str]
    created: datetime | None
    current_version: str | None
    attempts: int
    status: str | None


class CheckpointsPublic(BaseModel):
    data: list[CheckpointPublic]
    count: int


class ReplayCreate(BaseModel):
    """Replay a job from a checkpoint as a new job, optionally with a changed goal."""

    model_config = ConfigDict(extra="forbid")

    checkpoint_id: str = Field(min_length=1, max_length=100)
    goal: str | None = Field(default=None, min_length=1, max_length=2000)


class HealthPublic(BaseModel):
    status: Literal["ok"]
    version: str
    uptime_s: float


class MetricsPublic(BaseModel):
    """Jobs by status, attempts, memory (measured now) and the queue."""

    jobs: dict[str, int]
    attempts: int
    memory: dict[str, float]
    queue: dict[str, Any]
