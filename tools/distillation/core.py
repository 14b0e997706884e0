"""Knowledge distillation: train a student module to reproduce a teacher's outputs on calibration data.

The loss adds, each with its weight: the output loss against the teacher (MSE for continuous outputs such as
actions, temperature-scaled KL for logits), an optional feature loss on named module pairs (with a learned
linear projection where the widths differ), and the task loss against labels when the data has them. MSE
terms are relative (divided by the target's mean square) so that the weights mean the same at any scale.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tools.distillation.outputs import FeatureTaps, fidelity
from tools.distillation.report import DistillationReport, HeldOutMetrics
from tools.errors import OptimizationError, ValidationError
from tools.log import get_logger
from tools.techniques.base import CalibrationData, ProgressCallback
from tools.techniques.module_io import call_module, named_outputs, output_tensors

OutputLoss = Literal["auto", "mse", "kl"]
TEACHER_CACHE_BYTES = 256 * 2**20
"""Teacher targets for the training split are computed once when they fit in this many bytes."""

_log = get_logger("distillation")


def _target(tensor: torch.Tensor) -> torch.Tensor:
    """A float32 copy outside autograd (a TorchScript teacher's inference-mode tensors cannot be saved)."""
    return tensor.detach().to(torch.float32, copy=True)


def _channels_last(feature: torch.Tensor) -> torch.Tensor:
    """Put the width last: channels of (B, C, H, W) maps, the last dimension of everything else."""
    return feature.movedim(1, -1) if feature.ndim == 4 else feature


def _relative_mse(prediction: torch.Tensor, target: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (prediction - target).pow(2).mean() / scale


def _kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    width = student.shape[-1]
    log_student = F.log_softmax(student.reshape(-1, width) / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher.reshape(-1, width) / temperature, dim=-1)
    kl = F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean")
    return kl * temperature**2


def _vocab_size(module: Any) -> int | None:
    config = getattr(module, "config", None)
    for holder in (config, getattr(config, "text_config", None)):
        size = holder.get("vocab_size") if isinstance(holder, dict) else getattr(holder, "vocab_size", None)
        if isinstance(size, int) and size > 2:
            return size
    return None


def choose_output_losses(
    teacher: Any, outputs: Sequence[tuple[str, torch.Tensor]], choice: OutputLoss
) -> tuple[str, ...]:
    """Pick "mse" or "kl" per output: `auto` takes KL for logits (key "logits" or last dim == vocab size)."""
    if choice != "auto":
        return tuple(choice for _ in outputs)
    vocab = _vocab_size(teacher)
    picks = []
    for key, tensor in outputs:
        logits = key.split(".")[-1] == "logits" or (
            vocab is not None and tensor.ndim >= 2 and tensor.shape[-1] == vocab
        )
        picks.append("kl" if logits else "mse")
    return tuple(picks)


class _TrainingSet:
    """Minibatches of the training split in a seeded order: re-batched samples, or whole batches when the
    calibration batches cannot be joined (inputs of different shapes)."""

    def __init__(self, data: CalibrationData, batch_size: int | None, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.batches = data.batches
        self.labels = data.labels
        self.joined: dict[str, torch.Tensor] | None = None
        self.joined_labels: torch.Tensor | None = None
        try:
            self.joined = {name: torch.cat([b[name] for b in data.batches]) for name in data.batches[0]}
            self.joined_labels = torch.cat(data.labels) if data.labels is not None else None
        except (RuntimeError, KeyError):
            self.joined = None  # batches of different shapes: use them whole, one per step
        first = next(iter(data.batches[0].values()))
        self.batch_size = batch_size or int(first.shape[0])
        self.samples = sum(int(next(iter(b.values())).shape[0]) for b in data.batches)
        self.order: Iterator[Any] = iter(())

    def draw(self) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, Any]:
        """Return (inputs, labels or None, key) of the next minibatch; the key indexes cached targets."""
        key = next(self.order, None)
        if key is None:
            self.order = self._epoch()
            key = next(self.order)
        if self.joined is None:
            return self.batches[key], (self.labels[key] if self.labels is not None else None), key
        inputs = {name: tensor[key] for name, tensor in self.joined.items()}
        return inputs, (self.joined_labels[key] if self.joined_labels is not None else None), key

    def _epoch(self) -> Iterator[Any]:
        if self.joined is None:
            return iter(torch.randperm(len(self.batches), generator=self.generator).tolist())
        permutation = torch.randperm(self.samples, generator=self.generator)
        size = min(self.batch_size, self.samples)
        return iter([permutation[i : i + size] for i in range(0, self.samples - size + 1, size)])

    def chunks(self) -> Iterator[dict[str, torch.Tensor]]:
        """Every training sample once, in order, in minibatch-sized chunks (or whole batches)."""
        if self.joined is None:
            yield from self.batches
            return
        for start in range(0, self.samples, self.batch_size):
            yield {name: tensor[start : start + self.batch_size] for name, tensor in self.joined.items()}


class Milestones:
    """Emit progress at 0/25/50/75/100 percent, each once, whatever way the run ends."""

    def __init__(self, progress: ProgressCallback | None) -> None:
        self.progress = progress
        self.pending = [0.0, 25.0, 50.0, 75.0, 100.0]

    def reach(self, percent: float, message: str) -> None:
        """Emit every milestone up to `percent` not yet emitted, with `message`."""
        while self.pending and self.pending[0] <= percent:
            mark = self.pending.pop(0)
            if self.progress is not None:
                self.progress(mark, message)


class _Targets:
    """The teacher's outputs and tapped features for training minibatches, cached when they fit in memory.

    Per-sample caching needs every target to lead with the batch dimension; otherwise the teacher runs
    on each minibatch.
    """

    def __init__(self, teacher: Callable[..., Any], taps: FeatureTaps | None, train: _TrainingSet) -> None:
        self.teacher = teacher
        self.taps = taps
        self.cache: tuple[list[torch.Tensor], dict[str, torch.Tensor]] | list[Any] | None = None
        chunk = next(train.chunks())
        first = self.compute(chunk)
        tensors = first[0] + list(first[1].values())
        per_chunk = sum(t.numel() * t.element_size() for t in tensors)
        chunks = (
            math.ceil(train.samples / train.batch_size) if train.joined is not None else len(train.batches)
        )
        size = int(next(iter(chunk.values())).shape[0])
        by_sample = all(t.ndim > 0 and t.shape[0] == size for t in tensors)
        if per_chunk * chunks <= TEACHER_CACHE_BYTES and (by_sample or train.joined is None):
            computed = [self.compute(chunk) for chunk in train.chunks()]
            if train.joined is None:
                self.cache = computed
            else:
                outputs = [torch.cat([c[0][i] for c in computed]) for i in range(len(first[0]))]
                features = {name: torch.cat([c[1][name] for c in computed]) for name in first[1]}
                self.cache = (outputs, features)
        self.first = first

    @torch.no_grad()
    def compute(
        self, inputs: Mapping[str, torch.Tensor]
    ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Run the teacher once: (outputs, features by module name), detached."""
        outputs = [_target(t) for t in output_tensors(call_module(self.teacher, inputs))]
        features = {k: _target(v) for k, v in self.taps.values.items()} if self.taps else {}
        return outputs, features

    def get(
        self, key: Any, inputs: Mapping[str, torch.Tensor]
    ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Targets of one minibatch: from the cache by key, or from a fresh teacher pass."""
        if self.cache is None:
            return self.compute(inputs)
        if isinstance(self.cache, list):
            return self.cache[key]
        outputs, features = self.cache
        return [t[key] for t in outputs], {name: t[key] for name, t in features.items()}


def _task_loss(prediction: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """MSE against float labels; cross-entropy of logits against integer labels (-100 ignored)."""
    if labels.is_floating_point():
        if prediction.numel() != labels.numel():
            raise OptimizationError(
                f"labels of shape {tuple(labels.shape)} do not match the first output {tuple(prediction.shape)}"
            )
        return (prediction - labels.reshape(prediction.shape).to(prediction.dtype)).pow(2).mean()
    if prediction.shape[:-1] != labels.shape:
        raise OptimizationError(
            f"integer labels of shape {tuple(labels.shape)} do not match logits {tuple(prediction.shape)}"
        )
    return F.cross_entropy(
        prediction.reshape(-1, prediction.shape[-1]), labels.reshape(-1), ignore_index=-100
    )


@torch.no_grad()
def _evaluate(
    student: Callable[..., Any], held: CalibrationData, teacher_outputs: list[list[torch.Tensor]]
) -> HeldOutMetrics:
    student_outputs = [output_tensors(call_module(student, batch)) for batch in held.batches]
    flat_teacher = [t for batch in teacher_outputs for t in batch]
    flat_student = [t for batch in student_outputs for t in batch]
    if [t.shape for t in flat_teacher] != [t.shape for t in flat_student]:
        raise OptimizationError(
            "the student's outputs do not have the teacher's shapes: "
            f"{[tuple(t.shape) for t in student_outputs[0]]} vs {[tuple(t.shape) for t in teacher_outputs[0]]}"
        )
    cosine, mse = fidelity(flat_teacher, flat_student)
    task = _task_loss_over(student_outputs, held.labels)
    return HeldOutMetrics(fidelity_cosine=cosine, output_mse=mse, task_loss=task)


def _check_arguments(
    steps: int, lr: float, batch_size: int | None, temperature: float, output_loss: str, weights: dict
) -> None:
    problems = []
    if output_loss not in ("auto", "mse", "kl"):
        problems.append(f"output_loss={output_loss!r} (must be auto, mse or kl)")
    if steps < 0:
        problems.append(f"steps={steps} (must be >= 0)")
    if not lr > 0:
        problems.append(f"lr={lr} (must be > 0)")
    if batch_size is not None and batch_size < 1:
        problems.append(f"batch_size={batch_size} (must be >= 1)")
    if not temperature > 0:
        problems.append(f"temperature={temperature} (must be > 0)")
    problems += [f"{name}={value} (must be >= 0)" for name, value in weights.items() if value < 0]
    if problems:
        raise ValidationError(f"invalid distillation settings: {', '.join(problems)}")


@dataclass(frozen=True)
class _Settings:
    """The training knobs of one distillation run."""

    steps: int
    lr: float
    output_weight: float
    feature_weight: float
    task_weight: float
    temperature: float
    weight_decay: float
    grad_clip: float
    time_budget_s: float | None
    start: float


def distill_module(
    teacher: Callable[..., Any],
    student: nn.Module,
    data: CalibrationData,
    *,
    steps: int = 200,
    lr: float = 2e-4,
    batch_size: int | None = None,
    time_budget_s: float | None = None,
    feature_pairs: Sequence[tuple[str, str]] = (),
    output_weight: float = 1.0,
    feature_weight: float = 1.0,
    task_weight: float = 1.0,
    output_loss: OutputLoss = "auto",
    temperature: float = 2.0,
    holdout_fraction: float = 0.25,
    weight_decay: float = 0.0,
    grad_clip: float = 1.0,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> DistillationReport:
    """Train `student` in place to match `teacher` on the training split of `data`; report held-out effects.

    Stops after `steps` optimizer steps or `time_budget_s` seconds, whichever comes first. `batch_size`
    re-batches the training samples (default: the calibration batch size). The student runs in eval mode
    (dropout off, BatchNorm statistics kept), so a few calibration batches cannot overwrite its statistics.
    """
    weights = {"output_weight": output_weight, "feature_weight": feature_weight, "task_weight": task_weight}
    _check_arguments(steps, lr, batch_size, temperature, output_loss, weights)
    if teacher is student:
        raise ValidationError("the teacher and the student are the same module; distill into a copy")
    settings = _Settings(
        steps, lr, output_weight, feature_weight, task_weight, temperature, weight_decay, grad_clip,
        time_budget_s, time.perf_counter(),
    )  # fmt: skip
    milestones = Milestones(progress)
    milestones.reach(0, "distillation: computing teacher targets")
    torch.manual_seed(seed)
    train, held = data.split(holdout_fraction)
    teacher_was_training = getattr(teacher, "training", False)
    if isinstance(teacher, nn.Module):
        teacher.eval()
    student.eval()
    pairs = tuple((str(t), str(s)) for t, s in feature_pairs)
    taps = (
        (
            FeatureTaps(teacher, [t for t, _ in pairs], "teacher"),
            FeatureTaps(student, [s for _, s in pairs], "student"),
        )
        if pairs
        else None
    )
    try:
        held_teacher, keys = _teacher_outputs(teacher, held)
        kinds = choose_output_losses(teacher, list(zip(keys, held_teacher[0])), output_loss)
        teacher_task = _task_loss_over(held_teacher, held.labels)
        before = _evaluate(student, held, held_teacher)
        train_set = _TrainingSet(train, batch_size, seed)
        losses: list[float] = []
        stopped_by: Literal["steps", "time"] = "steps"
        untrained = {name: value.detach().clone() for name, value in student.state_dict().items()}
        if steps > 0:
            losses, stopped_by = _train(teacher, student, train_set, kinds, pairs, taps, settings, milestones)
        trained = _evaluate(student, held, held_teacher) if losses else None
        kept: Literal["trained", "before"] = "trained" if trained is not None else "before"
        if trained is not None and not better_on_heldout(trained, before):
            student.load_state_dict(untrained)
            kept = "before"
        after = trained if kept == "trained" and trained is not None else before
    finally:
        for tap in taps or ():
            tap.close()
        if isinstance(teacher, nn.Module):
            teacher.train(teacher_was_training)
    student.eval()
    window = max(1, min(10, len(losses) // 5))
    report = DistillationReport(
        before=before,
        after=after,
        teacher_task_loss=teacher_task,
        task_metric=(
            None
            if held.labels is None
            else ("mse" if held.labels[0].is_floating_point() else "cross_entropy")
        ),
        output_losses=kinds,
        steps_run=len(losses),
        steps_planned=steps,
        stopped_by=stopped_by,
        seconds=time.perf_counter() - settings.start,
        first_loss=sum(losses[:window]) / window if losses else None,
        final_loss=sum(losses[-window:]) / window if losses else None,
        train_samples=train_set.samples,
        heldout_samples=sum(int(next(iter(b.values())).shape[0]) for b in held.batches),
        feature_pairs=pairs,
        heldout_separate=len(data.batches) >= 2,
        trained=trained,
        kept=kept,
    )
    milestones.reach(
        100,
        f"distillation: {report.steps_run} steps ({stopped_by}), held-out cosine "
        f"{before.fidelity_cosine:.4f} -> {after.fidelity_cosine:.4f}"
        + (
            ""
            if kept == "trained" or trained is None
            else "; training made it worse, the weights before are kept"
        ),
    )
    _log.info(
        "distilled",
        extra={
            "steps": report.steps_run,
            "stopped_by": stopped_by,
            "cosine_after": after.fidelity_cosine,
            "kept": kept,
        },
    )
    return report


def better_on_heldout(trained: HeldOutMetrics, before: HeldOutMetrics) -> bool:
    """Whether the trained student beats the one before training on held-out data: by task loss when the data
    has labels (the ground truth), else by output MSE against the teacher; a tie keeps the trained one."""
    if trained.task_loss is not None and before.task_loss is not None:
        return trained.task_loss <= before.task_loss
    return trained.output_mse <= before.output_mse


@torch.no_grad()
def _teacher_outputs(
    teacher: Callable[..., Any], held: CalibrationData
) -> tuple[list[list[torch.Tensor]], list[str]]:
    """The teacher's outputs on every held-out batch, and the output keys."""
    outputs, keys = [], []
    for batch in held.batches:
        named = named_outputs(call_module(teacher, batch))
        keys = [key for key, _ in named]
        outputs.append([_target(tensor) for _, tensor in named])
    return outputs, keys


def _task_loss_over(outputs: list[list[torch.Tensor]], labels: list[torch.Tensor] | None) -> float | None:
    """Task loss of precomputed outputs against labels, averaged over samples."""
    if labels is None:
        return None
    total = sum(float(_task_loss(out[0], y)) * len(y) for out, y in zip(outputs, labels))
    return total / sum(len(y) for y in labels)


def _train(
    teacher: Callable[..., Any],
    student: nn.Module,
    train_set: _TrainingSet,
    kinds: tuple[str, ...],
    pairs: tuple[tuple[str, str], ...],
    taps: tuple[FeatureTaps, FeatureTaps] | None,
    settings: _Settings,
    milestones: Milestones,
) -> tuple[list[float], Literal["steps", "time"]]:
    """Run the optimizer loop; return the loss of every step and what stopped it."""
    if settings.time_budget_s is not None and time.perf_counter() - settings.start >= settings.time_budget_s:
        return [], "time"
    teacher_taps, student_taps = taps if taps else (None, None)
    targets = _Targets(teacher, teacher_taps, train_set)
    with torch.no_grad():
        call_module(student, next(train_set.chunks()))
    probe_features = dict(student_taps.values) if student_taps else {}
    projections = _projections(pairs, targets.first[1], probe_features)
    output_scales = [t.pow(2).mean().clamp_min(1e-12) for t in targets.first[0]]
    feature_scales = {t: targets.first[1][t].pow(2).mean().clamp_min(1e-12) for t, _ in pairs}
    label_scale = None
    if train_set.labels is not None and train_set.labels[0].is_floating_point():
        label_scale = torch.cat([y.reshape(-1) for y in train_set.labels]).pow(2).mean().clamp_min(1e-12)
    parameters = [p for p in student.parameters() if p.is_floating_point()]
    for parameter in parameters:
        parameter.requires_grad_(True)
    trainable = parameters + [p for proj in projections.values() for p in proj.parameters()]
    optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay)
    steps = settings.steps
    warmup = max(1, min(20, steps // 10))
    losses: list[float] = []
    for step in range(steps):
        if (
            settings.time_budget_s is not None
            and time.perf_counter() - settings.start >= settings.time_budget_s
        ):
            return losses, "time"
        for group in optimizer.param_groups:
            decay = 0.5 * (1.0 + math.cos(math.pi * step / steps))
            group["lr"] = settings.lr * min(1.0, (step + 1) / warmup) * decay
        inputs, labels, key = train_set.draw()
        teacher_out, teacher_features = targets.get(key, inputs)
        student_out = output_tensors(call_module(student, inputs))
        loss = torch.zeros(())
        for kind, s_out, t_out, scale in zip(kinds, student_out, teacher_out, output_scales):
            if kind == "kl":
                term = _kl(s_out, t_out, settings.temperature)
            else:
                term = _relative_mse(s_out, t_out, scale)
            loss = loss + settings.output_weight * term
        for t_name, s_name in pairs:
            feature = _channels_last(student_taps.values[s_name])  # type: ignore[union-attr]
            projection = projections.get(t_name + "|" + s_name)
            if projection is not None:
                feature = projection(feature)
            target = _channels_last(teacher_features[t_name])
            term = _relative_mse(feature, target, feature_scales[t_name]) / len(pairs)
            loss = loss + settings.feature_weight * term
        if labels is not None and settings.task_weight > 0:
            task = _task_loss(student_out[0], labels)
            loss = loss + settings.task_weight * (task / label_scale if label_scale is not None else task)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if settings.grad_clip > 0:
            nn.utils.clip_grad_norm_(trainable, settings.grad_clip)
        optimizer.step()
        losses.append(float(loss.detach()))
        milestones.reach(min(99.0, 100.0 * (step + 1) / steps), f"distillation step {step + 1}/{steps}")
    for parameter in parameters:
        parameter.grad = None
    return losses, "steps"


def _projections(
    pairs: Sequence[tuple[str, str]], teacher: dict[str, torch.Tensor], student: dict[str, torch.Tensor]
) -> dict[str, nn.Linear]:
    """A bias-free linear map student width -> teacher width for each pair whose widths differ."""
    projections: dict[str, nn.Linear] = {}
    for t_name, s_name in pairs:
        t_feature, s_feature = _channels_last(teacher[t_name]), _channels_last(student[s_name])
        if t_feature.shape[:-1] != s_feature.shape[:-1]:
            raise OptimizationError(
                f"features {t_name} {tuple(teacher[t_name].shape)} and {s_name} {tuple(student[s_name].shape)} "
                "differ in more than their width",
                hint="pair modules whose outputs have the same batch, token and spatial sizes",
            )
        if t_feature.shape[-1] != s_feature.shape[-1]:
            projections[t_name + "|" + s_name] = nn.Linear(
                s_feature.shape[-1], t_feature.shape[-1], bias=False
            )
    return projections
