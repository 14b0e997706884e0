"""The deterministic work the nodes hand to a child process: profile the original, apply a chain of
techniques, measure a version. Every function here takes and returns plain, picklable values (paths, JSON,
pydantic models) and reports progress through its `progress(percent, message)` callback.

Running these in a child (`tools.isolation`) means a crash, a hang or an out-of-memory inside a native
library fails one attempt and never the job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field

from graph.state import DataSource
from tools.errors import RoboptError, ValidationError
from tools.evaluation.evaluate import AccuracyPlan, evaluate_version, measure_accuracy
from tools.evaluation.measurement import Measurement
from tools.evaluation.priority import BestToBeat
from tools.evaluation.types import AccuracyResult
from tools.intake import LoadedModel
from tools.techniques.base import CalibrationData
from tools.versions import ArtifactRef, VersionStore

Progress = Callable[[float, str], None]
LABEL_KEYS = ("actions", "labels", "targets", "action")


def _quiet(_: float, __: str) -> None:
    """Progress sink when the caller wants none."""


def load_data(source: DataSource, model: LoadedModel) -> CalibrationData | None:
    """Build the job's data: synthetic inputs, a user's tensor file (labels auto-detected), a LeRobotDataset
    directory (held-out episodes last, recorded action chunks as labels), or a reference task."""
    from tools.techniques import calibration_from_data, synthetic_calibration

    if source.kind == "reference":
        if source.task != "reaching":
            raise ValidationError(f"unknown reference task {source.task!r}; known: reaching")
        from tools.reference.calibration import reaching_calibration

        data = reaching_calibration(source.batches, source.batch_size)
        names = {spec.name for spec in model.input_specs}
        batches = [{k: v for k, v in batch.items() if k in names} for batch in data.batches]
        return CalibrationData(batches, data.labels, data.source)
    if source.kind == "lerobot":
        from tools.lerobot.dataset import load_lerobot_dataset

        if source.path is None:
            raise ValidationError("a data source of kind 'lerobot' needs a path")
        fixed = fixed_batch_size(model)
        return load_lerobot_dataset(
            Path(source.path),
            model.input_specs,
            model.metadata.get("policy"),
            max_samples=source.batches * source.batch_size,
            batch_size=fixed or source.batch_size,
            fixed_batch=fixed is not None,
        )
    if source.kind == "file":
        from tools.inputs import align_data, load_input_data

        if source.path is None:
            raise ValidationError("a data source of kind 'file' needs a path")
        policy = model.metadata.get("policy") or {}
        arrays, notes = align_data(
            model.input_specs,
            load_input_data(Path(source.path)),
            aliases=policy.get("input_names"),
            history_steps=policy.get("n_obs_steps"),
        )
        label = next((key for key in LABEL_KEYS if key in arrays), None)
        batch_size, batches = source.batch_size, source.batches
        fixed = fixed_batch_size(model)
        if (
            fixed is not None and fixed != batch_size
        ):  # an export with a fixed batch: same samples, more batches
            batches, batch_size = max(1, batches * batch_size // fixed), fixed
        data = calibration_from_data(
            arrays, model.input_specs, label_key=label, batch_size=batch_size, max_batches=batches
        )
        return CalibrationData(data.batches, data.labels, data.source, notes=notes)
    return synthetic_calibration(model.input_specs, num_batches=min(source.batches, 8), batch_size=4)


def fixed_batch_size(model: LoadedModel) -> int | None:
    """The batch size an ONNX model was exported with when its first dimension is fixed; None when dynamic."""
    if model.session is None:
        return None
    sizes = {node.shape[0] for node in model.session.get_inputs() if node.shape}
    fixed = {size for size in sizes if isinstance(size, int) and size > 0}
    return min(fixed) if fixed else None


def split_data(data: CalibrationData | None) -> tuple[CalibrationData | None, CalibrationData | None]:
    """(calibration, held-out evaluation) parts: techniques never see the batches accuracy is measured on."""
    if data is None:
        return None, None
    return data.split(0.25)


NO_INDEPENDENT_ACCEPTANCE = (
    "acceptance: the held-out part holds one batch, so no independent acceptance split was possible; the "
    "final figures are measured on the same inputs the search judged on"
)


@dataclass(frozen=True)
class DataSplit:
    """The job's data in three parts: techniques calibrate on `calibration`, the search (every attempt's
    verdict, the baseline, the choice among versions) judges on `search`, and only the final check reads
    `acceptance`, so the reported figure is not the one the search selected on. `acceptance` is `search`
    (and `note` says so) when the held-out part has a single batch."""

    calibration: CalibrationData
    search: CalibrationData
    acceptance: CalibrationData
    note: str | None = None

    @property
    def independent(self) -> bool:
        """True when the acceptance part holds inputs the search never judged on."""
        return self.acceptance is not self.search


def split_three(data: CalibrationData) -> DataSplit:
    """Split into calibration / search / acceptance, keeping order; the held-out part (`split_data`: the last
    quarter, or a LeRobot dataset's held-out episodes) is cut in two, the acceptance part taking the second,
    larger half. Each part holds at least one batch."""
    calibration, held_out = data.split(0.25)
    if len(held_out.batches) < 2:
        return DataSplit(calibration, held_out, held_out, NO_INDEPENDENT_ACCEPTANCE)
    cut = len(held_out.batches) // 2
    labels = held_out.labels

    def part(start: int, stop: int | None) -> CalibrationData:
        return CalibrationData(
            held_out.batches[start:stop],
            labels[start:stop] if labels else None,
            held_out.source,
            held_out.notes,
        )

    return DataSplit(calibration, part(0, cut), part(cut, None))


def judges_on_data(plan: AccuracyPlan, source: DataSource) -> bool:
    """Whether accuracy is measured on the job's own data (fidelity on real inputs, or a task metric on
    labels), so a separate acceptance part can keep the final figure free of the search's selection."""
    return source.kind != "synthetic" and plan.level in ("fidelity", "task")


def search_part(
    dataset: CalibrationData | None, plan: AccuracyPlan, source: DataSource
) -> CalibrationData | None:
    """The inputs every version is judged on during the search: the search part of a three-way split when the
    job judges on its own data, the held-out part otherwise (None: fidelity on synthetic held-out inputs)."""
    if dataset is None or (plan.level == "fidelity" and source.kind == "synthetic"):
        return None
    if judges_on_data(plan, source):
        return split_three(dataset).search
    return split_data(dataset)[1]


def _machine(data_dir: Path, targets: list[str]) -> Any:
    """The measured machine profile, when some target other than this machine needs projecting."""
    from tools.evaluation.machine import machine_profile
    from tools.evaluation.targets import THIS_MACHINE, canonical_target_name

    if all(canonical_target_name(t) == THIS_MACHINE for t in targets):
        return None
    return machine_profile(data_dir)


def measure(
    data_dir: str,
    ref: ArtifactRef,
    original: ArtifactRef,
    plan: AccuracyPlan,
    data: DataSource,
    targets: list[str],
    threads: int = 1,
    iterations: int = 30,
    progress: Progress = _quiet,
    time_limit_s: float | None = None,
    must_beat: BestToBeat | None = None,
) -> Measurement:
    """Measure one version: latency here, size, projections, then accuracy (against the original for fidelity).

    `time_limit_s` is this child's own limit: the latency measurement is given what is left of it (less a
    reserve for size and FLOPs), so a slow version reports fewer timed runs instead of being killed.
    `must_beat` (the best passing version, in the search for a better one) skips the accuracy of a version
    whose size and latency show it cannot beat it (`evaluate_version`)."""
    import time

    from tools.techniques import load_version

    deadline = time.monotonic() + time_limit_s if time_limit_s is not None else None
    root = Path(data_dir)
    store = VersionStore(root / "versions")
    progress(0, f"measuring version {ref.version_id}")
    original_model = load_version(store, original.job_id, original.version_id, root)
    dataset = load_data(data, original_model)
    return _measure_version(
        root,
        store,
        ref,
        original,
        original_model,
        dataset,
        plan,
        data,
        targets,
        threads,
        iterations,
        progress,
        deadline=deadline,
        must_beat=must_beat,
    )


def _measure_version(
    root: Path,
    store: VersionStore,
    ref: ArtifactRef,
    original: ArtifactRef,
    original_model: LoadedModel,
    dataset: CalibrationData | None,
    plan: AccuracyPlan,
    data: DataSource,
    targets: list[str],
    threads: int,
    iterations: int,
    progress: Progress,
    known_flops: int | None = None,
    deadline: float | None = None,
    must_beat: BestToBeat | None = None,
) -> Measurement:
    """Measure `ref` with the original and the job's data already loaded (accuracy on the search part).

    The original's fidelity outputs are kept under `<data>/work/fidelity/<its sha256>/`, one file per data,
    so a model of seconds a call runs them once per job, not once per version; the baseline is `ref` itself.
    """
    held_out = search_part(dataset, plan, data)
    return evaluate_version(
        store,
        store.verify(ref.job_id, ref.version_id),
        plan,
        data_dir=root,
        reference=original_model if plan.level in ("fidelity", "closed_loop_agreement") else None,
        data=held_out,
        targets=targets,
        machine=_machine(root, targets),
        threads=threads,
        iterations=iterations,
        progress=progress,
        reference_cache=root / "work" / "fidelity" / original.sha256,
        reference_is_self=(ref.job_id, ref.version_id) == (original.job_id, original.version_id),
        known_flops=known_flops,
        deadline=deadline,
        must_beat=must_beat,
    )


class AcceptanceFigures(BaseModel):
    """Accuracy of some versions on the acceptance part, for finalize: the figures that count."""

    model_config = ConfigDict(frozen=True)

    accuracy: dict[str, AccuracyResult] = Field(
        description="Per version, keyed '<job id>/<version id>' (`version_key`), on the acceptance part."
    )
    batches: int = Field(ge=1, description="Batches of the acceptance part.")
    samples: int = Field(ge=0, description="Inputs of the acceptance part.")
    search_batches: int = Field(ge=1, description="Batches of the search part.")
    independent: bool = Field(description="False when the acceptance part is the search part (one batch).")
    note: str | None = None


def measure_acceptance(
    data_dir: str,
    refs: list[ArtifactRef],
    original: ArtifactRef,
    plan: AccuracyPlan,
    data: DataSource,
    progress: Progress = _quiet,
) -> AcceptanceFigures:
    """Measure the accuracy alone of each of `refs` on the acceptance part, the original's fidelity outputs
    cached beside the search part's (one file per data, so each part has its own entry)."""
    from tools.techniques import load_version

    root = Path(data_dir)
    store = VersionStore(root / "versions")
    progress(0, "measuring the final check on the acceptance part")
    original_model = load_version(store, original.job_id, original.version_id, root)
    dataset = load_data(data, original_model)
    if dataset is None or not judges_on_data(plan, data):
        raise ValidationError("an acceptance check needs the job's own data and an accuracy measured on it")
    parts = split_three(dataset)
    figures: dict[str, AccuracyResult] = {}
    for index, ref in enumerate(refs):
        if version_key(ref) in figures:
            continue
        is_original = (ref.job_id, ref.version_id) == (original.job_id, original.version_id)
        model = original_model if is_original else load_version(store, ref.job_id, ref.version_id, root)
        figures[version_key(ref)] = measure_accuracy(
            plan,
            model,
            reference=original_model,
            data=parts.acceptance,
            reference_cache=root / "work" / "fidelity" / original.sha256,
        )
        progress(100.0 * (index + 1) / len(refs), f"version {ref.version_id} measured on the acceptance part")
    return AcceptanceFigures(
        accuracy=figures,
        batches=len(parts.acceptance.batches),
        samples=sum(_batch_samples(batch) for batch in parts.acceptance.batches),
        search_batches=len(parts.search.batches),
        independent=parts.independent,
        note=parts.note,
    )


def version_key(ref: ArtifactRef) -> str:
    """A version's key in `AcceptanceFigures.accuracy`: a forked job's versions share ids with its parent's."""
    return f"{ref.job_id}/{ref.version_id}"


def _batch_samples(batch: dict[str, Any]) -> int:
    """Samples in one batch: the first dimension of its first tensor."""
    first = next(iter(batch.values()), None)
    return int(first.shape[0]) if first is not None and getattr(first, "ndim", 0) > 0 else 1


def apply_chain(
    data_dir: str,
    job_id: str,
    source: ArtifactRef,
    steps: list[dict[str, Any]],
    data: DataSource,
    time_budget_s: float | None = None,
    progress: Progress = _quiet,
) -> dict[str, Any]:
    """Apply each technique to the previous one's output, storing every version in `job_id`.

    A source from another job (a forked job's inherited version) is imported into `job_id` first, so a job
    only ever writes into its own folder.
    """
    from tools.techniques import apply, load_version, parse_config

    root = Path(data_dir)
    store = VersionStore(root / "versions")
    version_id = import_version(store, source, job_id)
    model = load_version(store, job_id, version_id, root)
    calibration, _ = split_data(load_data(data, model))
    del model
    versions: list[str] = []
    facts: list[dict[str, Any]] = []
    share = 100.0 / max(len(steps), 1)
    for index, step in enumerate(steps):
        config = parse_config(step)
        base = index * share

        def report(percent: float, message: str, base: float = base) -> None:
            progress(base + percent * share / 100.0, message)

        applied = apply(
            store,
            job_id,
            version_id,
            config,
            data_dir=root,
            calibration=calibration,
            progress=report,
            time_budget_s=time_budget_s,
        )
        version_id = applied.version.id
        versions.append(version_id)
        facts.append(applied.facts)
    return {"ref": store.ref(job_id, version_id), "versions": versions, "facts": facts}


def import_version(store: VersionStore, source: ArtifactRef, job_id: str) -> str:
    """Return the id of `source` inside `job_id`, copying it in (verified) when it belongs to another job."""
    if source.job_id == job_id:
        return source.version_id
    manifest = store.verify(source.job_id, source.version_id)
    for existing in store.list(job_id):
        if existing.sha256 == manifest.sha256 and existing.params.get("imported_from") == (
            f"{source.job_id}/{source.version_id}"
        ):
            return existing.id
    copied = store.save(
        job_id,
        store.artifact_path(source.job_id, source.version_id),
        technique="import",
        format=manifest.format,
        params={"imported_from": f"{source.job_id}/{source.version_id}"},
        metrics=manifest.metrics,
        load_options=manifest.load_options,
    )
    return copied.id


def optional_step(name: str, step: Callable[[], list[Any]], notes: list[str]) -> list[Any]:
    """Run an optional analysis step; when it does not apply to this model (a TorchScript module has no
    layers to rank), skip it with a note instead of ending the job."""
    try:
        return step()
    except (RoboptError, RuntimeError, TypeError, AttributeError) as exc:
        message = exc.message if isinstance(exc, RoboptError) else f"{type(exc).__name__}: {exc}"
        notes.append(f"analysis: {name} skipped ({message.splitlines()[0][:200]})")
        return []


SENSITIVITY_BUDGET_S = 20.0  # per ranking: a 50M-parameter policy's analysis stays well under a minute
SENSITIVITY_MIN_LAYERS = 8


def sensitivity_layer_budget(
    module: Any, batches: list[dict[str, Any]], notes: list[str], call_ms: float | None = None
) -> int | None:
    """How many layers a sensitivity ranking may perturb within `SENSITIVITY_BUDGET_S` (one forward pass over
    `batches` each, timed here); None when every layer fits. A sample ranks the largest layers and is noted; 0
    (no ranking, noted) when not even `SENSITIVITY_MIN_LAYERS` fit: a default-size DDPM policy (32 s a pass)
    spent minutes here ranking its minimum of layers and its job never reached a result.

    `call_ms` is the model's measured batch-1 call (the baseline's p50): a pass over `batches` takes at least
    one call per batch, so when even that rules the minimum ranking out, nothing is run to time it (a
    default-size DDPM policy spent 2 minutes timing the pass that told it not to rank).
    """
    import time

    import torch

    from tools.evaluation.sensitivity import count_weighted_layers

    if call_ms is not None and call_ms * len(batches) / 1000 * SENSITIVITY_MIN_LAYERS > SENSITIVITY_BUDGET_S:
        notes.append(
            f"analysis: sensitivity not ranked: one call takes {call_ms / 1000:.1f} s (the baseline's p50), so "
            f"{SENSITIVITY_MIN_LAYERS} layers would not fit the {SENSITIVITY_BUDGET_S:.0f} s budget; lossy "
            "steps are judged by their measured accuracy alone"
        )
        return 0
    try:
        total = count_weighted_layers(module)
        with torch.inference_mode():
            started = time.perf_counter()
            for batch in batches:
                module(**batch)
            seconds = time.perf_counter() - started
    except (RoboptError, RuntimeError, TypeError, ValueError, AttributeError):
        return None  # the ranking itself reports what fails, as an optional step
    fit = int(SENSITIVITY_BUDGET_S / max(seconds, 1e-6))
    if fit < SENSITIVITY_MIN_LAYERS:
        notes.append(
            f"analysis: sensitivity not ranked: a pass takes {seconds:.1f} s, so {SENSITIVITY_MIN_LAYERS} layers "
            f"would not fit the {SENSITIVITY_BUDGET_S:.0f} s budget; lossy steps are judged by their measured "
            "accuracy alone"
        )
        return 0
    limit = fit
    if limit >= total:
        return None
    notes.append(
        f"analysis: sensitivity ranked the {limit} largest of {total} layers "
        f"({seconds * 1000:.0f} ms a pass; budget {SENSITIVITY_BUDGET_S:.0f} s a ranking)"
    )
    return limit


def profile_original(
    data_dir: str,
    ref: ArtifactRef,
    plan: AccuracyPlan,
    data: DataSource,
    targets: list[str],
    threads: int = 1,
    iterations: int = 30,
    progress: Progress = _quiet,
) -> dict[str, Any]:
    """Measure the original (the baseline) and profile it: components, FLOPs, roofline floor, sensitivity."""
    from tools.evaluation.machine import machine_profile, roofline_floor_ms
    from tools.evaluation.sensitivity import pruning_sensitivity, quantization_sensitivity
    from tools.profiling import profile_model_or_sizes
    from tools.techniques import load_version

    root = Path(data_dir)
    store = VersionStore(root / "versions")
    progress(0, "profiling the original's components and FLOPs")
    model = load_version(store, ref.job_id, ref.version_id, root)
    dataset = load_data(data, model)
    profile, skipped = profile_model_or_sizes(model)
    progress(25, "profiled; measuring the original model (the baseline)")
    # the profile's count is the baseline's FLOPs: a model of seconds a call is not run under the counter twice
    baseline = _measure_version(
        root, store, ref, ref, model, dataset, plan, data, targets, threads, iterations, _quiet, profile.flops
    )
    machine = machine_profile(root)
    progress(50, "baseline measured; measuring this machine's roofline")
    floor = roofline_floor_ms(profile.parameter_bytes, profile.flops, machine, threads=threads)
    progress(75, "ranking layer sensitivity")
    quantization, pruning = [], []
    notes = (list(dataset.notes) if dataset is not None else []) + ([skipped] if skipped else [])
    if model.module is not None:
        calibration, _ = split_data(dataset)
        batches = (calibration.batches if calibration else [model.example_inputs()])[:2]
        call_ms = baseline.runtime.p50_ms if baseline.runtime is not None else None
        limit = sensitivity_layer_budget(model.module, batches, notes, call_ms)
        if limit != 0:
            quantization = optional_step(
                "quantization sensitivity",
                lambda: quantization_sensitivity(model.module, batches, max_layers=limit),
                notes,
            )
            pruning = optional_step(
                "pruning sensitivity",
                lambda: pruning_sensitivity(model.module, batches, max_layers=limit),
                notes,
            )
    progress(100, "analysis figures ready")
    return {
        "baseline": baseline,
        "profile": profile.model_dump(mode="json"),
        "floor_ms": floor.floor_ms,
        "floor_bound": floor.bound,
        "quantization_sensitivity": [item.model_dump(mode="json") for item in quantization[:24]],
        "pruning_sensitivity": [item.model_dump(mode="json") for item in pruning[:24]],
        "machine": machine.model_dump(mode="json"),
        "notes": notes,
    }
