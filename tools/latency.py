"""Measured batch-1 latency and memory of a model, taken in a separate process so the caller is never touched.

`measure_latency(request)` starts `python -m tools.latency`, sends the request as JSON on stdin and reads one
JSON answer on stdout. The child loads the model itself (`_load_for_measurement`), fixes its thread counts,
warms up, times each iteration with `time.perf_counter_ns` and reports percentiles and its own memory.

Memory: `peak_rss_mb` is the child's high-water resident set (`VmHWM` from /proc/self/status). It is not
`ru_maxrss`, because on Linux `ru_maxrss` survives fork+exec and reports the *parent's* peak when the parent
is larger than the child; `ru_maxrss_mb` is kept as a raw figure. `model_rss_mb` is RSS after load minus RSS
before load, which separates the model's memory from the interpreter's.
"""

from __future__ import annotations

import gc
import importlib
import inspect
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import psutil
import torch
from pydantic import BaseModel, ConfigDict, Field

from tools.errors import MeasurementError, NotFoundError, RoboptError
from tools.inputs import InputSpec
from tools.intake.types import LoadedModel, LoadOptions, ModelFormat, Runtime
from tools.log import configure_logging, get_logger

log = get_logger("profiling")

DEFAULT_WARMUP = 5
DEFAULT_ITERATIONS = 100
DEFAULT_MIN_ITERATIONS = 5
DEFAULT_MAX_MEASURE_S = 10.0
DEFAULT_TIMEOUT_S = 300.0
_MB = 1024 * 1024
_PROJECT_ROOT = Path(__file__).resolve().parent.parent
_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


def default_threads() -> int:
    """Return the thread count used when none is given: the number of physical cores."""
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


class LatencyRequest(BaseModel):
    """What to measure and how: the model to load in the child, fixed threads, iteration counts and limits.

    The measured phase stops after `iterations` or once `max_measure_s` have passed, whichever comes first,
    but not before `min_iterations` unless, past the cap, at least three runs agree within 5% (a model that
    takes seconds a call); warm-up is capped at a quarter of `max_measure_s` (at least one run).
    """

    model_config = ConfigDict(frozen=True)

    source: Path = Field(description="Model file or directory, as given to intake.")
    options: LoadOptions = Field(default_factory=LoadOptions, description="How intake loads the model.")
    data_dir: Path | None = Field(
        default=None, description="Intake's data directory; a temporary one, removed afterwards, when unset."
    )
    loader: Literal["intake", "direct"] = Field(
        default="intake",
        description="'intake' uses tools.intake.load_model (production); 'direct' loads a TorchScript or "
        "ONNX file without intake, for tests and for tools that already validated the file.",
    )
    threads: int = Field(default_factory=default_threads, ge=1, le=256, description="Intra-op threads.")
    warmup: int = Field(default=DEFAULT_WARMUP, ge=0, le=10_000, description="Warm-up runs, not timed.")
    iterations: int = Field(default=DEFAULT_ITERATIONS, ge=1, le=100_000, description="Most timed runs.")
    min_iterations: int = Field(
        default=DEFAULT_MIN_ITERATIONS,
        ge=1,
        le=100_000,
        description="Fewest timed runs, even past the time cap.",
    )
    max_measure_s: float = Field(
        default=DEFAULT_MAX_MEASURE_S, gt=0, le=3600, description="Time cap of the timed phase, in seconds."
    )
    seed: int = Field(default=0, ge=0, description="Seed of the synthetic inputs and of torch.")
    device: Literal["cpu", "cuda"] = Field(
        default="cpu",
        description="'cuda' moves a torch module and its inputs to the GPU (synchronizing after every run) "
        "or gives ONNX Runtime the CUDA execution provider.",
    )
    timeout_s: float = Field(
        default=DEFAULT_TIMEOUT_S,
        gt=0,
        le=24 * 3600,
        description="Child wall-clock limit; it is killed past it.",
    )


class LatencyResult(BaseModel):
    """Batch-1 latency percentiles and memory of one model, measured in a child process."""

    runtime: Runtime = Field(description="What ran the model.")
    runtime_version: str = Field(description="Version of torch or onnxruntime in the child.")
    device: str = Field(default="cpu", description="'cpu' or the CUDA device's name.")
    gpu_peak_mb: float | None = Field(default=None, description="Peak CUDA memory allocated (torch on CUDA).")
    loader: str = Field(description="How the child loaded the model ('intake' or 'direct').")
    threads: int = Field(description="Intra-op threads (torch.set_num_threads / ORT intra_op_num_threads).")
    warmup_iterations: int = Field(description="Warm-up runs actually done.")
    iterations: int = Field(description="Timed runs actually done.")
    stopped_by: Literal["iterations", "time_cap", "stable"] = Field(
        description="Why the timed phase ended: all iterations, the time cap, or (past the cap, before "
        "min_iterations) runs that agree within 5% of their median."
    )
    p50_ms: float = Field(description="Median latency (numpy linear-interpolated percentile).")
    p95_ms: float = Field(description="95th percentile latency.")
    p99_ms: float = Field(description="99th percentile latency (close to max for fewer than 100 runs).")
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    hz: float = Field(description="Sustained rate at the median: 1000 / p50_ms.")
    jitter_ms: float = Field(description="Tail jitter: p95_ms - p50_ms (std_ms is reported separately).")
    load_s: float = Field(description="Time to load the model in the child.")
    warmup_s: float = Field(description="Time spent warming up.")
    measure_s: float = Field(description="Time spent in timed runs.")
    rss_before_load_mb: float = Field(description="Child RSS after imports, before loading the model.")
    rss_after_load_mb: float = Field(description="Child RSS right after loading the model.")
    model_rss_mb: float = Field(
        description="rss_after_load_mb - rss_before_load_mb: the model's memory, plus first-use runtime "
        "set-up (about 10 MB for an ONNX Runtime session); the loader's libraries are imported before the "
        "baseline."
    )
    peak_rss_mb: float = Field(description="Child's peak RSS over its life (VmHWM; ru_maxrss where absent).")
    peak_rss_source: Literal["VmHWM", "ru_maxrss"] = Field(description="Where peak_rss_mb comes from.")
    ru_maxrss_mb: float | None = Field(
        default=None,
        description="Raw getrusage(RUSAGE_SELF).ru_maxrss; on Linux it may hold the parent's peak.",
    )
    child_startup_s: float | None = Field(
        default=None, description="Child process start to worker ready (interpreter and imports)."
    )
    child_wall_s: float | None = Field(
        default=None, description="Wall time of the child as the parent saw it."
    )
    child_overhead_s: float | None = Field(
        default=None, description="child_wall_s minus load, warm-up and timed phases: the price of isolation."
    )


def measure_latency(request: LatencyRequest) -> LatencyResult:
    """Measure batch-1 latency and memory of `request.source` in a child process and return the figures."""
    source = Path(request.source).expanduser().resolve()
    if not source.exists():
        raise NotFoundError(f"model not found: {source}", hint="give an existing model file or directory")
    request = request.model_copy(update={"source": source})
    if request.data_dir is not None:
        return _run_child(request, _child_environment(request.threads), source)
    # The child's data directory and temp folder, made and removed here: a killed child leaves nothing behind.
    with tempfile.TemporaryDirectory(prefix="robopt-latency-") as scratch:
        request = request.model_copy(update={"data_dir": Path(scratch)})
        return _run_child(request, _child_environment(request.threads, temp_dir=Path(scratch)), source)


def _run_child(request: LatencyRequest, env: dict[str, str], source: Path) -> LatencyResult:
    """Run the measuring child on `request`, kill it past its limit, and parse its answer."""
    started = time.perf_counter()
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "tools.latency"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        raise MeasurementError(f"cannot start the latency child: {exc}") from None
    log.info(
        "latency child started", extra={"pid": child.pid, "source": str(source), "threads": request.threads}
    )
    try:
        stdout, stderr = child.communicate(request.model_dump_json().encode(), timeout=request.timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(child)
        stdout, stderr = child.communicate()
        raise MeasurementError(
            f"latency measurement of {source.name} timed out after {request.timeout_s:g} s; the child "
            f"(pid {child.pid}) was killed. Last stderr line: {_last_line(stderr) or '(none)'}",
            hint="raise timeout_s, or lower warmup, iterations or max_measure_s",
            detail={"pid": child.pid, "timeout_s": request.timeout_s, "last_stderr": _last_line(stderr)},
        ) from None
    except BaseException:
        _kill_group(child)
        child.communicate()
        raise
    wall_s = time.perf_counter() - started
    return _parse_child_answer(child, stdout, stderr, wall_s, source)


def _child_environment(threads: int, temp_dir: Path | None = None) -> dict[str, str]:
    """Return the child's environment: this project importable, BLAS/OpenMP pools fixed to `threads`, and its
    temporary files (ONNX Runtime's, multiprocessing's) in `temp_dir` when given."""
    env = dict(os.environ)
    if temp_dir is not None:
        env["TMPDIR"] = str(temp_dir)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _kill_group(child: subprocess.Popen[bytes]) -> None:
    """Kill the child and anything it started (it leads its own process group)."""
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        child.kill()


def _last_line(stderr: bytes) -> str:
    """Return the last non-empty line of the child's stderr, shortened."""
    lines = [line.strip() for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1][:500] if lines else ""


def _parse_child_answer(
    child: subprocess.Popen[bytes], stdout: bytes, stderr: bytes, wall_s: float, source: Path
) -> LatencyResult:
    """Turn the child's JSON answer into a LatencyResult, or raise MeasurementError with its error."""
    last = _last_line(stderr)
    answer: dict[str, Any] | None = None
    try:
        answer = json.loads(stdout.decode()) if stdout.strip() else None
    except ValueError:
        answer = None
    if child.returncode != 0 or not answer or not answer.get("ok"):
        error = (answer or {}).get("error") or {}
        if child.returncode is not None and child.returncode < 0:
            reason = f"was killed by {signal.Signals(-child.returncode).name}"
        else:
            reason = f"exited with status {child.returncode}"
        message = error.get("message") or last or "(no error message)"
        raise MeasurementError(
            f"latency child for {source.name} {reason}: {message}",
            hint=error.get("hint") or "check that the model loads and runs with its input specs",
            detail={"returncode": child.returncode, "last_stderr": last, "child_error": error},
        )
    result = LatencyResult.model_validate(answer["result"])
    phases = result.load_s + result.warmup_s + result.measure_s
    result = result.model_copy(update={"child_wall_s": wall_s, "child_overhead_s": max(0.0, wall_s - phases)})
    log.info(
        "latency measured",
        extra={
            "source": str(source),
            "p50_ms": result.p50_ms,
            "peak_rss_mb": result.peak_rss_mb,
            "wall_s": wall_s,
        },
    )
    return result


# --- the child -------------------------------------------------------------------------------------------


def _load_for_measurement(request: LatencyRequest, data_dir: Path) -> LoadedModel:
    """Load the model in the child: through intake in production, or directly for the 'direct' loader."""
    if request.loader == "direct":
        return _load_direct(request.source, request.options, request.threads)
    from tools.intake import load_model  # lazy: intake is heavy and imports optional backends

    return load_model(request.source, request.options, data_dir)


def _load_direct(path: Path, options: LoadOptions, threads: int) -> LoadedModel:
    """Load a TorchScript or ONNX file without intake (tests, already-validated artifacts)."""
    if path.suffix == ".onnx":
        session = _ort_session(path, threads)
        specs = list(options.input_specs) or _specs_from_session(session)
        return LoadedModel(path, path, ModelFormat.ONNX, options, specs, session=session)
    if not options.input_specs:
        raise MeasurementError(
            f"{path.name}: a TorchScript model needs input specs in LoadOptions.input_specs"
        )
    module = torch.jit.load(str(path), map_location="cpu").eval()
    return LoadedModel(path, path, ModelFormat.TORCHSCRIPT, options, list(options.input_specs), module=module)


def _ort_session(path: Path, threads: int, base: Any | None = None) -> Any:
    """Create an ONNX Runtime session with fixed threads, copying `base`'s options and providers."""
    import onnxruntime as ort

    options = base.get_session_options() if base is not None else ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    providers = base.get_providers() if base is not None else ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


def _specs_from_session(session: Any) -> list[InputSpec]:
    """Derive batch-1 input specs from an ONNX session's inputs (symbolic dims become 1)."""
    specs = []
    for item in session.get_inputs():
        shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in item.shape)
        specs.append(InputSpec(name=item.name, shape=shape, dtype=_ORT_DTYPES.get(item.type, "float32")))
    return specs


def _fix_onnx_threads(model: LoadedModel, threads: int) -> None:
    """Rebuild an intake-made ONNX session with the requested threads, keeping its providers and options."""
    if model.session is None or model.session.get_session_options().intra_op_num_threads == threads:
        return
    path = model.path
    if path.is_dir():
        candidates = sorted(path.glob("*.onnx"))
        if len(candidates) != 1:
            raise MeasurementError(f"cannot find the single .onnx file in {path} to set its thread count")
        path = candidates[0]
    base = model.session
    model.session = None
    gc.collect()
    model.session = _ort_session(path, threads, base=base)


def _fix_module_threads(model: LoadedModel, threads: int) -> None:
    """Give a module that runs ONNX Runtime sessions inside (an exported sampler) the requested threads: torch's
    thread count does not reach them. Such a module says so with a `set_threads(threads)` method."""
    setter = getattr(model.module, "set_threads", None)
    if callable(setter):
        setter(threads)


def make_runner(model: LoadedModel, inputs: dict[str, torch.Tensor]) -> Callable[[], Any]:
    """Return a no-argument callable that runs one forward pass, with argument binding done up front."""
    if model.session is not None:
        session = model.session
        try:
            feeds = {name: tensor.numpy() for name, tensor in inputs.items()}
        except TypeError as exc:
            raise MeasurementError(f"cannot feed inputs to ONNX Runtime: {exc}") from None
        return lambda: session.run(None, feeds)
    if model.module is None:
        raise MeasurementError("the loaded model has neither a torch module nor an ONNX Runtime session")
    module = model.module
    args, kwargs = _bind_inputs(module, inputs)

    def run() -> Any:
        with torch.inference_mode():
            return module(*args, **kwargs)

    return run


def _bind_inputs(module: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[tuple, dict[str, Any]]:
    """Pass inputs by name when forward() accepts those names, else positionally in spec order."""
    names: set[str] | None
    if isinstance(module, torch.jit.ScriptModule):
        try:
            names = {a.name for a in module.forward.schema.arguments[1:]}
        except (AttributeError, RuntimeError):
            names = None
    else:
        try:
            params = inspect.signature(module.forward).parameters.values()
        except (TypeError, ValueError):
            params = None
        if params is None:
            names = None
        elif any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            names = set(inputs)
        else:
            names = {p.name for p in params}
    if names is not None and set(inputs) <= names:
        return (), dict(inputs)
    return tuple(inputs.values()), {}


def _rss_mb() -> float:
    """Return this process's resident memory in MB."""
    return psutil.Process().memory_info().rss / _MB


def _peak_rss_mb() -> tuple[float, Literal["VmHWM", "ru_maxrss"], float | None]:
    """Return this process's peak RSS in MB, where it came from, and the raw ru_maxrss."""
    ru_maxrss_mb: float | None = None
    try:
        import resource

        raw = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        ru_maxrss_mb = raw / _MB if sys.platform == "darwin" else raw / 1024
    except ImportError:
        pass
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024, "VmHWM", ru_maxrss_mb
    except OSError:
        pass
    return ru_maxrss_mb or _rss_mb(), "ru_maxrss", ru_maxrss_mb


def _preload_runtime(request: LatencyRequest) -> None:
    """Import what the loader will import, so that model_rss_mb measures the model rather than libraries.

    A best effort: a Hugging Face modeling module alone can add ~100 MB, which would swamp a small policy.
    """
    source = request.source
    config_file = source / "config.json" if source.is_dir() else None
    if source.suffix == ".onnx" or (source.is_dir() and any(source.glob("*.onnx"))):
        names = ["onnx", "onnxruntime", "tools.intake.onnx_loader"]
    elif config_file is not None and config_file.is_file():
        names = ["transformers", "tools.intake.hf_loader"]
        try:
            config = json.loads(config_file.read_text())
        except (OSError, ValueError):
            config = {}
        sections = (
            [config] + [v for v in config.values() if isinstance(v, dict)] if isinstance(config, dict) else []
        )
        for section in sections:
            kind = section.get("model_type")
            if isinstance(kind, str) and kind.isidentifier():
                names.append(f"transformers.models.{kind}.modeling_{kind}")
    else:
        names = ["tools.intake.torch_loaders"]
    if request.loader == "direct":
        names = [n for n in names if not n.startswith("tools.intake")]
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a warm-up only; the loader reports what is missing
            pass


STABLE_MIN_RUNS = 3
STABLE_SPREAD = 0.05


def stable_estimate(samples: list[int]) -> bool:
    """Whether the timed runs so far settle the median: at least `STABLE_MIN_RUNS`, all within `STABLE_SPREAD`
    of their median. Used past the time cap only, so fast models still run `min_iterations` or more."""
    if len(samples) < STABLE_MIN_RUNS:
        return False
    ordered = sorted(samples)
    median = ordered[len(ordered) // 2]
    return median > 0 and (ordered[-1] - ordered[0]) <= STABLE_SPREAD * median


DEADLINE_SHARE = 0.8
"""Share of the child's wall-clock limit (`timeout_s`, counted from the child's start) the timed phase may use:
a slow model on a loaded machine reports fewer runs instead of being killed with none."""


def _time_runs(
    run: Callable[[], Any],
    request: LatencyRequest,
    deadline_ns: int | None = None,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> tuple[int, float, list[int], float, Literal["iterations", "time_cap", "stable"]]:
    """Warm up, then time runs until `iterations` or the time cap (past `min_iterations`, or past
    `STABLE_MIN_RUNS` runs that agree: a model that takes seconds a call is not run minutes for its median).

    `deadline_ns` (perf_counter_ns) ends warm-up and timing before the child's own limit: once one timed run
    is in, no run starts that would end past it (judged by the slowest run so far), and the result says
    "time_cap". `clock` (nanoseconds) is the timer: perf_counter_ns, or a test's own clock so the stop rules
    are checked without the scheduler's jitter.
    """
    warmup_cap_ns = int(request.max_measure_s * 1e9 / 4)
    start = clock()
    warmed = 0
    while warmed < request.warmup:
        run()
        warmed += 1
        now = clock()
        if now - start >= warmup_cap_ns or (deadline_ns is not None and 2 * now - start >= deadline_ns):
            break
    warmup_s = (clock() - start) / 1e9

    samples: list[int] = []
    cap_ns = int(request.max_measure_s * 1e9)
    stopped_by: Literal["iterations", "time_cap", "stable"] = "iterations"
    gc.collect()
    gc.disable()  # a collection inside a timed run is noise, not model latency
    try:
        begin = clock()
        while len(samples) < request.iterations:
            t_start = clock()
            run()
            t_end = clock()
            samples.append(t_end - t_start)
            if len(samples) >= request.min_iterations and t_end - begin >= cap_ns:
                stopped_by = "time_cap" if len(samples) < request.iterations else "iterations"
                break
            if t_end - begin >= cap_ns and stable_estimate(samples):
                stopped_by = (
                    "stable"  # a model of seconds a call: its median is settled, more runs add little
                )
                break
            if deadline_ns is not None and t_end + max(samples) >= deadline_ns:
                stopped_by = "time_cap" if len(samples) < request.iterations else "iterations"
                break
        measure_s = (clock() - begin) / 1e9
    finally:
        gc.enable()
    return warmed, warmup_s, samples, measure_s, stopped_by


def _measure_here(request: LatencyRequest, data_dir: Path) -> LatencyResult:
    """Load, warm up and time the model in this process (the child); see LatencyRequest for the stop rules."""
    deadline_ns = time.perf_counter_ns() + int(DEADLINE_SHARE * request.timeout_s * 1e9)
    torch.set_num_threads(request.threads)
    torch.manual_seed(request.seed)
    _preload_runtime(request)
    gc.collect()
    rss_before = _rss_mb()
    t0 = time.perf_counter()
    model = _load_for_measurement(request, data_dir)
    if model.runtime is Runtime.ONNXRUNTIME:
        _fix_onnx_threads(model, request.threads)
    elif model.module is not None:
        model.module.eval()
    _fix_module_threads(model, request.threads)
    load_s = time.perf_counter() - t0
    gc.collect()
    rss_after = _rss_mb()
    inputs = model.example_inputs(seed=request.seed)
    device = "cpu"
    if request.device == "cuda":
        run, device = _cuda_runner(model, inputs, request.threads)
    else:
        run = make_runner(model, inputs)

    warmed, warmup_s, samples, measure_s, stopped_by = _time_runs(run, request, deadline_ns)
    gpu_peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if request.device == "cuda" and model.runtime is Runtime.TORCH
        else None
    )

    ms = np.asarray(samples, dtype=np.float64) / 1e6
    p50, p95, p99 = (float(v) for v in np.percentile(ms, [50, 95, 99]))
    peak, peak_source, ru_maxrss = _peak_rss_mb()
    if model.runtime is Runtime.ONNXRUNTIME:
        import onnxruntime as ort

        version = f"onnxruntime {ort.__version__}"
    else:
        version = f"torch {torch.__version__}"
    return LatencyResult(
        runtime=model.runtime,
        runtime_version=version,
        device=device,
        gpu_peak_mb=gpu_peak,
        loader=request.loader,
        threads=request.threads,
        warmup_iterations=warmed,
        iterations=len(samples),
        stopped_by=stopped_by,
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        mean_ms=float(ms.mean()),
        std_ms=float(ms.std()),
        min_ms=float(ms.min()),
        max_ms=float(ms.max()),
        hz=1000.0 / p50 if p50 > 0 else float("inf"),
        jitter_ms=p95 - p50,
        load_s=load_s,
        warmup_s=warmup_s,
        measure_s=measure_s,
        rss_before_load_mb=rss_before,
        rss_after_load_mb=rss_after,
        model_rss_mb=rss_after - rss_before,
        peak_rss_mb=peak,
        peak_rss_source=peak_source,
        ru_maxrss_mb=ru_maxrss,
    )


def _cuda_runner(model: LoadedModel, inputs: dict[str, torch.Tensor], threads: int) -> tuple[Callable, str]:
    """Put the model on the GPU; return a run() that finishes its GPU work before returning, and the device."""
    if not torch.cuda.is_available() and model.session is None:
        raise MeasurementError("no CUDA device: torch.cuda.is_available() is False in the measuring process")
    if model.session is None:
        if model.module is None:
            raise MeasurementError("the loaded model has neither a torch module nor an ONNX Runtime session")
        model.module.to("cuda").eval()
        run = make_runner(model, {name: tensor.to("cuda") for name, tensor in inputs.items()})
        torch.cuda.reset_peak_memory_stats()

        def synchronized() -> Any:
            out = run()
            torch.cuda.synchronize()
            return out

        return synchronized, torch.cuda.get_device_name(0)
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise MeasurementError("no CUDA device: this onnxruntime build has no CUDAExecutionProvider")
    path = model.path if model.path.suffix == ".onnx" else next(iter(sorted(model.path.glob("*.onnx"))))
    options = model.session.get_session_options()
    options.intra_op_num_threads = threads
    model.session = None
    gc.collect()
    model.session = ort.InferenceSession(
        str(path), sess_options=options, providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    if model.session.get_providers()[0] != "CUDAExecutionProvider":
        raise MeasurementError(f"ONNX Runtime fell back to {model.session.get_providers()} for {path.name}")
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cuda"
    return make_runner(model, inputs), device  # session.run copies outputs to the host: synchronized


def _worker_main() -> int:
    """Run as `python -m tools.latency`: read a LatencyRequest on stdin, write one JSON answer on stdout."""
    answer_fd = os.dup(1)
    os.dup2(2, 1)  # anything the model or its loader prints goes to stderr, never into the answer
    configure_logging("WARNING")
    startup_s = max(0.0, time.time() - psutil.Process().create_time())
    try:
        request = LatencyRequest.model_validate_json(sys.stdin.buffer.read())
        with tempfile.TemporaryDirectory(prefix="robopt-latency-") as scratch:
            result = _measure_here(request, request.data_dir or Path(scratch))
        answer: dict[str, Any] = {
            "ok": True,
            "result": result.model_copy(update={"child_startup_s": startup_s}).model_dump(mode="json"),
        }
        code = 0
    except Exception as exc:  # noqa: BLE001 - the parent turns any failure into a MeasurementError
        error = exc.to_dict() if isinstance(exc, RoboptError) else {"code": type(exc).__name__}
        text = exc.message if isinstance(exc, RoboptError) else str(exc)
        first = (text.strip().splitlines() or [""])[0][:400]
        error["message"] = f"{type(exc).__name__}: {first}"
        answer, code = {"ok": False, "error": error}, 1
        sys.stderr.flush()
        sys.stderr.write(f"\n{error['message']}\n")
    sys.stderr.flush()
    with os.fdopen(answer_fd, "w") as out:
        out.write(json.dumps(answer))
    return code


if __name__ == "__main__":
    sys.exit(_worker_main())
