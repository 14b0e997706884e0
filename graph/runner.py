"""Run, resume, fork and inspect jobs: the graph on its checkpointer, with events fanned out to subscribers.

Each job is one LangGraph thread (thread id = job id). Every step is checkpointed with durability "sync",
so a killed process resumes from the last completed step, and any checkpoint can be forked into a new job
(optionally with a changed goal) while the original thread stays untouched.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

from agents.base import Reasoner
from agents.intake import INTAKE, IntakeInput
from graph.build import build_graph
from graph.checkpoint import open_checkpointer
from graph.context import GraphContext
from graph.events import Event, EventType
from graph.nodes.intake import accuracy_kind, with_job_options
from graph.state import JobOptions, JobState
from tools.errors import NotFoundError, RoboptError, ValidationError, first_line
from tools.log import get_logger
from tools.versions import ArtifactRef

_log = get_logger("graph")
Subscriber = Callable[[Event], Awaitable[None] | None]


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint of a job, as `robopt checkpoints` and the API list it."""

    checkpoint_id: str
    step: int
    node: str | None
    next: list[str]
    created: datetime | None
    current_version: str | None
    attempts: int
    status: str | None


@dataclass
class JobResult:
    """How a run ended: the status and the final state's values (None when it failed before any state)."""

    job_id: str
    status: str
    values: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None


def _config(job_id: str, checkpoint_id: str | None = None) -> dict[str, Any]:
    configurable = {"thread_id": job_id, "checkpoint_ns": ""}
    if checkpoint_id:
        configurable["checkpoint_id"] = checkpoint_id
    return {"configurable": configurable}


class JobRunner:
    """Drive jobs through the graph, emitting every event (numbered per job) to the subscribers."""

    def __init__(
        self,
        data_dir: Path,
        reasoner: Reasoner,
        *,
        checkpoint_url: str | None = None,
        subscribers: Sequence[Subscriber] = (),
        first_seq: Callable[[str], int] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.reasoner = reasoner
        self.checkpoint_url = checkpoint_url
        self.subscribers = list(subscribers)
        self._first_seq = first_seq or (lambda job_id: 0)
        self._seq: dict[str, int] = {}

    async def publish(self, job_id: str, type: EventType, data: dict[str, Any]) -> Event:
        """Stamp an event with the job's next sequence number and hand it to every subscriber."""
        if job_id not in self._seq:
            self._seq[job_id] = self._first_seq(job_id)
        self._seq[job_id] += 1
        event = Event(type=type, job_id=job_id, seq=self._seq[job_id], data=data)
        for subscriber in self.subscribers:
            result = subscriber(event)
            if inspect.isawaitable(result):
                await result
        return event

    async def start(
        self, job_id: str, goal_text: str, original: ArtifactRef, options: JobOptions
    ) -> JobResult:
        """Run a new job from intake to its report (or to a question back)."""
        state: JobState = {
            "job_id": job_id,
            "goal_text": goal_text,
            "options": options,
            "original": original,
            "status": "running",
            "started_at": time.time(),
            "attempts": [],
            "notes": [],
            "goal": None,
            "candidate": None,
            "plan": None,
            "report": None,
        }
        return await self._run(job_id, state)

    async def resume(self, job_id: str) -> JobResult:
        """Continue a job from its last checkpoint (after a crash, a kill or a restart)."""
        async with open_checkpointer(self.data_dir, self.checkpoint_url) as saver:
            snapshot = await build_graph(saver, self.reasoner).aget_state(_config(job_id))
        if not snapshot.values:
            raise NotFoundError(
                f"job {job_id} has no checkpoint to resume", hint="run `robopt jobs` to list jobs"
            )
        # `next` leaves out tasks whose writes were saved before the kill but whose step never checkpointed;
        # they still have to be applied, so the job is finished only when no task is left at all.
        if not snapshot.next and not snapshot.tasks:
            return JobResult(job_id, str(snapshot.values.get("status", "finished")), dict(snapshot.values))
        pending = [task.name for task in snapshot.tasks]
        await self.publish(job_id, "status", {"state": "resumed", "next": pending})
        return await self._run(job_id, None)

    async def _run(self, job_id: str, state: JobState | None) -> JobResult:
        """Stream the graph (new input, or None to resume) and publish its events and checkpoints."""
        context = GraphContext(data_dir=self.data_dir)
        try:
            async with open_checkpointer(self.data_dir, self.checkpoint_url) as saver:
                graph = build_graph(saver, self.reasoner)
                if state is not None:
                    await self.publish(job_id, "status", {"state": "running", "goal": state["goal_text"]})
                async for mode, chunk in graph.astream(
                    state,
                    _config(job_id),
                    context=context,
                    stream_mode=["custom", "checkpoints"],
                    durability="sync",
                ):
                    if mode == "custom":
                        await self.publish(job_id, chunk["type"], chunk["data"])
                    else:
                        await self.publish(job_id, "checkpoint", _checkpoint_event(chunk))
                snapshot = await graph.aget_state(_config(job_id))
        except RoboptError as error:
            return await self._failed(job_id, error.to_dict())
        except Exception as exc:  # noqa: BLE001 - the job fails, the runner and its caller survive
            _log.exception("job failed", extra={"component": "runner", "job_id": job_id})
            return await self._failed(
                job_id, {"code": "internal_error", "message": first_line(exc), "hint": None}
            )
        values = dict(snapshot.values)
        status = str(values.get("status", "running"))
        if status == "needs_input":
            goal = values.get("goal")
            await self.publish(
                job_id, "complete", {"status": status, "question": goal.question if goal else None}
            )
        return JobResult(job_id, status, values)

    async def _failed(self, job_id: str, error: dict[str, Any]) -> JobResult:
        """Publish the terminal error event and return a failed result."""
        await self.publish(job_id, "error", {**error, "terminal": True})
        return JobResult(job_id, "failed", {}, error)

    async def state(self, job_id: str, checkpoint_id: str | None = None) -> dict[str, Any]:
        """The state values of a job at its latest (or a given) checkpoint."""
        async with open_checkpointer(self.data_dir, self.checkpoint_url) as saver:
            snapshot = await build_graph(saver, self.reasoner).aget_state(_config(job_id, checkpoint_id))
        if not snapshot.values:
            raise NotFoundError(f"no checkpoint {checkpoint_id or '(latest)'} for job {job_id}")
        return dict(snapshot.values)

    async def checkpoints(self, job_id: str) -> list[CheckpointInfo]:
        """Every checkpoint of the job, oldest first."""
        infos: list[CheckpointInfo] = []
        async with open_checkpointer(self.data_dir, self.checkpoint_url) as saver:
            graph = build_graph(saver, self.reasoner)
            async for snapshot in graph.aget_state_history(_config(job_id)):
                infos.append(
                    _checkpoint_info(
                        snapshot.config,
                        snapshot.metadata,
                        snapshot.values,
                        snapshot.next,
                        snapshot.created_at,
                    )
                )
        if not infos:
            raise NotFoundError(f"job {job_id} has no checkpoints", hint="run `robopt jobs` to list jobs")
        return list(reversed(infos))

    async def fork(
        self, job_id: str, checkpoint_id: str, new_job_id: str, goal_text: str | None = None
    ) -> JobResult:
        """Start `new_job_id` from a checkpoint of `job_id` (optionally with a new goal) and run it to the end.

        The new job is a new thread; the original's checkpoints and versions are only read.
        """
        values = await self.state(job_id, checkpoint_id)
        last_node = values.get("last_node")
        options: JobOptions = values["options"]
        options = options.model_copy(
            update={"max_attempts": options.max_attempts + len(values.get("attempts", []))}
        )
        goal = values.get("goal")
        if goal_text is not None and goal_text != values.get("goal_text"):
            decision = await self.reasoner.decide(
                INTAKE,
                IntakeInput(
                    text=goal_text,
                    model=options.model,
                    accuracy=accuracy_kind(options.accuracy),
                    default_target=options.target,
                ),
            )
            goal = with_job_options(decision.output, options)
            if goal.question:
                raise ValidationError(f"the new goal needs an answer first: {goal.question}")
        goal_text = goal_text or values["goal_text"]
        goal_changed = goal is not values.get("goal")
        if last_node is None or (last_node == "intake" and goal_changed):
            return await self.start(new_job_id, goal_text, values["original"], options)
        forked: dict[str, Any] = {
            **values,
            "job_id": new_job_id,
            "goal_text": goal_text,
            "goal": goal,
            "options": options,
            "status": "running",
            "started_at": time.time(),
            "report": None,
            "notes": [f"forked from job {job_id} at checkpoint {checkpoint_id}"],
        }
        as_node = "rollback" if last_node == "finalize" else last_node
        if last_node == "finalize":
            forked["plan"] = None
        async with open_checkpointer(self.data_dir, self.checkpoint_url) as saver:
            graph = build_graph(saver, self.reasoner)
            await graph.aupdate_state(_config(new_job_id), forked, as_node=as_node)
        await self.publish(
            new_job_id,
            "status",
            {"state": "forked", "parent_job": job_id, "checkpoint_id": checkpoint_id, "goal": goal_text},
        )
        return await self._run(new_job_id, None)


def _checkpoint_info(
    config: dict[str, Any], metadata: Any, values: dict[str, Any], next_nodes: Sequence[str], created: Any
) -> CheckpointInfo:
    """Summarize a snapshot."""
    current = values.get("current") if values else None
    created_at = datetime.fromisoformat(created) if isinstance(created, str) else created
    return CheckpointInfo(
        checkpoint_id=config["configurable"]["checkpoint_id"],
        step=int((metadata or {}).get("step", -1)),
        node=values.get("last_node") if values else None,
        next=list(next_nodes or []),
        created=created_at,
        current_version=current.ref.version_id if current is not None else None,
        attempts=len(values.get("attempts", [])) if values else 0,
        status=values.get("status") if values else None,
    )


def _checkpoint_event(chunk: dict[str, Any]) -> dict[str, Any]:
    """The data of a checkpoint event, from the 'checkpoints' stream's chunk."""
    info = _checkpoint_info(
        chunk["config"], chunk.get("metadata"), chunk.get("values") or {}, chunk.get("next") or [], None
    )
    return {
        "checkpoint_id": info.checkpoint_id,
        "step": info.step,
        "node": info.node,
        "next": info.next,
        "current_version": info.current_version,
        "attempts": info.attempts,
    }
