"""`python -m evals [--quick] [--out DIR] [--data-dir DIR]`: run the eval suite and write its figures.

A benchmark: it prints figures and exits non-zero only when the run is broken (a robopt job errored, the
original could not be measured), never because of a timing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
DEFAULT_DATA = REPO / ".cache" / "evals"
DEFAULT_REFERENCE = REPO / ".cache" / "reference"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(prog="python -m evals", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the quick subset (conv policy, a tiny grid)")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA,
        help=f"versions, jobs and caches (default {DEFAULT_DATA})",
    )
    parser.add_argument(
        "--reference-cache",
        type=Path,
        default=DEFAULT_REFERENCE,
        help=f"where reference models are built and cached (default {DEFAULT_REFERENCE})",
    )
    parser.add_argument("--scenario", action="append", help="run only this scenario (repeatable)")
    parser.add_argument("--note", help="a note on the run's conditions, quoted in the summary")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the suite; 0 when it ran, 1 when it is broken."""
    from evals.runner import broken, run_suite
    from evals.scenarios import select_scenarios
    from evals.summary import headline_table
    from tools.errors import RoboptError

    args = parse_args(argv)
    try:
        scenarios = select_scenarios(args.quick, args.scenario)
        document = run_suite(
            scenarios,
            args.data_dir,
            args.reference_cache,
            args.out,
            mode="quick" if args.quick else "full",
            note=args.note,
        )
    except RoboptError as error:
        print(f"evals: {error.one_line()}", file=sys.stderr)
        return 1
    print("\n".join(headline_table(document)))
    problems = broken(document)
    for problem in problems:
        print(f"evals: broken run: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
