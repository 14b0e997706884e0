"""The trained reference weights that ship with the repository: a fixture, the same bytes on every CPU.

`vla`, `conv_policy` and `reacher` are trained once from their recipe (`tools.reference.training`,
`tools.reference.reacher`) and their weights ship beside this file in `weights/<name>-seed<seed>.safetensors`;
`reference_weights.json` records each file's sha256, the recipe it came from, how it behaved and the CPU that
trained it. Building a reference loads and verifies the shipped file: a missing, altered or unreadable one is
refused with the file named. Nothing is trained at install or at test time.

Training is a tool, run on purpose (`python -m tools.reference --train NAME`, `--record`): floating-point paths
differ between CPUs, so a retrain on another machine gives other bytes. It is judged by behaviour against the
shipped model (`compare_behaviour`: closed-loop success within `SUCCESS_BAND`, action error against the expert
within `ACTION_ERROR_BAND`, action agreement reported), never by bytes, and it never fails a job.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from tools.errors import CorruptFileError, NotFoundError
from tools.log import get_logger
from tools.reference.reproducible import cpu_flags, in_reproducible_process, library_versions, weights_digest

logger = get_logger("reference")

PACKAGE_DIR = Path(__file__).resolve().parent
WEIGHTS_DIR = PACKAGE_DIR / "weights"
RECORD_FILE = PACKAGE_DIR / "reference_weights.json"
TRAIN_FLAG = "ROBOPT_TRAIN_REFERENCE"  # set in a build's environment: train from the recipe, ignore shipped
SUCCESS_BAND = 0.05  # closed-loop success, absolute, on the same seeded episodes
ACTION_ERROR_BAND = 1.5  # action MSE against the expert, as a ratio either way


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_record(record_file: Path = RECORD_FILE) -> dict[str, Any]:
    """Read the shipped-weights record (`{"weights": {"<name>-seed<seed>": {...}}}`)."""
    try:
        record = json.loads(Path(record_file).read_text())
        if not isinstance(record.get("weights"), dict):
            raise KeyError("weights")
        return record
    except (OSError, json.JSONDecodeError, KeyError, AttributeError) as exc:
        raise CorruptFileError(
            f"{record_file} is missing or unreadable: {exc}",
            hint="restore it from the repository (git checkout -- tools/reference/reference_weights.json)",
        ) from None


def shipped_entry(name: str, seed: int, record_file: Path = RECORD_FILE) -> dict[str, Any] | None:
    """Return the record of the shipped weights of `name` at `seed`, or None when that seed does not ship."""
    return read_record(record_file)["weights"].get(f"{name}-seed{seed}")


def ships(name: str, seed: int) -> bool:
    """Whether `name` at `seed` is built from shipped weights (not trained) in this process."""
    return os.environ.get(TRAIN_FLAG) != "1" and shipped_entry(name, seed) is not None


def shipped_parameter_count(
    name: str, seed: int = 0, record_file: Path = RECORD_FILE, weights_dir: Path = WEIGHTS_DIR
) -> int | None:
    """The number of values in the shipped state dict of `name` (its parameters plus a few buffers), read from
    the SafeTensors header without loading a tensor; None when nothing ships for it or the file is unreadable.
    """
    from safetensors import SafetensorError, safe_open

    entry = shipped_entry(name, seed, record_file)
    if entry is None:
        return None
    try:
        with safe_open(str(Path(weights_dir) / entry["file"]), framework="np") as weights:
            return sum(math.prod(weights.get_slice(key).get_shape()) for key in weights.keys())
    except (SafetensorError, OSError, ValueError):
        return None


def load_shipped_weights(
    name: str, seed: int, record_file: Path = RECORD_FILE, weights_dir: Path = WEIGHTS_DIR
) -> dict[str, torch.Tensor]:
    """Read and verify the shipped state dict of `name` at `seed`; refuse a missing or altered file, naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    entry = shipped_entry(name, seed, record_file)
    if entry is None:
        raise NotFoundError(
            f"no shipped weights for reference {name}-seed{seed} in {record_file}",
            hint="seed 0 ships; other seeds are trained with `python -m tools.reference --train NAME --seed S`",
        )
    path = Path(weights_dir) / entry["file"]
    if not path.is_file():
        raise NotFoundError(
            f"shipped weights file {path} is missing",
            hint="restore it from the repository (git checkout -- tools/reference/weights)",
        )
    actual = _sha256_file(path)
    if actual != entry["sha256"]:
        raise CorruptFileError(
            f"shipped weights file {path} has sha256 {actual}, but {record_file.name} records {entry['sha256']}",
            hint="the file was altered or truncated: restore it (git checkout -- tools/reference/weights); "
            "after a deliberate retrain, `python -m tools.reference --record` rewrites both",
        )
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CorruptFileError(f"shipped weights file {path} is not readable SafeTensors: {exc}") from None
    logger.info("loaded shipped weights %s", path.name, extra={"component": "reference", "sha256": actual})
    return state


def weights_for(
    name: str, seed: int, model: nn.Module, train: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """Fill `model` with the shipped weights of `name` at `seed`, or run `train()` (the recipe) when none ship.

    Returns the provenance for `reference.json`: where the weights came from, their digest and the training
    record (the shipped one, or `train()`'s report).
    """
    if ships(name, seed):
        entry = shipped_entry(name, seed)
        assert entry is not None
        model.load_state_dict(load_shipped_weights(name, seed))
        model.eval()
        return {
            "source": "shipped",
            "file": f"tools/reference/weights/{entry['file']}",
            "sha256": entry["sha256"],
            "weights_sha256": weights_digest(model),
            "training": entry.get("training", {}),
            "trained_on": entry.get("trained_on", {}),
        }
    report = train()
    model.eval()
    return {
        "source": "trained",
        "weights_sha256": weights_digest(model),
        "training": report,
        "trained_on": trained_on(),
    }


def trained_on() -> dict[str, Any]:
    """Describe this machine for a training record: CPU, library versions, whether kernels were pinned."""
    return {"cpu": cpu_flags(), "versions": library_versions(), "pinned_kernels": in_reproducible_process()}


def ship_weights(
    name: str,
    seed: int,
    model: nn.Module,
    provenance: dict[str, Any],
    behaviour: dict[str, Any],
    record_file: Path = RECORD_FILE,
    weights_dir: Path = WEIGHTS_DIR,
) -> Path:
    """Write `model`'s state dict as the shipped weights of `name` at `seed` and record its sha256 (`--record`)."""
    from safetensors.torch import save_file

    weights_dir = Path(weights_dir)
    weights_dir.mkdir(parents=True, exist_ok=True)
    file_name = f"{name}-seed{seed}.safetensors"
    state = {key: tensor.detach().contiguous().cpu() for key, tensor in model.state_dict().items()}
    temporary = weights_dir / f".{file_name}.tmp"
    save_file(state, str(temporary), metadata={"reference": f"{name}-seed{seed}"})
    os.chmod(temporary, 0o644)  # a repository file, not a private one
    os.replace(temporary, weights_dir / file_name)
    record = read_record(record_file) if Path(record_file).is_file() else {"weights": {}}
    record["weights"][f"{name}-seed{seed}"] = {
        "file": file_name,
        "sha256": _sha256_file(weights_dir / file_name),
        "bytes": (weights_dir / file_name).stat().st_size,
        "weights_sha256": weights_digest(model),
        "training": provenance.get("training", {}),
        "trained_on": provenance.get("trained_on", trained_on()),
        "behaviour": behaviour,
    }
    Path(record_file).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    logger.info("shipped %s", file_name, extra={"component": "reference"})
    return weights_dir / file_name


@dataclass(frozen=True)
class Behaviour:
    """How one reference policy behaves on fixed, seeded probes."""

    success_rate: float
    episodes: int
    action_mse: float  # against the expert's actions on held-out observations
    actions: np.ndarray  # the policy's actions on those observations (for agreement)


@dataclass(frozen=True)
class BehaviourComparison:
    """A retrain against the shipped model: accepted when it behaves within the stated bands."""

    name: str
    accepted: bool
    reasons: list[str]
    shipped_success: float
    retrained_success: float
    episodes: int
    shipped_action_mse: float
    retrained_action_mse: float
    action_agreement_rel_l2: float  # ||a_retrained - a_shipped|| / ||a_shipped|| on held-out observations
    bytes_identical: bool
    success_band: float = SUCCESS_BAND
    action_error_band: float = ACTION_ERROR_BAND

    def as_dict(self) -> dict[str, Any]:
        """Return the comparison as plain JSON-ready values."""
        return asdict(self)

    def summary(self) -> str:
        """One line for a terminal."""
        verdict = "ACCEPTED" if self.accepted else "OUTSIDE THE BAND"
        return (
            f"{self.name}: {verdict}; success {self.shipped_success:.2f} shipped vs "
            f"{self.retrained_success:.2f} retrained ({self.episodes} episodes, band +-{self.success_band}); "
            f"action MSE {self.shipped_action_mse:.5f} vs {self.retrained_action_mse:.5f} "
            f"(band x{self.action_error_band}); agreement rel L2 {self.action_agreement_rel_l2:.3f}; "
            f"bytes {'identical' if self.bytes_identical else 'differ'}"
            + ("" if self.accepted else "; " + "; ".join(self.reasons))
        )


def compare_behaviour(
    name: str, shipped: Behaviour, retrained: Behaviour, bytes_identical: bool
) -> BehaviourComparison:
    """Judge a retrain by behaviour: success within `SUCCESS_BAND`, action error within `ACTION_ERROR_BAND`."""
    reasons = []
    if shipped.episodes != retrained.episodes:
        reasons.append(f"episodes differ ({shipped.episodes} vs {retrained.episodes}): not comparable")
    gap = retrained.success_rate - shipped.success_rate
    if abs(gap) > SUCCESS_BAND + 1e-9:
        reasons.append(f"closed-loop success moved by {gap:+.2f} (band +-{SUCCESS_BAND})")
    ratio = retrained.action_mse / max(shipped.action_mse, 1e-12)
    if not 1 / ACTION_ERROR_BAND <= ratio <= ACTION_ERROR_BAND:
        reasons.append(
            f"action MSE against the expert is {ratio:.2f}x the shipped model's (band x{ACTION_ERROR_BAND})"
        )
    denominator = float(np.linalg.norm(shipped.actions)) or 1.0
    agreement = float(np.linalg.norm(retrained.actions - shipped.actions)) / denominator
    return BehaviourComparison(
        name=name,
        accepted=not reasons,
        reasons=reasons,
        shipped_success=shipped.success_rate,
        retrained_success=retrained.success_rate,
        episodes=shipped.episodes,
        shipped_action_mse=shipped.action_mse,
        retrained_action_mse=retrained.action_mse,
        action_agreement_rel_l2=agreement,
        bytes_identical=bytes_identical,
    )
