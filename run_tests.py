"""Run robopt's test suites: `python3 run_tests.py --suite unit|integration|performance|slow|all`.

Installs robopt with its dev, lerobot and sim extras into `.venv` first if needed. `all` (what CI runs) leaves out
the tests marked slow and also checks Black and isort.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from _bootstrap import ROOT, ensure_venv

CODE_DIRS = [
    "graph",
    "tools",
    "agents",
    "server",
    "evals",
    "tests",
    "run_tests.py",
    "run_robopt.py",
    "_bootstrap.py",
]
SUITES = {
    "unit": ["tests", "-m", "not integration and not performance", "--ignore=tests/performance"],
    "integration": [
        "tests",
        "-m",
        "integration and not performance and not slow",
        "--ignore=tests/performance",
    ],
    "performance": ["tests/performance", "-s"],
    "slow": ["tests", "-m", "slow", "-s"],
    "all": ["tests", "-m", "not slow"],
}
NO_TESTS_COLLECTED = 5


def check_style(python: str) -> int:
    """Run Black and isort in check mode over the code; return non-zero when either would change a file."""
    status = 0
    for tool in (["black", "--check", "--quiet"], ["isort", "--check-only", "--quiet"]):
        result = subprocess.run([python, "-m", *tool, *CODE_DIRS], cwd=ROOT)
        if result.returncode != 0:
            print(f"[robopt] {tool[0]} found unformatted files: run `.venv/bin/{tool[0]} .`", flush=True)
            status = 1
    return status


def main() -> int:
    """Parse the suite, install if needed, check style (suite all), and run pytest."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--suite", choices=sorted(SUITES), default="all")
    parser.add_argument("pytest_args", nargs="*", help="extra arguments passed to pytest (after --)")
    args = parser.parse_args()
    python = str(ensure_venv(extras=("dev", "lerobot", "sim")))
    style = check_style(python) if args.suite == "all" else 0
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    command = [python, "-m", "pytest", *SUITES[args.suite], "--durations=10", *args.pytest_args]
    print(f"[robopt] {' '.join(command[1:])}", flush=True)
    code = subprocess.run(command, cwd=ROOT, env=env).returncode
    if code == NO_TESTS_COLLECTED:
        print(f"[robopt] suite {args.suite!r} has no tests yet", flush=True)
        code = 0
    return code or style


if __name__ == "__main__":
    sys.exit(main())
