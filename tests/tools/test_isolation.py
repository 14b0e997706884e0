"""Tests of run_isolated with real child processes: results, progress, errors, crashes, limits, cancelling."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from tools.errors import ConfigurationError, OptimizationError, ResourceError, ValidationError
from tools.isolation import (
    ChildCrashedError,
    ChildMemoryError,
    ChildTimeoutError,
    Limits,
    prestart,
    run_isolated,
    run_isolated_async,
)

TARGETS = "tests.tools.isolation_targets"
REPO = Path(__file__).resolve().parents[2]
QUICK = Limits(time_s=30)


@pytest.fixture(scope="module", autouse=True)
def fork_server() -> Iterator[None]:
    """Start the fork server once (it imports torch), so that each test times only its own child."""
    prestart()
    yield


def _gone(pid: int) -> bool:
    """Tell whether a process no longer runs (a zombie left to init counts as gone: it holds no memory)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_returns_the_value_the_function_computed_in_another_process() -> None:
    answer = run_isolated(f"{TARGETS}:add", {"a": 2, "b": 3}, limits=QUICK)
    assert answer["sum"] == 5
    assert answer["pid"] != os.getpid()
    assert not psutil.pid_exists(answer["pid"]), "the child outlived the call"


def test_progress_arrives_in_order_in_the_calling_thread_while_the_child_runs() -> None:
    seen: list[tuple[float, str, bool, int, float]] = []

    def on_progress(percent: float, message: str) -> None:
        pid = int(message.rsplit("=", 1)[1])
        alive = psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        seen.append((percent, message, alive, threading.get_ident(), time.monotonic()))

    sent = run_isolated(
        f"{TARGETS}:report_steps", {"steps": 4, "pause_s": 0.15}, limits=QUICK, on_progress=on_progress
    )
    returned_at = time.monotonic()
    assert [m for _, m, _, _, _ in seen] == sent
    assert [round(p, 1) for p, _, _, _, _ in seen] == [0.0, 33.3, 66.7, 100.0]
    assert all(alive for _, _, alive, _, _ in seen), "a message was relayed after the child had exited"
    assert {ident for _, _, _, ident, _ in seen} == {threading.get_ident()}
    assert returned_at - seen[0][4] >= 0.4, "the first message was only relayed at the end"


def test_a_robopt_error_in_the_child_is_raised_again_with_its_class_message_hint_and_detail(
    tmp_path: Path,
) -> None:
    with pytest.raises(ValidationError) as caught:
        run_isolated(f"{TARGETS}:reject_input", {"path": tmp_path / "calib.npz"}, limits=QUICK)
    error = caught.value
    assert type(error) is ValidationError
    assert error.message == "calib.npz has no calibration samples"
    assert error.hint == "add samples"
    assert error.detail == {"path": str(tmp_path / "calib.npz")}
    assert any("reject_input" in note for note in error.__notes__), "the child's traceback is lost"


def test_any_other_exception_becomes_an_optimization_error_with_the_childs_traceback() -> None:
    with pytest.raises(OptimizationError) as caught:
        run_isolated(f"{TARGETS}:fail_plainly", {}, limits=QUICK)
    error = caught.value
    assert type(error) is OptimizationError
    assert error.message == "ValueError: weights have the wrong shape"
    assert "fail_plainly" in error.detail["traceback"]
    assert "ValueError" in error.detail["traceback"]


def test_a_segfault_is_a_crash_naming_the_signal_and_the_parent_keeps_working() -> None:
    pids: list[int] = []
    with pytest.raises(ChildCrashedError) as caught:
        run_isolated(
            f"{TARGETS}:segfault",
            {},
            limits=QUICK,
            on_progress=lambda _, message: pids.append(int(message.split("=")[1])),
        )
    error = caught.value
    assert isinstance(error, OptimizationError) and error.code == "child_crashed"
    assert "SIGSEGV" in error.message and error.detail["signal"] == "SIGSEGV"
    assert "segfault" in error.detail["native_traceback"], "faulthandler's stack of the crash is missing"
    assert not psutil.pid_exists(pids[0])
    assert run_isolated(f"{TARGETS}:add", {"a": 1, "b": 1}, limits=QUICK)["sum"] == 2


def test_the_crash_dump_stays_in_the_scratch_folder_and_is_removed(tmp_path: Path) -> None:
    scratch = tmp_path / "data" / "work"
    with pytest.raises(ChildCrashedError) as caught:
        run_isolated(f"{TARGETS}:segfault", {}, limits=QUICK, scratch_dir=scratch)
    assert "segfault" in caught.value.detail["native_traceback"]  # it was written there and read back
    assert run_isolated(f"{TARGETS}:add", {"a": 2, "b": 2}, limits=QUICK, scratch_dir=scratch)["sum"] == 4
    assert scratch.is_dir() and not list(scratch.iterdir())


def test_a_child_that_exits_without_an_answer_is_a_crash_with_its_status() -> None:
    with pytest.raises(ChildCrashedError, match="status 3"):
        run_isolated(f"{TARGETS}:exit_early", {}, limits=QUICK)


def test_a_hang_past_the_time_limit_kills_the_child_and_its_process_group() -> None:
    pids: list[int] = []
    started = time.monotonic()
    with pytest.raises(ChildTimeoutError) as caught:
        run_isolated(
            f"{TARGETS}:sleep_forever",
            {},
            limits=Limits(time_s=1.0),
            on_progress=lambda _, message: pids.extend(int(p) for p in message.split()),
        )
    elapsed = time.monotonic() - started
    error = caught.value
    assert isinstance(error, ResourceError) and error.code == "child_timeout"
    assert elapsed < 4.0, f"the timeout took {elapsed:.1f} s to act"
    child, grandchild = pids
    assert not psutil.pid_exists(child), "the timed-out child is still there"
    assert _gone(grandchild), "the child's own subprocess survived"
    assert "sleep_forever" in error.detail["native_traceback"], "the stack of the hang is missing"


def test_a_child_allocating_past_the_memory_limit_is_killed_with_a_resource_error() -> None:
    pids: list[int] = []
    with pytest.raises(ResourceError) as caught:
        run_isolated(
            f"{TARGETS}:allocate",
            {"max_mb": 2048},
            limits=Limits(time_s=30, memory_mb=600),
            on_progress=lambda _, message: pids.append(int(message.split("=")[1])),
        )
    error = caught.value
    assert isinstance(error, ChildMemoryError)
    assert "600 MB" in error.message
    assert error.detail["rss_mb"] > 600
    assert not psutil.pid_exists(pids[0])


def test_threads_limit_sets_torch_and_openmp_in_the_child() -> None:
    for threads in (1, 2):
        settings = run_isolated(f"{TARGETS}:thread_settings", {}, limits=Limits(time_s=30, threads=threads))
        assert settings == {"torch": threads, "omp": str(threads)}


def test_the_child_sees_the_environment_of_the_call_not_of_the_fork_server_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ROBOPT_ISOLATION_PROBE", "set after the fork server started")
    answer = run_isolated(f"{TARGETS}:read_environment", {"name": "ROBOPT_ISOLATION_PROBE"}, limits=QUICK)
    assert answer == "set after the fork server started"


@pytest.mark.parametrize(
    "target, fragment",
    [
        ("tests.tools.no_such_module:add", "does not import"),
        (f"{TARGETS}:no_such_function", "does not exist"),
    ],
)
def test_a_target_that_does_not_resolve_is_a_configuration_error_naming_it(
    target: str, fragment: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        run_isolated(target, {}, limits=QUICK)
    assert target in caught.value.message and fragment in caught.value.message


def test_malformed_targets_and_unpicklable_kwargs_are_refused_before_a_child_starts() -> None:
    children = len(psutil.Process().children(recursive=True))
    with pytest.raises(ValidationError, match="package.module:function"):
        run_isolated("tests.tools.isolation_targets.add", {}, limits=QUICK)
    with pytest.raises(ValidationError, match="cannot be sent"):
        run_isolated(f"{TARGETS}:add", {"a": threading.Lock(), "b": 1}, limits=QUICK)
    assert len(psutil.Process().children(recursive=True)) == children
    with pytest.raises(ValidationError, match="time_s"):
        Limits(time_s=0)


def test_keyboard_interrupt_while_waiting_kills_the_child() -> None:
    pids: list[int] = []

    def interrupt(_: float, message: str) -> None:
        pids.append(int(message.rsplit("=", 1)[1]))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_isolated(
            f"{TARGETS}:report_steps", {"steps": 3, "pause_s": 20}, limits=QUICK, on_progress=interrupt
        )
    assert not psutil.pid_exists(pids[0])


def test_the_async_variant_returns_the_value() -> None:
    answer = asyncio.run(run_isolated_async(f"{TARGETS}:add", {"a": 4, "b": 5}, limits=QUICK))
    assert answer["sum"] == 9 and answer["pid"] != os.getpid()


def test_cancelling_the_async_call_kills_the_child() -> None:
    pids: list[int] = []

    async def cancel_once_running() -> None:
        task = asyncio.ensure_future(
            run_isolated_async(
                f"{TARGETS}:sleep_forever",
                {},
                limits=QUICK,
                on_progress=lambda _, message: pids.extend(int(p) for p in message.split()),
            )
        )
        while not pids:
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    started = time.monotonic()
    asyncio.run(cancel_once_running())
    assert time.monotonic() - started < 10
    child, grandchild = pids
    assert not psutil.pid_exists(child), "the cancelled call's child is still there"
    assert _gone(grandchild)


def test_a_child_kills_itself_and_its_group_when_its_parent_dies(tmp_path: Path) -> None:
    parent_code = (
        "from tools.isolation import Limits, run_isolated\n"
        f"run_isolated('{TARGETS}:sleep_forever', {{}}, limits=Limits(time_s=60),\n"
        "             on_progress=lambda _, message: print(message, flush=True))\n"
    )
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the killed parent's pymp-* and *.fault stay in tmp_path
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code], cwd=REPO, stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        child, grandchild = (int(pid) for pid in parent.stdout.readline().split())
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        parent.stdout.close()  # the orphans hold its other end: no read to EOF
    deadline = time.monotonic() + 5
    while not (_gone(child) and _gone(grandchild)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(child), "the child outlived its killed parent"
    assert _gone(grandchild), "the child's subprocess outlived the killed parent"


_SCRATCH_SCRIPT = """
import json, multiprocessing.util, os, sys, tempfile
from pathlib import Path
from tools.isolation import Limits, run_isolated, scratch_dir
before = tempfile.gettempdir()
with scratch_dir(Path(sys.argv[1])) as scratch:
    child = run_isolated("tempfile:gettempdir", {}, limits=Limits(time_s=120))
    seen = {"scratch": str(scratch), "here": tempfile.gettempdir(), "child": child,
            "multiprocessing": multiprocessing.util.get_temp_dir(),
            "multiprocessing_real": os.path.realpath(multiprocessing.util.get_temp_dir())}
print(json.dumps({**seen, "restored": tempfile.gettempdir() == before}))
"""


@pytest.mark.parametrize("depth", ["short", "deep"])
def test_temporary_files_of_the_process_and_its_children_go_to_the_data_directory(
    tmp_path: Path, depth: str
) -> None:
    """Issue 16: `ort.quant.*`, `pymp-*` and `robopt-latency-*` landed in the system temp folder. With the scratch
    folder set, this process and its isolated children take `<data>/work/tmp`; a data directory too deep for the
    fork server's socket path still starts children, its socket folder inside the data directory too (reached
    through a short /proc/self/fd alias: a short /tmp/pymp-* folder stayed behind whenever the process was
    SIGKILLed)."""
    short = Path(f"/tmp/rb-{os.getpid()}-{depth}")  # the caller's TMPDIR may point into a deep folder too
    data_dir = short / "data" if depth == "short" else tmp_path / ("d" * 60) / "data"
    deep_tmp = tmp_path / ("t" * 60) / "work" / "tmp"
    deep_tmp.mkdir(parents=True)
    try:
        run = subprocess.run(
            [sys.executable, "-c", _SCRATCH_SCRIPT, str(data_dir)],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=Path(__file__).resolve().parents[2],
            # a TMPDIR already deep (another data directory's scratch): the fallback must not follow it
            env={
                **os.environ,
                "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
                "TMPDIR": str(deep_tmp),
            },
        )
        assert run.returncode == 0, run.stderr[-3000:]
        seen = __import__("json").loads(run.stdout.strip().splitlines()[-1])
        scratch = str(data_dir.resolve() / "work" / "tmp")
        assert seen["scratch"] == seen["here"] == seen["child"] == scratch
        assert seen["multiprocessing_real"].startswith(scratch + "/pymp-"), seen
        socket_path = seen["multiprocessing"] + "/listener-xxxxxxxx"
        assert len(socket_path) < 108, f"too long for a socket path: {socket_path}"
        assert (seen["multiprocessing"] == seen["multiprocessing_real"]) == (depth == "short"), seen
        assert seen["restored"], "the caller's temp folder is back after the block"
    finally:
        import shutil

        shutil.rmtree(short, ignore_errors=True)
