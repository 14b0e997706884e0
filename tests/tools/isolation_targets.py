"""Functions that tests/tools/test_isolation.py runs in child processes (children import them by name)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

from tools.errors import ValidationError

CHUNK_MB = 64


def add(a: int, b: int) -> dict[str, int]:
    """Return the sum and the child's pid, so a test can tell the call ran in another process."""
    return {"sum": a + b, "pid": os.getpid()}


def report_steps(steps: int, pause_s: float, progress: Callable[[float, str], None]) -> list[str]:
    """Report `steps` progress messages naming this pid, pausing between them, and return their texts."""
    sent = []
    for step in range(steps):
        message = f"step {step} pid={os.getpid()}"
        progress(100.0 * step / max(1, steps - 1), message)
        sent.append(message)
        time.sleep(pause_s)
    return sent


def reject_input(path: Path) -> None:
    """Raise the project's ValidationError with a hint and detail, as a technique does on bad input."""
    raise ValidationError(
        f"{path.name} has no calibration samples", hint="add samples", detail={"path": str(path)}
    )


def fail_plainly() -> None:
    """Raise an exception that is not a RoboptError, with a second line the parent should drop."""
    raise ValueError("weights have the wrong shape\nsecond line that is not the message")


def segfault(progress: Callable[[float, str], None]) -> None:
    """Report this pid, then die of SIGSEGV as a crashing native library would."""
    progress(0.0, f"pid={os.getpid()}")
    os.kill(os.getpid(), signal.SIGSEGV)


def exit_early() -> None:
    """Leave the process without an answer, as a library calling os._exit would."""
    os._exit(3)


def sleep_forever(progress: Callable[[float, str], None]) -> None:
    """Start a grandchild, report both pids ('child grandchild'), then hang in a sleep."""
    grandchild = subprocess.Popen(["sleep", "60"])
    progress(0.0, f"{os.getpid()} {grandchild.pid}")
    time.sleep(60)


def allocate(max_mb: int, progress: Callable[[float, str], None]) -> int:
    """Touch memory in 64 MB chunks up to `max_mb` (reporting this pid first) and return the MB held."""
    progress(0.0, f"pid={os.getpid()}")
    chunks = [b"\x01" * (CHUNK_MB * 1024 * 1024) for _ in range(max_mb // CHUNK_MB)]
    return len(chunks) * CHUNK_MB


def thread_settings() -> dict[str, object]:
    """Return torch's intra-op thread count and OMP_NUM_THREADS as the child sees them."""
    import torch

    return {"torch": torch.get_num_threads(), "omp": os.environ.get("OMP_NUM_THREADS")}


def read_environment(name: str) -> str | None:
    """Return an environment variable as the child sees it."""
    return os.environ.get(name)
