"""The `robopt` command line: `robopt analyze MODEL`, `robopt techniques`, `robopt reference list|build`,
`robopt serve` (the HTTP service), and the job commands (`optimize`, `demo`, `jobs`, `history`,
`checkpoints`, `replay`, `resume`: server/cli_jobs.py).

Exit codes: 0 success, 2 bad input (one line on stderr, from the project's exceptions), 1 unexpected failure.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from server.cli_flags import add_model_flags, load_options
from server.settings import Settings, get_settings
from tools.errors import RoboptError, ValidationError
from tools.log import configure_logging, get_logger

_log = get_logger("cli")
DEFAULT_REFERENCE = "vla"


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="robopt", description="Optimize robotics models for edge deployment."
    )
    parser.add_argument("--data-dir", type=Path, help="data directory (default: ROBOPT_DATA_DIR or ./data)")
    commands = parser.add_subparsers(dest="command", required=True)

    analyze = commands.add_parser(
        "analyze", help="profile a model: parameters, FLOPs, latency, memory, architecture"
    )
    analyze.add_argument(
        "model",
        nargs="?",
        type=Path,
        help=f"model file or directory (default: the bundled reference {DEFAULT_REFERENCE!r})",
    )
    analyze.add_argument("--json", action="store_true", help="print the profile as JSON")
    add_model_flags(analyze)
    analyze.add_argument("--no-latency", action="store_true", help="skip the latency and memory measurement")
    analyze.add_argument(
        "--threads", type=int, help="threads for the latency measurement (default: settings)"
    )

    listing = commands.add_parser(
        "techniques", help="list the optimization techniques, whether each can run here, and why not"
    )
    listing.add_argument("--json", action="store_true", help="print every technique's metadata as JSON")
    listing.add_argument("--family", help="only this family (quantization, pruning, ...)")
    listing.add_argument("--available", action="store_true", help="only techniques that can run here")

    from server.cli_jobs import add_job_commands

    add_job_commands(commands)

    serve = commands.add_parser("serve", help="run the HTTP service: REST, SSE and WebSocket under /api/v1")
    serve.add_argument("--host", help="address to bind (default: ROBOPT_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: ROBOPT_PORT or 8000)")

    reference = commands.add_parser("reference", help="build or list the bundled reference models")
    reference_commands = reference.add_subparsers(dest="reference_command", required=True)
    reference_commands.add_parser("list", help="list the reference models")
    build = reference_commands.add_parser("build", help="build (or fetch from cache) reference models")
    build.add_argument("names", nargs="*", help="names to build (default: all)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
        if args.data_dir is not None:
            settings = settings.model_copy(update={"data_dir": args.data_dir})
        configure_logging(settings.log_level)
        if args.command in ("analyze", "serve", "optimize", "demo", "resume"):
            from tools.isolation import scratch_dir

            with scratch_dir(settings.data_dir):  # no temporary file outside the data directory
                return _run_command(args, settings)
        return _run_command(args, settings)
    except RoboptError as error:
        print(f"robopt: {error.one_line()}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("robopt: interrupted", file=sys.stderr)
        return 130


def _run_command(args: argparse.Namespace, settings: Settings) -> int:
    """Dispatch the parsed command."""
    if args.command == "analyze":
        return _analyze(args, settings)
    if args.command == "techniques":
        return _techniques(args)
    if args.command == "serve":
        return _serve(args, settings)
    if args.command in ("optimize", "demo", "jobs", "history", "checkpoints", "replay", "resume"):
        from server.cli_jobs import run_job_command

        return run_job_command(args, settings)
    return _reference(args, settings)


def _analyze(args: argparse.Namespace, settings: Settings) -> int:
    from tools.intake import load_model
    from tools.profiling import analyze_model, format_profile_table

    if args.threads is not None and args.threads < 1:
        raise ValidationError("--threads must be at least 1")
    if args.model is None:
        from tools.reference import reference_model_file

        print(
            f"robopt: analyzing the bundled reference model {DEFAULT_REFERENCE!r} "
            f"(trained and cached under {settings.reference_dir} on first use, about 2 minutes)",
            file=sys.stderr,
            flush=True,
        )
        model_path, options = reference_model_file(DEFAULT_REFERENCE, settings.reference_dir)
    else:
        model_path = args.model
        options = load_options(args)
    loaded = load_model(model_path, options, data_dir=settings.data_dir)
    profile = analyze_model(
        loaded,
        latency=not args.no_latency,
        threads=args.threads or settings.latency_threads,
        warmup=settings.latency_warmup,
        iterations=settings.latency_iterations,
        timeout_s=settings.latency_timeout_s,
        data_dir=settings.data_dir,
    )
    print(profile.model_dump_json(indent=2) if args.json else format_profile_table(profile))
    return 0


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from server.main import check_bind, create_app

    host = args.host or settings.host
    port = settings.port if args.port is None else args.port
    if not 0 <= port <= 65535:
        raise ValidationError(f"--port must be 0-65535, got {port}")
    check_bind(host, settings)
    print(f"robopt: serving on http://{host}:{port}/api/v1 (docs at /docs)", file=sys.stderr, flush=True)
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=5,  # open event streams would otherwise hold shutdown forever
    )
    return 0


def _techniques(args: argparse.Namespace) -> int:
    from tools.techniques import Family, list_techniques

    families = [family.value for family in Family]
    if args.family is not None and args.family not in families:
        raise ValidationError(f"unknown family {args.family!r}; known: {', '.join(families)}")
    infos = [
        info
        for info in list_techniques()
        if (args.family is None or info.spec.family.value == args.family)
        and (info.available or not args.available)
    ]
    if args.json:
        print(json.dumps([info.model_dump(mode="json") for info in infos], indent=2))
        return 0
    print(f"{'technique':28s} {'family':20s} {'output':22s} {'precision':9s} status")
    for info in infos:
        status = "available" if info.available else f"unavailable: {info.reason}"
        spec = info.spec
        print(
            f"{spec.name:28s} {spec.family.value:20s} {spec.output_format:22s} {spec.precision:9s} {status}"
        )
    ready = sum(info.available for info in infos)
    print(f"\n{ready} of {len(infos)} techniques can run on this machine")
    return 0


def _reference(args: argparse.Namespace, settings: Settings) -> int:
    from tools.reference import REFERENCE_MODELS, build_reference

    if args.reference_command == "list":
        for name, entry in REFERENCE_MODELS.items():
            print(f"{name:20s} {entry.description}")
        return 0
    names = args.names or list(REFERENCE_MODELS)
    built = {name: str(build_reference(name, settings.reference_dir)) for name in names}
    print(json.dumps(built, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
