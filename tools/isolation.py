"""Run a function in a child process under time and memory limits, so a crash or hang fails only that call.

The optimize and evaluate steps run techniques and measurements through `run_isolated(target, kwargs, ...)`:
an out-of-memory, a segfault in a native library or a hang becomes a RoboptError in the parent (the graph
runner, an async server), which keeps running. Every call kills and reaps its child and the child's group.

Start method: 'forkserver' preloading torch. The server starts once (1.3-2 s: it imports torch); each child
then forks from it in about 20 ms, with no OpenMP pool. 'spawn' pays the imports in every child (1.1-1.3 s
measured); 'fork' (about 45 ms) copies a parent whose threads (asyncio, aiosqlite, torch's OpenMP pool) can
deadlock it. Children re-run the caller's `__main__` (multiprocessing's rule); the server preloads what it
imports.

Memory: `Limits.memory_mb` caps the resident set (RSS) of the child and its descendants, polled by the parent
every `POLL_S`. Not RLIMIT_AS: torch alone reserves 0.7 GB of address space, each thread adds a 64 MB malloc
arena and CUDA maps tens of GB, so an address-space cap fails healthy children or caps nothing. The RSS
starts at about 150 MB (the interpreter with torch, pages shared with the server, measured). A fast allocation
can overshoot by a few hundred MB before the kill; one past the machine's memory meets the OOM killer first
(ChildCrashedError naming SIGKILL).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import itertools
import multiprocessing
import multiprocessing.process
import os
import pickle
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import types
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import psutil

from tools.errors import (
    ChildCancelledError,
    ChildCrashedError,
    ChildMemoryError,
    ChildTimeoutError,
    ConfigurationError,
    OptimizationError,
    ResourceError,
    RoboptError,
    ValidationError,
    first_line,
)
from tools.isolation_child import child_main, import_path
from tools.log import get_logger

log = get_logger("isolation")

StartMethod = Literal["forkserver", "spawn", "fork"]
DEFAULT_PRELOAD: tuple[str, ...] = ("torch", "pydantic", "tools.isolation", "tools.isolation_child")
POLL_S = 0.05
EXIT_GRACE_S = 2.0
STACK_DUMP_WAIT_S = 0.2
_DESCENDANTS_EVERY = 10
_MB = 1024 * 1024
_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_start: dict[str, Any] = {"method": "forkserver", "preload": DEFAULT_PRELOAD}
_start_lock = threading.Lock()
_Process = multiprocessing.process.BaseProcess
_SIGNAL_NAMES = {number.value: number.name for number in signal.Signals}


@dataclass(frozen=True)
class Limits:
    """Limits of one isolated call: wall-clock seconds, resident MB (child and descendants), torch threads."""

    time_s: float | None = None
    memory_mb: int | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        """Refuse limits that cannot be applied, naming the bad value."""
        for name in ("time_s", "memory_mb", "threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not value > 0):
                raise ValidationError(f"Limits.{name} must be > 0: {value!r}", hint="give a positive value")


def configure_start_method(
    method: StartMethod = "forkserver", preload: Sequence[str] = DEFAULT_PRELOAD
) -> None:
    """Choose how children start and what the fork server imports (process-wide), before the first call."""
    if method not in ("forkserver", "spawn", "fork"):
        raise ConfigurationError(f"unknown start method {method!r}", hint="use forkserver, spawn or fork")
    _start.update(method=method, preload=tuple(preload))


UNIX_SOCKET_PATH_MAX = 107
"""The longest AF_UNIX socket path Linux takes (sun_path is 108 bytes with its NUL)."""
_MP_SOCKET_SUFFIX = len("/pymp-xxxxxxxx/listener-xxxxxxxx")
"""What multiprocessing adds to the temp folder for the fork server's socket (`pymp-*/listener-*`)."""


_SHORT_SYSTEM_TEMP = ("/tmp", "/var/tmp")
"""Where multiprocessing's folder goes when the data directory is too deep for a socket path: fixed short paths,
never TMPDIR (which may already point into some data directory)."""


@contextlib.contextmanager
def scratch_dir(data_dir: Path) -> Iterator[Path]:
    """Send this process's temporary files, and its children's, to `<data_dir>/work/tmp` for the block.

    `tempfile` follows TMPDIR, and with it ONNX Runtime's `ort.quant.*` scratch, robopt's `robopt-latency-*`
    and multiprocessing's `pymp-*` folder: set before any child or fork server starts, it holds for the whole
    process tree (children get the caller's environment), so nothing lands outside the data directory. When the
    folder is too deep for the fork server's socket path (108 bytes), multiprocessing's folder is still made in
    it and reached through a short alias, `/proc/self/fd/N` of an open handle on it (`_short_socket_folder`):
    a SIGKILLed process used to leave its short `/tmp/pymp-*` folder behind. TMPDIR and `tempfile.tempdir` are
    restored after the block, so a caller in the same process (a test calling the CLI's `main`) is left as it
    was.
    """
    scratch = Path(data_dir).resolve() / "work" / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    previous_env, previous_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
    if len(str(scratch)) + _MP_SOCKET_SUFFIX > UNIX_SOCKET_PATH_MAX:
        import multiprocessing.util

        config = multiprocessing.process.current_process()._config  # noqa: SLF001 - see the docstring
        if config.get("tempdir") is None:
            config["tempdir"] = _short_socket_folder(scratch)
            log.info(
                "fork server socket reached through a short alias",
                extra={"scratch": str(scratch), "alias": config["tempdir"]},
            )
    os.environ["TMPDIR"] = str(scratch)
    tempfile.tempdir = None  # re-read TMPDIR on next use
    try:
        yield scratch
    finally:
        if previous_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = previous_env
        tempfile.tempdir = previous_tempdir


def _short_socket_folder(scratch: Path) -> str:
    """multiprocessing's folder (for the fork server's socket) inside `scratch`, as a path short enough for a
    socket: `/proc/self/fd/N` of a handle this process keeps open on it (the parent binds and connects the
    socket itself; the fork server gets the bound socket, not its path). Removed at exit. Without /proc (not
    Linux) a short system folder stands in, removed at exit too."""
    import multiprocessing.util

    if os.path.isdir("/proc/self/fd"):
        folder = tempfile.mkdtemp(prefix="pymp-", dir=scratch)
        handle = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)  # not inherited by children (O_CLOEXEC)
        multiprocessing.util.Finalize(None, _remove_socket_folder, args=[folder, handle], exitpriority=-100)
        return f"/proc/self/fd/{handle}"
    short = next((d for d in _SHORT_SYSTEM_TEMP if os.path.isdir(d) and os.access(d, os.W_OK)), None)
    folder = tempfile.mkdtemp(prefix="pymp-", dir=short)
    multiprocessing.util.Finalize(None, shutil.rmtree, args=[folder, True], exitpriority=-100)
    return folder


def _remove_socket_folder(folder: str, handle: int) -> None:
    """Remove the socket folder and close the handle that aliased it."""
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.close(handle)


def prestart() -> float:
    """Start the fork server and wait until it has imported torch (call at start-up); return the seconds."""
    started = time.monotonic()
    run_isolated("os:getpid", {}, limits=Limits(time_s=300))
    return time.monotonic() - started


def run_isolated(
    target: str,
    kwargs: dict[str, Any],
    *,
    limits: Limits,
    on_progress: Callable[[float, str], None] | None = None,
    job_id: str | None = None,
    cancel_event: threading.Event | None = None,
    scratch_dir: Path | None = None,
) -> Any:
    """Call `target` ('package.module:function') with `kwargs` in a child process and return its result.

    `scratch_dir` holds the call's crash-dump file while it runs (default: the system's temp folder); pass the
    data directory's work folder so that nothing is written outside it.

    The function gets `progress=callback(percent, message)` when it has a `progress` parameter; `on_progress`
    is called in this thread as messages arrive. Setting `cancel_event` kills the child (ChildCancelledError).
    """
    if not isinstance(target, str) or not _TARGET.match(target):
        raise ValidationError(
            f"isolated target must look like 'package.module:function', got {target!r}",
            hint="name an importable module and a function in it, separated by ':'",
        )
    if "progress" in kwargs:
        raise ValidationError(f"kwargs for {target} hold 'progress'", hint="run_isolated passes it")
    context = multiprocessing.get_context(_start["method"])
    if _start["method"] == "forkserver":
        context.set_forkserver_preload(_preload_modules())
    receiver, sender = context.Pipe(duplex=False)
    if scratch_dir is not None:
        Path(scratch_dir).mkdir(parents=True, exist_ok=True)
    fault_fd, fault_path = tempfile.mkstemp(prefix="robopt-isolation-", suffix=".fault", dir=scratch_dir)
    os.close(fault_fd)
    process = context.Process(
        target=child_main,
        args=(sender, target, kwargs, limits, fault_path, dict(os.environ)),
        name=f"robopt-isolated-{job_id or target}",
    )
    try:
        _start_child(process, target)
        sender.close()
        log.info("isolated child started", extra={"target": target, "job_id": job_id, "pid": process.pid})
        outcome = _supervise(process, receiver, target, limits, on_progress, cancel_event, job_id)
    except ChildTimeoutError as exc:
        exc.detail["native_traceback"] = _read_tail(fault_path)  # where the child hung
        raise
    finally:
        try:
            sender.close()
            _kill_and_reap(process)
            exitcode = process.exitcode
            process.close()
            receiver.close()
            native = _read_tail(fault_path)
        finally:  # removed on every path, a failed start or reap included (issue 16: stray `*.fault` files)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(fault_path)
    return _answer(outcome, exitcode, target, job_id, native)


async def run_isolated_async(
    target: str,
    kwargs: dict[str, Any],
    *,
    limits: Limits,
    on_progress: Callable[[float, str], None] | None = None,
    job_id: str | None = None,
    scratch_dir: Path | None = None,
) -> Any:
    """Run `run_isolated` in a worker thread; cancelling the awaiting task kills the child, then re-raises.

    `on_progress` is called from the worker thread, not the event loop's: hand data over with
    `loop.call_soon_threadsafe` or a thread-safe queue.
    """
    cancel = threading.Event()
    call = functools.partial(
        run_isolated, target, kwargs, limits=limits, on_progress=on_progress, scratch_dir=scratch_dir
    )
    worker = asyncio.ensure_future(asyncio.to_thread(call, job_id=job_id, cancel_event=cancel))
    try:
        return await asyncio.shield(worker)
    except asyncio.CancelledError:
        cancel.set()
        await asyncio.wait({worker})  # the worker kills and reaps the child within one poll
        if not worker.cancelled():
            worker.exception()  # retrieved: the expected ChildCancelledError
        raise


# --- the parent's side -------------------------------------------------------------------------------------


def _preload_modules() -> list[str]:
    """Return the configured preload plus the modules the caller's `__main__` imports.

    Every forkserver or spawn child re-runs `__main__` (multiprocessing's rule; preloading '__main__' itself
    is a no-op in 3.11): with its imports cached in the fork server, that takes milliseconds, not 0.2-0.3 s.
    """
    names = list(_start["preload"])
    main = sys.modules.get("__main__")
    spec_name = getattr(getattr(main, "__spec__", None), "name", None)
    candidates = [spec_name] if spec_name else []
    for key, value in vars(main).items() if main is not None else ():
        if key.startswith("__"):  # the loader and other interpreter attributes
            continue
        if isinstance(value, types.ModuleType):
            candidates.append(value.__name__)
        elif inspect.isfunction(value) or inspect.isclass(value):
            candidates.append(value.__module__)
    skip = {"__main__", *names, *sys.builtin_module_names}
    names += [name for name in dict.fromkeys(candidates) if name in sys.modules and name not in skip]
    return names


def _start_child(process: _Process, target: str) -> None:
    """Start the child and take it out of multiprocessing's registry of children.

    Any thread's `Process.start()` polls every registered child; a second poll of ours would read a wrong exit
    status (forkserver) or hang (fork). Only the calling thread polls a child it took out under this lock.
    """
    with _start_lock:
        try:
            process.start()
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise ValidationError(
                f"kwargs for {target} cannot be sent to a child process: {first_line(exc)}",
                hint="pass picklable values only (pydantic models, paths, primitives)",
            ) from None
        except OSError as exc:
            raise ResourceError(f"cannot start a child process for {target}: {exc}") from None
        multiprocessing.process._children.discard(process)  # noqa: SLF001 - see the docstring


def _supervise(
    process: _Process,
    receiver: Connection,
    target: str,
    limits: Limits,
    on_progress: Callable[[float, str], None] | None,
    cancel_event: threading.Event | None,
    job_id: str | None,
) -> tuple[str, Any]:
    """Relay progress and enforce the limits until the child answers ('result'/'error', value) or dies.

    Returns ('died', None) when it exits without one; raises ChildCancelledError, ChildTimeoutError or
    ChildMemoryError when the caller or a limit stops it.
    """
    started = time.monotonic()
    rss_mb = _watch_rss_mb(process.pid)
    last_progress: list[Any] | None = None
    while True:
        ready = wait([receiver, process.sentinel], timeout=POLL_S)
        if receiver in ready or (process.sentinel in ready and receiver.poll(0)):
            try:
                kind, *payload = receiver.recv()
            except EOFError:  # it closed its end: it is exiting without an answer
                process.join(EXIT_GRACE_S)
                return "died", None
            except Exception as exc:  # noqa: BLE001 - an answer this process cannot unpickle
                text = f"the child's answer cannot be read in the parent: {first_line(exc)}"
                return "error", {"kind": "plain", "type": type(exc).__name__, "message": text}
            if kind in ("result", "error"):
                process.join(EXIT_GRACE_S)  # it exits right after answering; a kill now would race it
                return kind, payload[0]
            last_progress = payload
            if on_progress is not None:
                on_progress(payload[0], payload[1])
        elif process.sentinel in ready:
            return "died", None
        elapsed = time.monotonic() - started
        detail = {"pid": process.pid, "target": target, "job_id": job_id, "elapsed_s": round(elapsed, 3)}
        detail["last_progress"] = last_progress
        error: RoboptError | None = None
        if cancel_event is not None and cancel_event.is_set():
            error = ChildCancelledError(
                f"{target} was cancelled; its child process was killed", detail=detail
            )
        elif limits.time_s is not None and elapsed > limits.time_s:
            with contextlib.suppress(ProcessLookupError):  # faulthandler dumps its stacks: where it hung
                os.kill(process.pid, signal.SIGUSR1)
                time.sleep(STACK_DUMP_WAIT_S)
            error = ChildTimeoutError(
                f"{target} did not finish within {limits.time_s:g} s; its child process was killed",
                hint="raise the time limit, or choose a lighter technique or a smaller calibration set",
                detail={**detail, "time_s": limits.time_s},
            )
        elif limits.memory_mb is not None and (used_mb := next(rss_mb)) > limits.memory_mb:
            error = ChildMemoryError(
                f"{target} used {used_mb:.0f} MB resident, past its memory limit of {limits.memory_mb} MB; "
                "its child process was killed",
                hint="raise the memory limit, or choose a technique that needs less memory (smaller batches, "
                "fewer calibration samples)",
                detail={**detail, "memory_mb": limits.memory_mb, "rss_mb": round(used_mb, 1)},
            )
        if error is not None:
            _kill_and_reap(process)
            log.warning("isolated child stopped", extra={**detail, "code": error.code})
            raise error


def _watch_rss_mb(pid: int) -> Iterator[float]:
    """Yield at each next() the RSS in MB of a process and its descendants (re-listed every few reads)."""
    processes: list[psutil.Process] = []
    for reads in itertools.count():
        if reads % _DESCENDANTS_EVERY == 0:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(pid)
                processes = [root, *root.children(recursive=True)]
        total = 0
        for process in processes:
            with contextlib.suppress(psutil.Error):  # it just exited: it holds nothing
                total += process.memory_info().rss
        yield total / _MB


def _kill_and_reap(process: _Process) -> None:
    """Kill the child's process group unless it already exited, reap the child, then kill any straggler."""
    if process.pid is None:  # never started
        return
    if process.exitcode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(process.pid) == process.pid:  # it leads its group (it ran os.setsid)
                os.killpg(process.pid, signal.SIGKILL)
            else:
                process.kill()
        process.join()
    # stragglers in its group (a technique's workers) die with the call
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _answer(
    outcome: tuple[str, Any], exitcode: int | None, target: str, job_id: str | None, stack: str
) -> Any:
    """Return the child's result, or raise the error it reported or the crash the parent saw."""
    kind, value = outcome
    if kind == "result":
        return value
    if kind == "error":
        raise _rebuild_error(value)
    detail: dict[str, Any] = {"target": target, "job_id": job_id, "returncode": exitcode}
    if stack:
        detail["native_traceback"] = stack
    if exitcode is None or exitcode >= 0:
        raise ChildCrashedError(
            f"the child process running {target} exited with status {exitcode} without an answer",
            hint="the function or a library it calls ended the process (os._exit, a fatal error)",
            detail=detail,
        )
    detail["signal"] = _SIGNAL_NAMES.get(-exitcode, f"signal {-exitcode}")
    hint = "a native library crashed; try another technique or backend"
    if detail["signal"] == "SIGKILL":
        hint = "the kernel's OOM killer may have stopped it: set a memory limit below the free memory"
    raise ChildCrashedError(
        f"the child process running {target} was killed by {detail['signal']}", hint=hint, detail=detail
    )


def _rebuild_error(payload: dict[str, Any]) -> RoboptError:
    """Rebuild the child's error: its RoboptError class (or nearest importable base), else one of ours."""
    if payload["kind"] == "plain":
        plain = ResourceError if payload["type"] == "MemoryError" else OptimizationError
        return plain(
            payload["message"],
            hint="detail['traceback'] shows where it failed in the child process",
            detail={"traceback": payload.get("traceback", ""), "exception_type": payload["type"]},
        )
    error_class: type[RoboptError] = OptimizationError
    for path in payload["classes"]:  # the child's class, else its nearest base that imports here
        with contextlib.suppress(Exception):
            error_class = import_path(path)
            break
    message, hint, detail = payload["message"], payload["hint"], payload["detail"]
    try:
        error = error_class(message, hint=hint, detail=detail)
    except TypeError:  # a subclass with its own constructor: set the fields RoboptError defines
        error = error_class.__new__(error_class)
        Exception.__init__(error, message)
        error.message, error.hint, error.detail = message, hint, dict(detail)
    error.add_note("traceback in the child process:\n" + payload["traceback"])
    return error


def _read_tail(path: str, limit: int = 4000) -> str:
    """Return the end of a text file (the child's faulthandler output), or '' when it is missing or empty."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()[-limit:].strip()
    except OSError:
        return ""
