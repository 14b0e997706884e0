"""Run robopt's test suites: `python3 run_tests.py --suite unit|integration|performance|slow|all`.

Installs robopt with its dev, lerobot, postgres and sim extras into `.venv` first if needed. `all` (what CI runs) leaves out
the tests marked slow and also checks Black and isort.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _bootstrap import (
    FRONTEND,
    ROOT,
    ensure_browser,
    ensure_compose,
    ensure_frontend,
    ensure_frontend_packages,
    ensure_venv,
    npm,
)

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
    "deploy",
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
TEST_TEMP_PREFIXES = ("pytest-of-",)
"""The system temp folder's entries that belong to the tests themselves (pytest's tmp_path roots)."""
TEST_REPO_FOLDERS = (".cache/",)
"""The repository's ignored folders that belong to the tests themselves: `.cache/reference`, the built reference
models kept between runs (`tests/conftest.py: reference_cache`)."""


def outside_entries() -> set[str]:
    """What lies where robopt must not write: the system temp folder's top-level entries (tests' own temp roots
    left out) and the repository's untracked and ignored paths (`git status --ignored`)."""
    temp = Path(tempfile.gettempdir())
    found = {
        f"{temp}/{entry.name}" for entry in temp.iterdir() if not entry.name.startswith(TEST_TEMP_PREFIXES)
    }
    status = subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=normal"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if status.returncode == 0:
        found |= {
            f"{ROOT}/{line[3:]}"
            for line in status.stdout.splitlines()
            if line[:2] in ("??", "!!") and line[3:] not in TEST_REPO_FOLDERS
        }
    return found


def report_stray_files(before: set[str]) -> list[str]:
    """Print the paths that appeared outside the data and test folders while the suite ran; return them.

    A report, not a gate yet (issue 16): it names what a run leaves, so each source can be sent into the data
    directory before the scan fails the suite.
    """
    stray = sorted(outside_entries() - before)
    print(f"[robopt] files left outside the data and test folders by this run: {len(stray)}", flush=True)
    for path in stray[:50]:
        print(f"[robopt]   {path}", flush=True)
    return stray


def check_style(python: str) -> int:
    """Run Black and isort in check mode over the code; return non-zero when either would change a file."""
    status = 0
    for tool in (["black", "--check", "--quiet"], ["isort", "--check-only", "--quiet"]):
        result = subprocess.run([python, "-m", *tool, *CODE_DIRS], cwd=ROOT)
        if result.returncode != 0:
            print(f"[robopt] {tool[0]} found unformatted files: run `.venv/bin/{tool[0]} .`", flush=True)
            status = 1
    return status


def test_frontend() -> int:
    """Type-check and unit-test the web page (Vitest), and build it for the server's tests; non-zero on a
    failure. Without npm the page's tests cannot run: that is said, and it fails the suite only in CI."""
    if npm() is None:
        print("[robopt] npm not found: the web page's tests did not run", flush=True)
        return 1 if os.environ.get("CI") else 0
    if not ensure_frontend_packages() or not ensure_frontend():
        return 1
    ensure_browser()  # for the end-to-end tests in pytest (tests/server/test_page_e2e.py)
    status = 0
    for script in ("typecheck", "test"):
        print(f"[robopt] frontend: npm run {script}", flush=True)
        status |= subprocess.run([str(npm()), "run", script], cwd=FRONTEND).returncode
    return status


def main() -> int:
    """Parse the suite, install if needed, check style (suite all), and run pytest."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--suite", choices=sorted(SUITES), default="all")
    parser.add_argument("pytest_args", nargs="*", help="extra arguments passed to pytest (after --)")
    args = parser.parse_args()
    python = str(ensure_venv(extras=("dev", "lerobot", "postgres", "sim")))
    style = check_style(python) if args.suite == "all" else 0
    page = test_frontend() if args.suite == "all" else 0
    if args.suite in ("unit", "all"):
        ensure_compose()  # validates deploy/'s compose files (tests/deploy); missing, those tests fail in CI
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    # no .pytest_cache in the repository: nothing outside the data directory (issue 16)
    pytest_options = ["-p", "no:cacheprovider", "--durations=10"]
    command = [python, "-m", "pytest", *pytest_options, *SUITES[args.suite], *args.pytest_args]
    print(f"[robopt] {' '.join(command[1:])}", flush=True)
    before = outside_entries()
    code = subprocess.run(command, cwd=ROOT, env=env).returncode
    report_stray_files(before)
    if code == NO_TESTS_COLLECTED:
        print(f"[robopt] suite {args.suite!r} has no tests yet", flush=True)
        code = 0
    return code or style or page


if __name__ == "__main__":
    sys.exit(main())
