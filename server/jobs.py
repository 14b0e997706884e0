"""Jobs as the CLI and the HTTP service see them: register a model, create, run, resume, fork, inspect.

`JobService` joins the version store (the model's versions), the history DB (jobs, attempts, every event)
and the graph runner (checkpointed execution). Every event is written to the history DB before any other
subscriber sees it, so a client that reconnects can replay the job from the start.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

from agents.base import Reasoner
from agents.intake import INTAKE, AccuracyKind, GoalSpec, IntakeInput, ModelFacts
from graph.events import Event
from graph.nodes.intake import accuracy_kind, with_job_options
from graph.runner import CheckpointInfo, JobResult, JobRunner
from graph.state import DataSource, JobOptions
from server.errors import GoalUnclearError
from server.history import HistoryDB, JobRecord
from server.settings import Settings
from tools.errors import NotFoundError, ValidationError
from tools.evaluation.evaluate import AccuracyPlan
from tools.intake import LoadOptions
from tools.log import get_logger
from tools.versions import ArtifactRef, VersionStore

_log = get_logger("jobs")
Subscriber = Callable[[Event], Awaitable[None] | None]
HISTORY_STATUS = {
    "goal_met": "succeeded",
    "best_effort": "best_effort",
    "needs_input": "needs_input",
    "failed": "failed",
    "running": "running",
    "cancelled": "cancelled",
}
REFERENCE_TASKS = {"vla": "reaching", "conv_policy": "reaching"}
"""Reference models whose task generator gives real observations (with expert labels) for calibration."""


@dataclass(frozen=True)
class ModelSource:
    """A model to optimize: a path with its load options, or a bundled reference model by name."""

    path: Path
    options: LoadOptions
    label: str
    reference: str | None = None


def new_job_id() -> str:
    """A fresh, URL-safe job id."""
    return f"job-{uuid.uuid4().hex[:10]}"


DEFAULT_EPISODES = 100
"""Closed-loop episodes per evaluation when none are asked for (success rate: a tight interval)."""
AGREEMENT_EPISODES = 10
"""Episodes for closed-loop action agreement when none are asked for: thousands of compared steps already,
and gym-aloha renders a few steps per second on a CPU."""


def accuracy_plan(
    simulator: str | None, has_labels: bool, episodes: int | None = None, policy: bool = False
) -> AccuracyPlan:
    """Closed loop when a simulator is given (action agreement with the original in LeRobot's simulators),
    a task metric when the data has labels, fidelity otherwise (judged on the actions for a policy, see
    tools.evaluation.policy.is_policy)."""
    from tools.evaluation.simulators import judges_by_agreement

    if judges_by_agreement(simulator):
        return AccuracyPlan(
            level="closed_loop_agreement", simulator=simulator, episodes=episodes or AGREEMENT_EPISODES
        )
    if simulator:
        return AccuracyPlan(level="closed_loop", simulator=simulator, episodes=episodes or DEFAULT_EPISODES)
    if has_labels:
        return AccuracyPlan(level="task")
    return AccuracyPlan(level="fidelity", judge_actions=policy)


class JobService:
    """Create and drive optimization jobs; one instance per process (CLI) or per app (server)."""

    def __init__(
        self, settings: Settings, reasoner: Reasoner, subscribers: Sequence[Subscriber] = ()
    ) -> None:
        self.settings = settings
        self.data_dir = Path(settings.data_dir).resolve()
        self.store = VersionStore(self.data_dir / "versions")
        self.history = HistoryDB.open(settings.history_url, self.data_dir)
        self.runner = JobRunner(
            self.data_dir,
            reasoner,
            checkpoint_url=settings.checkpoint_url,
            subscribers=[self._record, *subscribers],
            first_seq=self.history.last_seq,
        )

    async def _record(self, event: Event) -> None:
        """Write the event (off the event loop) before any later subscriber sees it."""
        await asyncio.to_thread(self._record_now, event)

    def _record_now(self, event: Event) -> None:
        """Write the event, and what it says about attempts and status, to the history DB."""
        self.history.record_event(event.model_dump(mode="json"))
        data = event.data
        if event.type == "attempt":
            self.history.record_attempt(
                event.job_id,
                {
                    "index": data["index"],
                    "technique": data["technique"],
                    "params": {"steps": data["steps"]},
                    "status": data["status"],
                    "reason": data["reason"],
                    "version_id": data.get("version"),
                    "metrics": {k: data.get(k) for k in ("p50_ms", "size_mb", "accuracy")},
                    "duration_s": data.get("duration_s"),
                },
            )
        elif event.type == "complete":
            status = HISTORY_STATUS.get(str(data.get("status")), "failed")
            self.history.set_status(
                event.job_id,
                status,
                goal_met=data.get("goal_met"),
                best_version=data.get("final_version"),
                report_path=data.get("report"),
            )
        elif event.type == "error" and data.get("terminal"):
            self.history.set_status(event.job_id, "failed", error=str(data.get("message")))

    def create_job(
        self,
        source: ModelSource,
        goal: str,
        *,
        simulator: str | None = None,
        data_path: Path | None = None,
        target: str | None = None,
        max_attempts: int | None = None,
        time_budget_s: float | None = None,
        episodes: int | None = None,
        job_id: str | None = None,
        goal_history: Sequence[str] = (),
        stop_at_first: bool = False,
    ) -> JobRecord:
        """Store the model as version 1 of a new job and record the job (status queued)."""
        from tools.evaluation.policy import is_policy
        from tools.evaluation.size import size_of_loaded
        from tools.techniques import load_version, store_original

        if not goal.strip():
            raise ValidationError(
                "the goal is empty", hint='say what matters, e.g. --goal "under 20 ms, 4x smaller"'
            )
        if simulator:
            from tools.evaluation.simulators import get_simulator

            get_simulator(simulator)
        job_id = job_id or new_job_id()
        if data_path is not None:  # a directory is read as a LeRobotDataset (or refused, saying why)
            kind = "lerobot" if Path(data_path).is_dir() else "file"
            data = DataSource(kind=kind, path=str(Path(data_path).resolve()))
        elif source.reference in REFERENCE_TASKS:
            data = DataSource(kind="reference", task=REFERENCE_TASKS[source.reference])
        else:
            data = DataSource()
        manifest = store_original(self.store, job_id, source.path, source.options, self.data_dir)
        try:
            loaded = load_version(self.store, job_id, manifest.id, self.data_dir)
            has_labels = False
            if data.kind != "synthetic":
                from graph.work import load_data

                loaded_data = load_data(data, loaded)  # refuses data that does not match the model's inputs
                has_labels = loaded_data is not None and loaded_data.labels is not None
            params = size_of_loaded(loaded).total_params
            policy = is_policy(loaded, source.reference)
        except BaseException:
            self.store.delete_job(job_id, confirm=True)  # no half-created job is left behind
            raise
        facts = ModelFacts(
            name=source.label,
            format=manifest.format,
            params=params,
            artifact_bytes=manifest.size_bytes,
        )
        options = JobOptions(
            model=facts,
            accuracy=accuracy_plan(simulator, has_labels, episodes, policy=policy),
            data=data,
            target=target,
            goal_history=list(goal_history),
            max_attempts=max_attempts or self.settings.max_attempts,
            time_budget_s=time_budget_s or self.settings.time_budget_s,
            stop_at_first=stop_at_first,
            attempt_memory_mb=self.settings.attempt_memory_mb,
            latency_threads=self.settings.latency_threads,
            latency_iterations=min(self.settings.latency_iterations, 30),
        )
        original = self.store.ref(job_id, manifest.id)
        record = self.history.create_job(
            goal,
            source.label,
            job_id=job_id,
            target=target,
            reasoner=self.runner.reasoner.name,
            options={"job": options.model_dump(mode="json"), "original": original.model_dump(mode="json")},
        )
        _log.info("job created", extra={"component": "jobs", "job_id": job_id})
        return record

    async def run(self, job_id: str) -> JobResult:
        """Run a created job to its end."""
        record = self.history.get_job(job_id)
        options = JobOptions.model_validate(record.options["job"])
        original = ArtifactRef.model_validate(record.options["original"])
        self.history.set_status(job_id, "running")
        result = await self.runner.start(job_id, record.goal, original, options)
        return self._settle(result)

    async def resume(self, job_id: str) -> JobResult:
        """Continue a job from its last checkpoint."""
        self.history.get_job(job_id)
        self.history.set_status(job_id, "running")
        return self._settle(await self.runner.resume(job_id))

    def create_fork(self, job_id: str, checkpoint_id: str, goal: str | None = None) -> JobRecord:
        """Record a new job (queued) that will replay `job_id` from `checkpoint_id`, optionally with a new goal."""
        parent = self.history.get_job(job_id)
        return self.history.create_job(
            goal or parent.goal,
            parent.model,
            job_id=new_job_id(),
            target=parent.target,
            reasoner=self.runner.reasoner.name,
            parent_job_id=job_id,
            fork_checkpoint_id=checkpoint_id,
            options={**parent.options, "fork_goal": goal},
        )

    async def fork(self, job_id: str, checkpoint_id: str, goal: str | None = None) -> JobResult:
        """Replay a job from one of its checkpoints as a new job (optionally with a new goal)."""
        record = self.create_fork(job_id, checkpoint_id, goal)
        return await self.run_fork(record.id)

    async def run_fork(self, job_id: str) -> JobResult:
        """Run a job created by `create_fork` from its parent's checkpoint."""
        record = self.history.get_job(job_id)
        if not record.parent_job_id or not record.fork_checkpoint_id:
            raise ValidationError(f"job {job_id} is not a fork", hint="run it with `run` instead")
        self.history.set_status(job_id, "running")
        result = await self.runner.fork(
            record.parent_job_id, record.fork_checkpoint_id, job_id, record.options.get("fork_goal")
        )
        return self._settle(result)

    async def drive(self, job_id: str) -> JobResult:
        """Take a job to its end from wherever it stands: resume from its last checkpoint, or start it."""
        record = self.history.get_job(job_id)
        try:
            await self.runner.state(job_id)
        except NotFoundError:
            if record.parent_job_id and record.fork_checkpoint_id:
                return await self.run_fork(job_id)
            return await self.run(job_id)
        return await self.resume(job_id)

    async def parse_goal(
        self,
        text: str,
        model: ModelFacts,
        accuracy: AccuracyKind,
        target: str | None = None,
        history: Sequence[str] = (),
    ) -> GoalSpec:
        """Read the goal as the job's intake will; GoalUnclearError (the question) when it needs an answer."""
        payload = IntakeInput(
            text=text, history=list(history), model=model, accuracy=accuracy, default_target=target
        )
        spec = (await self.runner.reasoner.decide(INTAKE, payload)).output
        if spec.question:
            raise GoalUnclearError(
                spec.question,
                hint="answer the question in the goal (or in a new chat message) and send it again",
                detail={"goal": spec.model_dump(mode="json")},
            )
        return spec

    async def check_goal(self, job_id: str, goal: str | None = None) -> GoalSpec:
        """Parse `goal` (default: the job's own) against the job's model, accuracy and target."""
        record = self.history.get_job(job_id)
        options = JobOptions.model_validate(record.options["job"])
        history = options.goal_history if goal is None else []
        parsed = await self.parse_goal(
            goal or record.goal, options.model, accuracy_kind(options.accuracy), options.target, history
        )
        return with_job_options(parsed, options)  # as the intake node reads it (stop_at_first)

    def discard(self, job_id: str) -> None:
        """Remove a job that never ran: its versions and its history."""
        self.store.delete_job(job_id, confirm=True)
        self.history.delete_job(job_id)

    def _settle(self, result: JobResult) -> JobResult:
        """Make sure no job is left 'running' once its run returned."""
        record = self.history.get_job(result.job_id)
        if record.status in ("running", "queued"):
            self.history.set_status(result.job_id, HISTORY_STATUS.get(result.status, "failed"))
        return result

    async def checkpoints(self, job_id: str) -> list[CheckpointInfo]:
        """Every checkpoint of the job, oldest first; none yet for a job that has not stored one (queued, or
        just started): an empty list, not an error (the page showed a 404 at the start of every job)."""
        self.history.get_job(job_id)  # NotFoundError for a job that does not exist
        try:
            return await self.runner.checkpoints(job_id)
        except NotFoundError:
            return []

    def job(self, job_id: str) -> JobRecord:
        """The job's history record."""
        return self.history.get_job(job_id)

    def attempts(self, job_id: str) -> list[Any]:
        """The job's attempts, by index."""
        return self.history.attempts(job_id)
