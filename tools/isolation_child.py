"""The child's side of `tools.isolation`: lead a process group, apply the limits, run the target, answer once.

Kept apart from the parent's side so each stays small; the fork server preloads both.
"""

from __future__ import annotations

import faulthandler
import importlib
import inspect
import multiprocessing
import os
import pickle
import signal
import sys
import tempfile
import threading
import traceback
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any, Callable

from tools.errors import (
    ConfigurationError,
    MissingDependencyError,
    OptimizationError,
    RoboptError,
    first_line,
)
from tools.log import configure_logging

if TYPE_CHECKING:
    from tools.isolation import Limits

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def child_main(
    conn: Connection,
    target: str,
    kwargs: dict[str, Any],
    limits: Limits,
    fault_path: str,
    environ: dict[str, str],
) -> None:
    """Run in the child: lead a new process group, apply the limits, call the target, send one answer."""
    os.setsid()
    _watch_parent()
    fault_file = open(fault_path, "w", encoding="utf-8")  # noqa: SIM115 - open until the process ends
    faulthandler.enable(fault_file, all_threads=True)
    faulthandler.register(signal.SIGUSR1, fault_file, all_threads=True)
    os.environ.clear()
    os.environ.update(environ)  # the caller's environment now, not the fork server's at its start
    tempfile.tempdir = None  # the caller's TMPDIR (its data directory's scratch), not the fork server's
    configure_logging("WARNING")
    send_lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with send_lock:  # progress may come from the function's own threads
            conn.send(message)

    try:
        if limits.threads is not None:
            for name in THREAD_ENV:
                os.environ[name] = str(limits.threads)
            import torch

            torch.set_num_threads(limits.threads)
        function = _resolve_target(target)
        call_kwargs = dict(kwargs)
        try:
            takes_progress = "progress" in inspect.signature(function).parameters
        except (TypeError, ValueError):  # a builtin without a signature
            takes_progress = False
        if takes_progress:
            call_kwargs["progress"] = lambda percent, message="": send(
                ("progress", float(percent), str(message))
            )
        result = function(**call_kwargs)
        try:
            send(("result", result))
        except Exception as exc:  # noqa: BLE001 - an unpicklable result is the function's error
            raise OptimizationError(
                f"the result of {target} cannot be sent back: {first_line(exc)}",
                hint="return picklable values only (pydantic models, paths, primitives)",
            ) from None
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
        send(("error", _error_payload(exc)))
    finally:
        conn.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip library atexit hooks and lingering non-daemon threads: the answer is sent


def _watch_parent() -> None:
    """Kill this process group when the parent dies (its sentinel closes), so no child outlives its caller."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="robopt-parent-watch", daemon=True).start()


def import_path(path: str) -> Any:
    """Import 'module:Qual.Name' and return the object it names (ImportError, AttributeError when absent)."""
    module_name, _, qualname = path.partition(":")
    found: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


def _resolve_target(target: str) -> Callable[..., Any]:
    """Import the target; a missing module or function is a ConfigurationError naming it."""
    module_name, _, qualname = target.partition(":")
    try:
        found = import_path(target)
    except ModuleNotFoundError as exc:
        if exc.name and module_name != exc.name and not module_name.startswith(exc.name + "."):
            raise MissingDependencyError(
                f"{target} needs the package {exc.name!r}, which is not installed",
                hint=f"install {exc.name} in robopt's environment",
            ) from None
        raise ConfigurationError(
            f"isolated target {target} does not import: no module named {exc.name!r}",
            hint="name a module importable in the child (on sys.path) as 'package.module:function'",
        ) from None
    except AttributeError:
        raise ConfigurationError(
            f"isolated target {target} does not exist: {module_name} has no {qualname!r}",
            hint="check the function's name after ':'",
        ) from None
    if not callable(found):
        raise ConfigurationError(f"isolated target {target} is not callable", hint="name a function")
    return found


def _error_payload(exc: BaseException) -> dict[str, Any]:
    """Describe the child's exception as picklable data the parent rebuilds it from."""
    text = traceback.format_exc()
    if not isinstance(exc, RoboptError):
        message = f"{type(exc).__name__}: {first_line(exc)}"
        return {"kind": "plain", "type": type(exc).__name__, "message": message, "traceback": text}
    classes = [f"{c.__module__}:{c.__qualname__}" for c in type(exc).__mro__ if issubclass(c, RoboptError)]
    detail = exc.detail
    try:
        pickle.dumps(detail)
    except Exception:  # noqa: BLE001 - keep what can travel, as text
        detail = {key: repr(value) for key, value in detail.items()}
    payload = {"message": exc.message, "hint": exc.hint, "detail": detail, "traceback": text}
    return {"kind": "robopt", "classes": classes, **payload}
