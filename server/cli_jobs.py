"""The `robopt` job commands: optimize, demo, jobs, history, checkpoints, replay, resume.

Exit codes: 0 goal met, 3 best effort (goal not met), 2 bad input or a question back about the goal,
1 the job failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from server.cli_flags import add_model_flags, load_options
from server.settings import Settings
from tools.errors import ValidationError

DEMO_GOAL = "at least 2x faster and 3x smaller on this machine, lose at most 2 points of success rate"
DEMO_TARGET = "jetson-orin-nano-8gb"
EXIT_GOAL_MET, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_BEST_EFFORT = 0, 1, 2, 3


def add_job_commands(commands: Any) -> None:
    """Register the job subcommands on the CLI's subparsers."""
    optimize = commands.add_parser("optimize", help="optimize a model toward a goal in plain words")
    optimize.add_argument(
        "model", help="model file or directory, or a reference model name (robopt reference list)"
    )
    optimize.add_argument("--goal", required=True, help='e.g. "under 50 MB and 20 ms on a Jetson Orin Nano"')
    _job_flags(optimize)
    add_model_flags(optimize)

    demo = commands.add_parser("demo", help="build the reference VLA and optimize it toward a default goal")
    demo.add_argument("--goal", default=DEMO_GOAL, help=f"default: {DEMO_GOAL!r}")
    _job_flags(demo, sim="reaching", target=DEMO_TARGET, max_attempts=4, time_budget=240.0)

    jobs = commands.add_parser("jobs", help="list optimization jobs")
    jobs.add_argument("--status", help="only jobs with this status")
    jobs.add_argument("--json", action="store_true")
    history = commands.add_parser("history", help="a job's attempts and events")
    history.add_argument("job")
    history.add_argument("--json", action="store_true")
    history.add_argument("--events", action="store_true", help="list every event too")
    checkpoints = commands.add_parser("checkpoints", help="a job's checkpoints (rollback and replay points)")
    checkpoints.add_argument("job")
    checkpoints.add_argument("--json", action="store_true")
    replay = commands.add_parser("replay", help="replay a job from a checkpoint as a new job (a fork)")
    replay.add_argument("job")
    replay.add_argument("--checkpoint", required=True, help="checkpoint id (robopt checkpoints JOB)")
    replay.add_argument("--goal", help="a changed goal for the new branch")
    replay.add_argument("--out", type=Path, help="where to write the artifact and report")
    replay.add_argument("--reasoner", choices=["rules", "openai"])
    resume = commands.add_parser("resume", help="continue an interrupted job from its last checkpoint")
    resume.add_argument("job")
    resume.add_argument("--out", type=Path, help="where to write the artifact and report")
    resume.add_argument("--reasoner", choices=["rules", "openai"])


def _job_flags(
    parser: argparse.ArgumentParser,
    *,
    sim: str | None = None,
    target: str | None = None,
    max_attempts: int | None = None,
    time_budget: float | None = None,
) -> None:
    parser.add_argument("--target", default=target, help="edge target to report on (robopt's target names)")
    parser.add_argument(
        "--data",
        type=Path,
        help="inputs (+ labels) for calibration and accuracy: .npz/.safetensors/.pt, or a LeRobotDataset "
        "directory (split by episode; recorded actions as labels)",
    )
    parser.add_argument(
        "--sim",
        default=sim,
        help="simulator for closed-loop accuracy: reaching, gym:<id> (success rate); pusht, aloha, "
        "aloha:transfer_cube, aloha:fast (action agreement with the original, success rate alongside); "
        "append :steps=N to cut LeRobot's episodes to N steps (pusht:steps=50)",
    )
    parser.add_argument(
        "--episodes",
        type=int,
        default=None,
        help="closed-loop episodes per evaluation (default 100; 10 for action agreement in pusht/aloha)",
    )
    parser.add_argument("--out", type=Path, help="output folder (default: <data>/out/<job>)")
    parser.add_argument("--max-attempts", type=int, default=max_attempts, help="attempt budget")
    parser.add_argument("--time-budget", type=float, default=time_budget, help="wall-time budget, seconds")
    parser.add_argument(
        "--stop-at-first",
        action="store_true",
        help="stop at the first version that meets the goal instead of searching for a better one",
    )
    parser.add_argument("--reasoner", choices=["rules", "openai"], help="default: ROBOPT_REASONER (rules)")


def _service(settings: Settings, args: argparse.Namespace) -> Any:
    from agents.llm import build_reasoner
    from server.jobs import JobService
    from server.progress import ConsoleProgress

    reasoner = build_reasoner(getattr(args, "reasoner", None) or settings.reasoner)
    return JobService(settings, reasoner, subscribers=[ConsoleProgress()])


def run_job_command(args: argparse.Namespace, settings: Settings) -> int:
    """Dispatch a job subcommand."""
    handlers = {
        "optimize": _optimize,
        "demo": _optimize,
        "jobs": _jobs,
        "history": _history,
        "checkpoints": _checkpoints,
        "replay": _replay,
        "resume": _resume,
    }
    return handlers[args.command](args, settings)


def _source(args: argparse.Namespace, settings: Settings) -> Any:
    from server.jobs import ModelSource
    from tools.reference import REFERENCE_MODELS, reference_model_file

    if args.command == "demo":
        name = "vla"
    else:
        name = args.model if not Path(args.model).exists() and args.model in REFERENCE_MODELS else None
    if name is not None:
        print(f"robopt: using the reference model {name!r} (built and cached on first use)", file=sys.stderr)
        path, options = reference_model_file(name, settings.reference_dir)
        return ModelSource(path=path, options=options, label=name, reference=name)
    path = Path(args.model)
    if not path.exists():
        raise ValidationError(
            f"model not found: {path}",
            hint="give a model file or directory, or a name from `robopt reference list`",
        )
    options = load_options(args)
    return ModelSource(path=path, options=options, label=path.name)


def _check_budget_flags(args: argparse.Namespace) -> None:
    if args.max_attempts is not None and args.max_attempts < 1:
        raise ValidationError(f"--max-attempts must be at least 1, got {args.max_attempts}")
    if args.time_budget is not None and args.time_budget <= 0:
        raise ValidationError(f"--time-budget must be positive, got {args.time_budget}")
    if args.episodes is not None and args.episodes < 1:
        raise ValidationError(f"--episodes must be at least 1, got {args.episodes}")


def _optimize(args: argparse.Namespace, settings: Settings) -> int:
    _check_budget_flags(args)
    if args.data is not None and not args.data.exists():
        raise ValidationError(
            f"data not found: {args.data}",
            hint="give an .npz, .safetensors or .pt file, or a LeRobotDataset directory",
        )
    service = _service(settings, args)
    source = _source(args, settings)
    record = service.create_job(
        source,
        args.goal,
        simulator=args.sim,
        data_path=args.data,
        target=args.target,
        max_attempts=args.max_attempts,
        time_budget_s=args.time_budget,
        episodes=args.episodes,
        stop_at_first=args.stop_at_first,
    )
    print(f"robopt: job {record.id}: {args.goal}", file=sys.stderr, flush=True)
    result = asyncio.run(service.run(record.id))
    return _finish(service, result, args.out, settings)


def _finish(service: Any, result: Any, out: Path | None, settings: Settings) -> int:
    """Print the outcome, copy the artifact and report to the output folder, and pick the exit code."""
    from server.progress import before_after_table
    from tools.evaluation.report import Report

    if result.status == "failed":
        error = result.error or {}
        print(
            f"robopt: job {result.job_id} failed: [{error.get('code')}] {error.get('message')}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if result.status == "needs_input":
        goal = result.values.get("goal")
        print(f"robopt: the goal needs an answer: {goal.question if goal else ''}", file=sys.stderr)
        return EXIT_BAD_INPUT
    report_ref = result.values["report"]
    destination = out or Path(settings.data_dir) / "out" / result.job_id
    destination.mkdir(parents=True, exist_ok=True)
    artifact = Path(report_ref.final_ref.path)
    target = destination / artifact.name
    if artifact.is_dir():
        shutil.copytree(artifact, target, dirs_exist_ok=True)
    else:
        shutil.copy2(artifact, target)
    for item in Path(report_ref.directory).iterdir():
        shutil.copy2(item, destination / item.name)
    report = Report.model_validate_json(Path(report_ref.json_path).read_text())
    print(before_after_table(report))
    print(f"\nartifact: {target}\nreport:   {destination / 'report.md'}")
    return EXIT_GOAL_MET if report.goal_met else EXIT_BEST_EFFORT


def _jobs(args: argparse.Namespace, settings: Settings) -> int:
    from server.history import HistoryDB

    history = HistoryDB.open(settings.history_url, settings.data_dir)
    records = history.list_jobs(status=args.status)
    if args.json:
        print(json.dumps([r.model_dump(mode="json") for r in records], indent=2, default=str))
        return 0
    print(f"{'job':16s} {'status':12s} {'attempts':>8s} {'best':6s} {'created':20s} goal")
    for r in records:
        created = r.created.strftime("%Y-%m-%d %H:%M:%S")
        print(
            f"{r.id:16s} {r.status:12s} {r.attempts_count:8d} {r.best_version or '-':6s} {created:20s} {r.goal}"
        )
    return 0


def _history(args: argparse.Namespace, settings: Settings) -> int:
    from server.history import HistoryDB

    history = HistoryDB.open(settings.history_url, settings.data_dir)
    job = history.get_job(args.job)
    attempts = history.attempts(args.job)
    events = history.events(args.job) if args.events or args.json else []
    if args.json:
        print(
            json.dumps(
                {
                    "job": job.model_dump(mode="json"),
                    "attempts": [a.model_dump(mode="json") for a in attempts],
                    "events": [e.as_event() for e in events],
                },
                indent=2,
                default=str,
            )
        )
        return 0
    print(f"job {job.id} ({job.status}) on {job.model}: {job.goal}")
    if job.parent_job_id:
        print(f"forked from {job.parent_job_id} at checkpoint {job.fork_checkpoint_id}")
    for a in attempts:
        print(f"  {a.index:2d}. {a.technique:32s} {a.status:9s} {a.version_id or '-':6s} {a.reason}")
    for e in events:
        print(f"  #{e.seq:<4d} {e.type:10s} {json.dumps(e.data, default=str)[:150]}")
    return 0


def _checkpoints(args: argparse.Namespace, settings: Settings) -> int:
    service = _service(settings, args)
    infos = asyncio.run(service.checkpoints(args.job))
    if args.json:
        print(json.dumps([info.__dict__ for info in infos], indent=2, default=str))
        return 0
    print(f"{'step':>4s} {'checkpoint':38s} {'after':9s} {'next':10s} {'version':8s} attempts")
    for info in infos:
        print(
            f"{info.step:4d} {info.checkpoint_id:38s} {info.node or '-':9s} {','.join(info.next) or '-':10s} "
            f"{info.current_version or '-':8s} {info.attempts}"
        )
    return 0


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    service = _service(settings, args)
    result = asyncio.run(service.fork(args.job, args.checkpoint, args.goal))
    print(f"robopt: replayed {args.job} from {args.checkpoint} as job {result.job_id}", file=sys.stderr)
    return _finish(service, result, args.out, settings)


def _resume(args: argparse.Namespace, settings: Settings) -> int:
    service = _service(settings, args)
    result = asyncio.run(service.resume(args.job))
    return _finish(service, result, args.out, settings)
