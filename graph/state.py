"""The optimization graph's state: small, serializable, never tensors or modules.

Versions are referenced (`ArtifactRef`: job, version id, path, sha256, format); figures are `Measurement`s;
decisions are the agents' typed outputs. Every type that can appear in a checkpoint is listed in
`STATE_TYPES`, which is the checkpointer's strict deserialization allowlist.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal, TypedDict

from pydantic import BaseModel, ConfigDict, Field

from agents.analysis import Analysis
from agents.intake import GoalSpec, ModelFacts
from agents.planning import PlanStep
from tools.evaluation.criteria import CriteriaCheck
from tools.evaluation.evaluate import AccuracyPlan
from tools.evaluation.measurement import Measurement
from tools.evaluation.report import SearchStop, UntriedChain
from tools.evaluation.sensitivity import LayerSensitivity
from tools.versions import ArtifactRef

JobStatus = Literal["running", "needs_input", "goal_met", "best_effort", "failed"]
AttemptStatus = Literal["accepted", "rejected", "failed"]


class DataSource(BaseModel):
    """Where calibration and accuracy data come from: a file of arrays, a LeRobotDataset directory (split by
    episode, recorded actions as labels), a reference task, or synthetic inputs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["synthetic", "file", "lerobot", "reference"] = "synthetic"
    path: str | None = Field(
        default=None,
        description="For 'file': .npz/.safetensors/.pt tensors (+ labels); for 'lerobot': the dataset's root.",
    )
    task: str | None = Field(
        default=None, description="For 'reference': the task generator, e.g. 'reaching'."
    )
    batches: int = Field(default=8, ge=1, le=1024)
    batch_size: int = Field(default=32, ge=1, le=4096)


class JobOptions(BaseModel):
    """Everything fixed at job start that the nodes need besides the goal."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: ModelFacts = Field(default_factory=ModelFacts)
    accuracy: AccuracyPlan = Field(default_factory=lambda: AccuracyPlan(level="fidelity"))
    data: DataSource = Field(default_factory=DataSource)
    target: str | None = Field(default=None, description="Target named outside the goal text (--target).")
    goal_history: list[str] = Field(
        default_factory=list,
        description="Earlier chat messages the goal text answers or amends (oldest first).",
    )
    max_attempts: int = Field(default=8, ge=1, le=200, description="Optimization attempts (planned steps).")
    time_budget_s: float = Field(default=1800.0, gt=0, description="Wall time for the whole job.")
    attempt_time_s: float = Field(
        default=900.0, gt=0, description="Time limit of one attempt's child process."
    )
    attempt_memory_mb: int | None = Field(
        default=None, gt=0, description="Memory limit of one child process."
    )
    stop_at_first: bool = Field(
        default=False,
        description="Stop at the first version that meets every criterion instead of searching for a better "
        "one (--stop-at-first; the goal text can ask the same).",
    )
    latency_threads: int = Field(default=1, ge=1, le=256)
    latency_iterations: int = Field(default=30, ge=3, le=100_000)


class VersionPoint(BaseModel):
    """A stored version with its measured figures and the techniques that led to it."""

    model_config = ConfigDict(frozen=True)

    ref: ArtifactRef
    measurement: Measurement
    lineage: list[str] = Field(default_factory=list, description="Techniques applied since the original.")


class Candidate(BaseModel):
    """What the optimize step produced for evaluation (or why it failed)."""

    model_config = ConfigDict(frozen=True)

    ref: ArtifactRef | None = Field(
        default=None, description="The last version of the chain; None on failure."
    )
    versions: list[str] = Field(default_factory=list, description="Every version the chain stored, in order.")
    facts: list[dict[str, Any]] = Field(default_factory=list, description="Each technique's reported facts.")
    error: dict[str, Any] | None = Field(default=None, description="The failure, as RoboptError.to_dict().")
    duration_s: float = 0.0


class Attempt(BaseModel):
    """One planned attempt and what became of it."""

    model_config = ConfigDict(frozen=True)

    index: int = Field(ge=1)
    parent_version: str
    steps: list[dict[str, Any]] = Field(description="Each technique's config as JSON.")
    rationale: str = ""
    planned_by: str = Field(default="rules", description="Decision source: rules, llm or rules_fallback.")
    status: AttemptStatus
    reason: str
    version: ArtifactRef | None = None
    versions: list[str] = Field(default_factory=list)
    measurement: Measurement | None = None
    check: CriteriaCheck | None = None
    judged_by: str | None = None
    duration_s: float = 0.0

    @property
    def technique(self) -> str:
        """The chain's techniques joined with '+'."""
        return "+".join(str(step.get("type")) for step in self.steps)


class ReportRef(BaseModel):
    """Where finalize wrote the report and which version it chose."""

    model_config = ConfigDict(frozen=True)

    directory: str
    json_path: str
    markdown_path: str
    final_version: str
    final_ref: ArtifactRef
    goal_met: bool
    missing: list[str] = Field(default_factory=list)


class JobState(TypedDict, total=False):
    """The graph state. Plain fields are overwritten by node updates; `attempts` and `notes` accumulate."""

    job_id: str
    """Also the LangGraph thread id and the version-store job."""
    goal_text: str
    """The user's goal as written."""
    options: JobOptions
    original: ArtifactRef
    """Version 1 of the model as the user gave it (fidelity reference, baseline)."""
    goal: GoalSpec | None
    """Intake's parsed goal; its `question` set means the job waits for the user."""
    analysis: Analysis | None
    sensitivity: list[LayerSensitivity]
    """The original's per-layer INT8 sensitivity ranking (most sensitive first), for the planner."""
    baseline: Measurement | None
    current: VersionPoint | None
    """The last accepted version: where the next attempt starts; rollback returns here."""
    candidate: Candidate | None
    """Output of optimize, consumed by evaluate."""
    plan: PlanStep | None
    planned_by: str
    attempts: Annotated[list[Attempt], operator.add]
    status: JobStatus
    last_node: str
    """The node that wrote this state last (a fork resumes routing from it)."""
    started_at: float
    """Wall-clock start (epoch seconds) of the job, for the time budget."""
    report: ReportRef | None
    notes: Annotated[list[str], operator.add]
    """Decisions worth telling the user: fallbacks, budget stops, forks."""


STATE_TYPES: tuple[type[BaseModel], ...] = (
    DataSource,
    JobOptions,
    VersionPoint,
    Candidate,
    Attempt,
    ReportRef,
    ArtifactRef,
    GoalSpec,
    Analysis,
    Measurement,
    PlanStep,
    SearchStop,
    UntriedChain,
    CriteriaCheck,
    AccuracyPlan,
    ModelFacts,
    LayerSensitivity,
)
"""Pydantic types allowed in a checkpoint (nested models are stored as plain data inside these)."""
