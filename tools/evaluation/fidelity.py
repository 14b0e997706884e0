"""Fidelity to the original model (no data needed): how closely a candidate's outputs match the reference's.

Per output: cosine similarity, relative L2 and max absolute error over every batch together (the flattened
outputs of all batches are compared as one vector, so the figures do not depend on how inputs were batched).
Outputs that are class scores (logits, action-token scores) also get top-1 agreement and KL(ref || cand).
The headline is the lowest cosine over the outputs and over the held-out samples (each sample's outputs
compared alone, `sample_cosines`), so a judgement bounds the worst input rather than the average one. A
fidelity figure is never called accuracy.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Literal, Mapping, Sequence

import torch

from tools.errors import MeasurementError, ValidationError
from tools.evaluation.policy import ACTION_ERROR_METRIC, action_agreement, action_indices
from tools.evaluation.types import AccuracyResult
from tools.intake import LoadedModel
from tools.log import get_logger
from tools.techniques.artifacts import OutputAgreement, output_agreement, run_outputs

AUTO_LOGITS_MIN_CLASSES = 16
"""With `logits_outputs="auto"`, a float output whose last axis has at least this many entries counts as
class scores (vocabulary logits, action-token bins); action chunks (last axis 2-7) and the like do not."""

Batches = Sequence[Mapping[str, torch.Tensor]]
LogitsSelection = Sequence[int] | Literal["auto"]

_log = get_logger("evaluation.fidelity")


def as_batches(inputs: Batches | Mapping[str, torch.Tensor]) -> list[Mapping[str, torch.Tensor]]:
    """Accept one batch (a dict of tensors) or a list of them; refuse an empty list."""
    batches = [inputs] if isinstance(inputs, Mapping) else list(inputs)
    if not batches:
        raise ValidationError("no inputs given; pass at least one batch (a dict of input name -> tensor)")
    return batches


def collect_outputs(
    model: LoadedModel, inputs: Batches | Mapping[str, torch.Tensor]
) -> list[list[torch.Tensor]]:
    """Run `model` on every batch; return per-batch lists of float32 CPU outputs."""
    return [run_outputs(model, batch) for batch in as_batches(inputs)]


def batches_digest(inputs: Batches | Mapping[str, torch.Tensor]) -> str:
    """sha256 over every batch's input names, dtypes, shapes and bytes: the key of a reference's outputs."""
    digest = hashlib.sha256()
    for batch in as_batches(inputs):
        for name in sorted(batch):
            tensor = batch[name].detach().to("cpu").contiguous()
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cached_outputs(
    model: LoadedModel, inputs: Batches | Mapping[str, torch.Tensor], cache_path: Path | None
) -> list[list[torch.Tensor]]:
    """`collect_outputs`, kept in `cache_path` when given: the original's outputs on the job's data do not
    change between versions, and a model of seconds a call must not be run again for every candidate.

    The file is written whole (temporary file, then rename); a torn or foreign file is recomputed."""
    batches = as_batches(inputs)
    if cache_path is None:
        return collect_outputs(model, batches)
    if cache_path.is_file():
        try:
            stored = torch.load(cache_path, weights_only=True)
            if (
                isinstance(stored, list)
                and len(stored) == len(batches)
                and all(isinstance(b, list) and all(isinstance(t, torch.Tensor) for t in b) for b in stored)
            ):
                _log.info("reference outputs from cache", extra={"cache_path": str(cache_path)})
                return stored
        except Exception:  # noqa: BLE001 - a torn or foreign cache file is recomputed, never trusted
            _log.warning("unreadable reference cache recomputed", extra={"cache_path": str(cache_path)})
    outputs = collect_outputs(model, batches)
    _store(cache_path, outputs)
    return outputs


def _store(path: Path, value: object) -> None:
    """Write `value` to `path` whole: a temporary file, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(value, partial)
    os.replace(partial, path)


SYNTHETIC_SEED = 1000
SYNTHETIC_MIN_BATCHES = 4
SYNTHETIC_BUDGET_S = 10.0
"""Seconds of the original's time for its synthetic held-out outputs, once per job (they are cached): a fast
model gets `WORST_CASE_SAMPLES` samples, a model of seconds a call at least `SYNTHETIC_MIN_BATCHES` batches."""
SYNTHETIC_PLAN = "synthetic_held_out.json"


def synthetic_held_out(reference: LoadedModel, cache_dir: Path | None) -> list[Mapping[str, torch.Tensor]]:
    """Synthetic held-out inputs for fidelity when the job has no data: up to `WORST_CASE_SAMPLES` samples,
    as many batches as the original runs in `SYNTHETIC_BUDGET_S` (never fewer than `SYNTHETIC_MIN_BATCHES`).

    The count is decided once, by the original's own pace, and kept in `cache_dir` with its outputs, so every
    version of the job is judged on the same inputs without running the original again."""
    plan = cache_dir / SYNTHETIC_PLAN if cache_dir is not None else None
    if plan is not None and plan.is_file():
        try:
            count = int(json.loads(plan.read_text())["batches"])
            return [reference.example_inputs(seed=SYNTHETIC_SEED + i) for i in range(max(count, 1))]
        except (OSError, ValueError, KeyError, TypeError):
            _log.warning("unreadable synthetic held-out plan decided again", extra={"plan": str(plan)})
    first = reference.example_inputs(seed=SYNTHETIC_SEED)
    wanted = max(SYNTHETIC_MIN_BATCHES, -(-WORST_CASE_SAMPLES // max(_batch_rows(first), 1)))
    batches: list[Mapping[str, torch.Tensor]] = []
    outputs: list[list[torch.Tensor]] = []
    started = time.perf_counter()
    while len(batches) < wanted:
        batch = first if not batches else reference.example_inputs(seed=SYNTHETIC_SEED + len(batches))
        outputs.append(run_outputs(reference, batch))
        batches.append(batch)
        spent = time.perf_counter() - started
        if (
            len(batches) >= SYNTHETIC_MIN_BATCHES
            and spent * (len(batches) + 1) / len(batches) > SYNTHETIC_BUDGET_S
        ):
            break
    if plan is not None and cache_dir is not None:
        _store(cache_dir / f"{batches_digest(batches)}.pt", outputs)
        plan.write_text(json.dumps({"batches": len(batches), "seed": SYNTHETIC_SEED}))
    return batches


def aggregate_agreement(
    reference: Sequence[Sequence[torch.Tensor]], candidate: Sequence[Sequence[torch.Tensor]]
) -> list[OutputAgreement]:
    """Compare per-batch outputs over all batches at once: one `OutputAgreement` per output."""
    if len(reference) != len(candidate):
        raise MeasurementError(f"{len(candidate)} candidate batches for {len(reference)} reference batches")
    counts = {len(batch) for batch in (*reference, *candidate)}
    if len(counts) != 1:
        raise MeasurementError(
            f"the models return different numbers of outputs across batches: {sorted(counts)}"
        )
    for ref_batch, cand_batch in zip(reference, candidate):
        output_agreement(list(ref_batch), list(cand_batch))  # raises on a shape mismatch, naming the output
    joined_ref = [torch.cat([batch[i].reshape(-1) for batch in reference]) for i in range(counts.pop())]
    joined_cand = [torch.cat([batch[i].reshape(-1) for batch in candidate]) for i in range(len(joined_ref))]
    return output_agreement(joined_ref, joined_cand)


def logits_agreement(
    reference: Sequence[torch.Tensor], candidate: Sequence[torch.Tensor]
) -> dict[str, float]:
    """Top-1 agreement and mean KL(ref || cand) of class scores along the last axis, over all positions."""
    ref = torch.cat([tensor.reshape(-1, tensor.shape[-1]) for tensor in reference]).double()
    cand = torch.cat([tensor.reshape(-1, tensor.shape[-1]) for tensor in candidate]).double()
    log_ref = torch.log_softmax(ref, dim=-1)
    log_cand = torch.log_softmax(cand, dim=-1)
    kl = (log_ref.exp() * (log_ref - log_cand)).sum(dim=-1)
    return {
        "top1_agreement": float((ref.argmax(dim=-1) == cand.argmax(dim=-1)).double().mean()),
        "kl_divergence": max(0.0, float(kl.mean())),
        "positions": int(ref.shape[0]),
    }


def logits_indices(
    outputs: Sequence[torch.Tensor], selection: LogitsSelection, min_classes: int = AUTO_LOGITS_MIN_CLASSES
) -> list[int]:
    """Resolve which outputs are class scores: the given indices, or by shape with "auto"."""
    if selection == "auto":
        return [i for i, out in enumerate(outputs) if out.ndim >= 2 and out.shape[-1] >= min_classes]
    if isinstance(selection, str):
        raise ValidationError(f"logits_outputs must be 'auto' or a list of output indices, got {selection!r}")
    indices = sorted(set(int(index) for index in selection))
    bad = [index for index in indices if not 0 <= index < len(outputs) or outputs[index].ndim < 1]
    if bad:
        raise ValidationError(
            f"logits_outputs {bad} do not name outputs; the model has {len(outputs)} output(s), "
            "indexed from 0"
        )
    return indices


WORST_CASE_SAMPLES = 32
"""Held-out inputs a fidelity judgement aims for: the worst of n exchangeable samples bounds a new input's
figure, which falls below it with probability at most 1 / (n + 1) (3% at 32). On a pretrained encoder an INT8
model passed "min cosine 0.9902" on one set of inputs and gave 0.985 on 16 others (issue 15)."""


def sample_cosines(
    reference: Sequence[Sequence[torch.Tensor]],
    candidate: Sequence[Sequence[torch.Tensor]],
    rows: Sequence[int],
) -> list[list[float]]:
    """Per output, the cosine of each held-out sample's output: one per row where the output has the batch's
    rows on its first axis, else one per batch (a pooled or scalar output)."""
    found: list[list[float]] = [[] for _ in reference[0]]
    for ref_batch, cand_batch, count in zip(reference, candidate, rows):
        for index, (ref, cand) in enumerate(zip(ref_batch, cand_batch)):
            per_row = ref.ndim >= 1 and ref.shape[0] == count and count > 1
            a = (ref.reshape(count, -1) if per_row else ref.reshape(1, -1)).double()
            b = (cand.reshape(count, -1) if per_row else cand.reshape(1, -1)).double()
            norms = a.norm(dim=1) * b.norm(dim=1)
            dots = (a * b).sum(dim=1)
            same = (a - b).abs().amax(dim=1) == 0 if a.shape[1] else torch.ones(a.shape[0], dtype=torch.bool)
            cos = torch.where(norms > 0, dots / norms.clamp_min(1e-300), same.double())
            found[index].extend(float(c) for c in cos)
    return found


def measure_fidelity(
    reference: LoadedModel,
    candidate: LoadedModel,
    inputs: Batches | Mapping[str, torch.Tensor],
    *,
    logits_outputs: LogitsSelection = "auto",
    min_classes: int = AUTO_LOGITS_MIN_CLASSES,
    actions: bool = False,
    reference_cache: Path | None = None,
) -> AccuracyResult:
    """Measure how faithfully `candidate` reproduces `reference` on `inputs` (torch or ONNX Runtime, any mix).

    `reference_cache` (a file) keeps the reference's outputs for the next candidate (see `cached_outputs`);
    a candidate that is the reference itself (the baseline) is run once, not twice.

    The headline metric is `min_cosine` (higher is better); with `actions` (a policy) it is the action error
    over whole chunks, `action_rel_error` (lower is better), and the cosine stays in the details.
    `details["outputs"]` holds the figures per output.
    """
    batches = as_batches(inputs)
    ref_outputs = cached_outputs(reference, batches, reference_cache)
    cand_outputs = ref_outputs if candidate is reference else collect_outputs(candidate, batches)
    agreements = aggregate_agreement(ref_outputs, cand_outputs)
    per_output = [agreement.as_dict() for agreement in agreements]
    logits = logits_indices(ref_outputs[0], logits_outputs, min_classes)
    for index in logits:
        per_output[index].update(
            logits_agreement(
                [batch[index] for batch in ref_outputs], [batch[index] for batch in cand_outputs]
            )
        )
    details: dict[str, object] = {
        "outputs": per_output,
        "batches": len(batches),
        "max_relative_l2": max(item["relative_l2"] for item in per_output),
        "max_abs_error": max(item["max_abs_error"] for item in per_output),
    }
    scored = [item for item in per_output if "top1_agreement" in item]
    if scored:
        details["min_top1_agreement"] = min(item["top1_agreement"] for item in scored)
        details["max_kl_divergence"] = max(item["kl_divergence"] for item in scored)
    rows = [_batch_rows(batch) for batch in batches]
    samples = sum(rows)
    by_sample = sample_cosines(ref_outputs, cand_outputs, rows)
    for item, cosines in zip(per_output, by_sample):
        item["worst_sample_cosine"] = min(cosines)
    worst = min(min(cosines) for cosines in by_sample)
    details["min_cosine"] = min(min(item["cosine"] for item in per_output), worst)
    details["worst_sample_cosine"] = worst
    details["worst_case"] = (
        f"the worst of {samples} held-out samples: a new input falls below it with probability at most "
        f"1/{samples + 1} ({1 / (samples + 1):.1%})"
    )
    if actions:
        indices = action_indices(ref_outputs[0], reference, logits)
        figures = action_agreement(ref_outputs, cand_outputs, indices)
        details.update(figures, action_outputs=indices)
        return AccuracyResult(
            level="fidelity",
            metric=ACTION_ERROR_METRIC,
            value=figures[ACTION_ERROR_METRIC],
            higher_is_better=False,
            samples=samples,
            details=details,
        )
    return AccuracyResult(
        level="fidelity",
        metric="min_cosine",
        value=float(details["min_cosine"]),
        higher_is_better=True,
        samples=samples,
        details=details,
    )


def cosine_figure(result: AccuracyResult) -> AccuracyResult | None:
    """The output-cosine figure that rides along an action-error headline, as its own result (reported both)."""
    if (
        result.level != "fidelity"
        or result.metric != ACTION_ERROR_METRIC
        or "min_cosine" not in result.details
    ):
        return None
    return AccuracyResult(
        level="fidelity",
        metric="min_cosine",
        value=float(result.details["min_cosine"]),
        higher_is_better=True,
        samples=result.samples,
        details={"outputs": result.details.get("outputs", [])},
    )


def _batch_rows(batch: Mapping[str, torch.Tensor]) -> int:
    """Rows (samples) in a batch: the leading size of its first input."""
    first = next(iter(batch.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1
