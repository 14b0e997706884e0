"""A real PostgreSQL for the tests: Debian's binaries, a cluster in pytest's temp dir, a free port on 127.0.0.1.

`postgres` refuses to run as root. Under root, initdb and pg_ctl run in a user namespace (`unshare --user
--map-user=<postgres user>`): inside it they are that unprivileged user, outside they stay root, so the cluster's
files belong to root and sit in pytest's 0700 temp dirs without any permission change (handing the dir to the
`postgres` user instead needs the traverse bit on pytest's root dir, which every pytest session starting beside
us resets to 0700: the server then lost its own data dir mid-run).
Where the binaries or psycopg are missing the tests skip, unless `CI` is set: then they fail, because a missing
component must fail CI rather than skip silently.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SUPERUSER = "robopt"
START_TIMEOUT_S = 60


def unavailable(reason: str) -> None:
    """Skip the test for `reason`, or fail it when running in CI (env `CI` set)."""
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def connect(url: str) -> Any:
    """A psycopg connection to `url`, to read what robopt stored (psycopg imported here: the `postgres_server`
    fixture has already skipped, or failed in CI, where it is missing)."""
    import psycopg

    return psycopg.connect(url)


def find_bin_dir() -> Path | None:
    """The newest Debian PostgreSQL bin dir (`/usr/lib/postgresql/<v>/bin`), else the one of `pg_ctl` on PATH."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda path: int(Path(path).parts[-3])
    )
    if candidates:
        return Path(candidates[-1]).parent
    on_path = shutil.which("pg_ctl")
    if on_path and (Path(on_path).resolve().parent / "initdb").exists():
        return Path(on_path).resolve().parent
    return None


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _unprivileged_prefix() -> tuple[str, ...]:
    """The command prefix that runs PostgreSQL's binaries as an unprivileged user in a user namespace."""
    unshare = shutil.which("unshare")
    for name in ("postgres", "nobody"):  # initdb needs a passwd entry for its user id
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        prefix = (unshare or "unshare", "--user", f"--map-user={entry.pw_uid}", f"--map-group={entry.pw_gid}")
        if unshare and subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    unavailable("running as root, and no user namespace (`unshare --user`) to run PostgreSQL unprivileged")
    raise AssertionError("unreachable")


@dataclass
class PostgresServer:
    """A running cluster: connect as `SUPERUSER` (trust auth) on 127.0.0.1:`port`."""

    bin_dir: Path
    root: Path
    port: int
    prefix: tuple[str, ...]

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        """The libpq URL of `database` on this server (the form robopt's settings accept)."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL binary as the cluster's owner; raise with its output when it fails."""
        done = subprocess.run(
            [*self.prefix, str(self.bin_dir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S + 30,
            cwd=self.root,
        )
        if done.returncode != 0:
            log = self.root / "postgres.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stdout}{done.stderr}{tail}")
        return done

    def start(self) -> None:
        """initdb (trust auth, no fsync) and start on the port, its unix socket inside `root`."""
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--no-sync")
        options = f"-p {self.port} -k {self.root / 'sock'} -c listen_addresses=127.0.0.1 -c fsync=off"
        (self.root / "sock").mkdir()
        self._run(
            "pg_ctl", "start", "-w", "-t", str(START_TIMEOUT_S), "-D", str(self.data),
            "-l", str(self.root / "postgres.log"), "-o", options,
        )  # fmt: skip

    def stop(self) -> None:
        """Stop the cluster (fast: open sessions are rolled back)."""
        self._run("pg_ctl", "stop", "-m", "fast", "-w", "-D", str(self.data))

    def create_database(self) -> str:
        """A fresh, empty database; returns its name."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        """Drop `name`, closing whatever sessions still use it."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def running_postgres(root: Path) -> Iterator[PostgresServer]:
    """Start a PostgreSQL cluster under `root` (unprivileged in a user namespace when we are root); stop it after."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        unavailable(
            "PostgreSQL's binaries are not installed (no /usr/lib/postgresql/*/bin/initdb nor pg_ctl on PATH)"
        )
    try:
        import psycopg  # noqa: F401
    except ImportError:
        unavailable("psycopg is not installed: pip install -e '.[postgres]'")
    prefix = _unprivileged_prefix() if os.geteuid() == 0 else ()
    server = PostgresServer(bin_dir=bin_dir, root=root, port=_free_port(), prefix=prefix)
    server.start()
    try:
        yield server
    finally:
        server.stop()
