"""Parity of an exported policy with its PyTorch original, in action space, on held-out observations.

Every LeRobot export (ONNX single forward, denoiser + sampler runner, LeRobot directory) is checked here:
whole action chunks of the export against the original's, worst max abs error, per-output cosine, action MSE
and relative L2. The report is stored with the artifact as `parity.json` and returned typed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from pydantic import BaseModel, Field

from tools.errors import MeasurementError, OptimizationError

PARITY_FILE = "parity.json"


class OutputParity(BaseModel):
    """Agreement of one named output (an action chunk) over every compared batch."""

    name: str = Field(description="Output name (e.g. 'action').")
    shape: tuple[int, ...] = Field(description="Shape of the output for one batch (batch first).")
    max_abs_error: float = Field(description="Largest absolute difference of any element, over all batches.")
    cosine: float = Field(description="Smallest cosine similarity of one batch's flattened chunk.")
    action_mse: float = Field(description="Mean squared error over every element of every whole chunk.")
    relative_l2: float = Field(description="Largest ||candidate - reference|| / ||reference|| of one batch.")


class ParityReport(BaseModel):
    """How closely an export reproduces the original policy on held-out observations."""

    what: str = Field(description="What was compared (e.g. 'onnx fp32 vs torch').")
    outputs: list[OutputParity]
    batches: int = Field(description="Observation batches compared.")
    rows: int = Field(description="Observations compared (sum of the batch sizes).")
    held_out: bool = Field(description="True when no compared observation was used for calibration.")
    inputs_source: str = Field(default="synthetic", description="Where the observations came from.")
    notes: dict[str, object] = Field(
        default_factory=dict, description="Extra facts (noise seed, steps, ...)."
    )

    @property
    def max_abs_error(self) -> float:
        """Worst absolute difference over every output."""
        return max(o.max_abs_error for o in self.outputs)

    @property
    def min_cosine(self) -> float:
        """Worst cosine over every output."""
        return min(o.cosine for o in self.outputs)

    @property
    def action_mse(self) -> float:
        """Largest action MSE over every output."""
        return max(o.action_mse for o in self.outputs)

    def save(self, directory: Path, name: str = PARITY_FILE) -> Path:
        """Write the report as JSON into `directory`; return its path."""
        path = Path(directory) / name
        payload = {
            **self.model_dump(mode="json"),
            "max_abs_error": self.max_abs_error,
            "min_cosine": self.min_cosine,
            "action_mse": self.action_mse,
        }
        path.write_text(json.dumps(payload, indent=2, sort_keys=True))
        return path

    @classmethod
    def load(cls, path: Path) -> "ParityReport":
        """Read a report written by `save`."""
        data = json.loads(Path(path).read_text())
        return cls.model_validate({k: v for k, v in data.items() if k in cls.model_fields})

    def require(self, max_abs_error: float, min_cosine: float) -> "ParityReport":
        """Return self, or raise OptimizationError naming the worst output when a tolerance is broken."""
        bad = [o for o in self.outputs if o.max_abs_error > max_abs_error or o.cosine < min_cosine]
        if bad:
            worst = max(bad, key=lambda o: o.max_abs_error)
            raise OptimizationError(
                f"{self.what} does not reproduce the original policy: output {worst.name!r} max abs error "
                f"{worst.max_abs_error:.3g} (allowed {max_abs_error:.3g}), cosine {worst.cosine:.6f} "
                f"(required {min_cosine}), action MSE {worst.action_mse:.3g}",
                hint="try another opset, keep sensitive nodes in float32, or loosen the tolerance",
                detail={"parity": self.model_dump(mode="json")},
            )
        return self


def _as_array(value: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double().numpy()
    return np.asarray(value, dtype=np.float64)


def compare_chunks(
    reference: Sequence[Mapping[str, np.ndarray | torch.Tensor]],
    candidate: Sequence[Mapping[str, np.ndarray | torch.Tensor]],
    what: str,
    held_out: bool = True,
    inputs_source: str = "synthetic",
    notes: Mapping[str, object] | None = None,
) -> ParityReport:
    """Compare named outputs batch by batch (whole chunks); raise MeasurementError on a shape mismatch."""
    if len(reference) != len(candidate) or not reference:
        raise MeasurementError(
            f"parity needs as many candidate batches as reference ones, got {len(candidate)}"
        )
    names = list(reference[0])
    stats: dict[str, dict[str, float]] = {
        n: {"max": 0.0, "cos": 1.0, "sq": 0.0, "count": 0, "rel": 0.0} for n in names
    }
    shapes: dict[str, tuple[int, ...]] = {}
    rows = 0
    for ref_batch, cand_batch in zip(reference, candidate):
        for name in names:
            if name not in cand_batch:
                raise MeasurementError(
                    f"the export returns no output {name!r}; it returns {sorted(cand_batch)}"
                )
            ref, cand = _as_array(ref_batch[name]), _as_array(cand_batch[name])
            if ref.shape != cand.shape:
                raise MeasurementError(f"output {name!r} has shape {cand.shape}, the original {ref.shape}")
            shapes.setdefault(name, tuple(ref.shape))
            diff = cand - ref
            entry = stats[name]
            entry["max"] = max(entry["max"], float(np.abs(diff).max()) if diff.size else 0.0)
            norms = float(np.linalg.norm(ref)) * float(np.linalg.norm(cand))
            cosine = float((ref * cand).sum() / norms) if norms > 0 else (1.0 if not diff.any() else 0.0)
            entry["cos"] = min(entry["cos"], cosine)
            entry["sq"] += float((diff**2).sum())
            entry["count"] += diff.size
            ref_norm = float(np.linalg.norm(ref))
            entry["rel"] = max(entry["rel"], float(np.linalg.norm(diff)) / ref_norm if ref_norm else 0.0)
        rows += int(_as_array(ref_batch[names[0]]).shape[0])
    outputs = [
        OutputParity(
            name=name,
            shape=shapes[name],
            max_abs_error=s["max"],
            cosine=s["cos"],
            action_mse=s["sq"] / max(s["count"], 1),
            relative_l2=s["rel"],
        )
        for name, s in stats.items()
    ]
    return ParityReport(
        what=what,
        outputs=outputs,
        batches=len(reference),
        rows=rows,
        held_out=held_out,
        inputs_source=inputs_source,
        notes=dict(notes or {}),
    )
