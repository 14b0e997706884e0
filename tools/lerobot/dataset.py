"""Read a LeRobotDataset directory (what `lerobot-record` writes) as a job's data, split by episode.

The dataset is opened with LeRobot's own `LeRobotDataset(repo_id, root=DIR)` from the local root only, with
`delta_timestamps` asking for what the policy consumes and what it is judged on:

- observations: the policy's input features (`metadata["policy"]["input_names"]` maps the ONNX-safe input
  names to LeRobot keys). A policy with an observation history of `n_obs_steps` frames gets the real previous
  frames of the same episode; at an episode start LeRobot clamps to the first frame, repeating it as the
  policy's observation queue does.
- labels: the recorded actions of this frame and the next `chunk_size - 1` frames of the same episode, shaped
  `(N, chunk_size, action_dim)` like the policy's output. Frames closer than `chunk_size` to their episode's end
  are left out (never padded), so every label is a recorded action.

Episodes, not frames, are split: the last quarter of the episodes (at least one) is held out for acceptance,
the rest is for calibration and search, so no frame of a held-out episode is ever calibrated on. The episodes
of each part are written into the data's notes, which the analysis and the report show.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from tools.errors import CorruptFileError, InputSpecError, ValidationError, first_line
from tools.inputs import InputSpec, check_data_matches, safe_input_name
from tools.techniques.base import CalibrationData, calibration_from_data

INFO_FILE = Path("meta") / "info.json"
ACTION_KEY = "action"
LABEL_NAME = "actions"
HOLDOUT_FRACTION = 0.25


@dataclass(frozen=True)
class EpisodeSplit:
    """Which episodes calibrate and search, and which are held out for acceptance."""

    calibration: tuple[int, ...]
    held_out: tuple[int, ...]


def is_lerobot_dataset(path: Path) -> bool:
    """Whether `path` is a directory with LeRobot's `meta/info.json`."""
    return Path(path).is_dir() and (Path(path) / INFO_FILE).is_file()


def read_dataset_info(path: Path) -> dict[str, Any]:
    """LeRobot's `meta/info.json` of a dataset directory; a clear error for a directory that is not one."""
    path = Path(path)
    if not path.is_dir():
        raise InputSpecError(f"LeRobot dataset directory not found: {path}")
    info_path = path / INFO_FILE
    if not info_path.is_file():
        raise InputSpecError(
            f"{path} is not a LeRobotDataset: it has no {INFO_FILE.as_posix()}",
            hint="give the directory that lerobot-record or LeRobotDataset.create wrote (meta/info.json, "
            "data/*.parquet, images or videos)",
            detail={"path": str(path), "missing": INFO_FILE.as_posix()},
        )
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError) as exc:
        raise CorruptFileError(f"cannot read {info_path}: {first_line(exc)}") from None
    if not isinstance(info, dict) or not isinstance(info.get("features"), dict) or not info.get("fps"):
        raise CorruptFileError(
            f"{info_path} has no 'features' and 'fps'", hint="is this a LeRobotDataset written by LeRobot?"
        )
    return info


def split_episodes(episodes: Iterable[int], holdout_fraction: float = HOLDOUT_FRACTION) -> EpisodeSplit:
    """Hold out the last `holdout_fraction` of the episodes (at least one); calibrate on the rest."""
    ordered = sorted(set(int(index) for index in episodes))
    if len(ordered) < 2:
        raise ValidationError(
            f"a LeRobot dataset needs at least 2 episodes to hold one out for acceptance; it has {len(ordered)}",
            hint="record more episodes: accuracy is judged on episodes that calibration never saw",
        )
    held = min(len(ordered) - 1, max(1, math.ceil(len(ordered) * holdout_fraction)))
    return EpisodeSplit(tuple(ordered[:-held]), tuple(ordered[-held:]))


def policy_feature_keys(
    specs: list[InputSpec], features: dict[str, Any], policy: dict[str, Any]
) -> dict[str, str]:
    """Map each input name to the dataset feature that feeds it, or name what is missing and what is expected."""
    aliases = dict(policy.get("input_names") or {})
    by_safe_name = {safe_input_name(key): key for key in features}
    keys: dict[str, str] = {}
    missing: list[str] = []
    for spec in specs:
        key = aliases.get(spec.name) or by_safe_name.get(spec.name)
        if key is None or key not in features:
            missing.append(aliases.get(spec.name, spec.name))
        else:
            keys[spec.name] = key
    if missing:
        expected = [aliases.get(spec.name, spec.name) for spec in specs]
        raise InputSpecError(
            f"the LeRobot dataset has no feature {', '.join(map(repr, missing))}; the policy expects "
            f"{', '.join(map(repr, expected))}; the dataset has {', '.join(sorted(features))}",
            hint="record the dataset with the features the policy was trained on",
            detail={"missing": missing, "expected": expected, "features": sorted(features)},
        )
    return keys


def load_lerobot_dataset(
    path: Path,
    specs: Iterable[InputSpec],
    policy: dict[str, Any] | None = None,
    *,
    max_samples: int = 256,
    batch_size: int = 32,
    fixed_batch: bool = False,
    holdout_fraction: float = HOLDOUT_FRACTION,
) -> CalibrationData:
    """Load observations and next-chunk action labels, calibration episodes first, held-out episodes after.

    `policy` is the model's `metadata["policy"]` (input names, `chunk_size`, `n_obs_steps`); without a
    `chunk_size` (a model that is not a LeRobot policy) no labels are made. At most `max_samples` frames are
    taken, evenly spaced over each part's usable frames, in batches of equal size (at most `batch_size`; exactly
    it with `fixed_batch`, an export with a fixed batch size), a ragged rest left out.
    `CalibrationData.holdout_from` marks where the held-out episodes begin.
    """
    from tools.lerobot.imports import import_lerobot_module

    path = Path(path).resolve()
    specs = list(specs)
    policy = dict(policy or {})
    info = read_dataset_info(path)
    features: dict[str, Any] = info["features"]
    keys = policy_feature_keys(specs, features, policy)
    fps = float(info["fps"])
    chunk = int(policy["chunk_size"]) if policy.get("chunk_size") and ACTION_KEY in features else None
    history = int(policy.get("n_obs_steps") or 1)
    deltas: dict[str, list[float]] = {}
    if chunk is not None:
        deltas[ACTION_KEY] = [step / fps for step in range(chunk)]
    for spec in specs:
        if history > 1 and len(spec.shape) >= 2 and spec.shape[1] == history:
            deltas[keys[spec.name]] = [(step - history + 1) / fps for step in range(history)]
    dataset_class = import_lerobot_module("lerobot.datasets.lerobot_dataset").LeRobotDataset
    try:
        with _hub_offline():  # LeRobot fetches missing files from the Hub; a local dataset must be complete
            dataset = dataset_class(f"local/{path.name}", root=path, delta_timestamps=deltas or None)
            episodes = [dict(row) for row in dataset.meta.episodes]
    except Exception as exc:  # noqa: BLE001 - LeRobot and datasets raise many types for a broken directory
        raise CorruptFileError(
            f"LeRobot cannot open the dataset at {path} from its local files: {type(exc).__name__}: "
            f"{first_line(exc)}",
            hint="give a complete LeRobotDataset directory (meta/, data/ and its images or videos)",
        ) from None
    split = split_episodes((row["episode_index"] for row in episodes), holdout_fraction)
    span = {
        int(row["episode_index"]): (int(row["dataset_from_index"]), int(row["dataset_to_index"]))
        for row in episodes
    }
    need = chunk or 1
    held_share = max(1, round(max_samples * holdout_fraction))
    parts: list[CalibrationData] = []
    notes: list[str] = []
    for name, part, cap in (
        ("calibration and search", split.calibration, max(1, max_samples - held_share)),
        ("held-out acceptance", split.held_out, held_share),
    ):
        usable = [index for episode in part for index in range(span[episode][0], span[episode][1] - need + 1)]
        if not usable:
            raise ValidationError(
                f"the {name} episodes {list(part)} have no frame with {need} recorded actions ahead",
                hint=f"record episodes longer than the policy's chunk of {need} actions",
            )
        chosen = _evenly_spaced(usable, cap)
        size = _even_batch_size(len(chosen), batch_size, fixed_batch)
        chosen = chosen[: max(size, len(chosen) - len(chosen) % size)]
        parts.append(_frames(dataset, chosen, specs, keys, chunk, size))
        notes.append(f"LeRobot dataset {path.name}: {name} on episodes {list(part)} ({len(chosen)} frames)")
    if chunk is not None:
        notes.append(
            f"labels: the recorded actions of each frame and the next {chunk - 1} of its episode "
            f"(frames within {chunk - 1} of an episode's end left out)"
        )
    if len(deltas) > (1 if chunk is not None else 0):
        notes.append(
            f"observations: the episode's last {history} frames (the first frame repeated at an episode start, "
            "as LeRobot's observation queue does)"
        )
    calibration, held_out = parts
    return CalibrationData(
        calibration.batches + held_out.batches,
        (calibration.labels or []) + (held_out.labels or []) if chunk is not None else None,
        source="user",
        notes=notes,
        holdout_from=len(calibration.batches),
    )


@contextmanager
def _hub_offline() -> Iterator[None]:
    """Refuse every Hugging Face Hub call inside the block (huggingface_hub reads this flag per call)."""
    import huggingface_hub.constants as hub

    before = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = before


def _even_batch_size(count: int, batch_size: int, fixed: bool) -> int:
    """A batch size that cuts `count` frames into equal batches (calibrators stack them), losing at most a few
    frames; an export with a fixed batch size keeps its own."""
    if fixed or count <= batch_size:
        return batch_size if fixed else count
    return count // math.ceil(count / batch_size)


def _evenly_spaced(indices: list[int], count: int) -> list[int]:
    """At most `count` of `indices`, spread evenly from first to last."""
    if len(indices) <= count:
        return indices
    step = len(indices) / count
    return [indices[int(position * step)] for position in range(count)]


def _frames(
    dataset: Any,
    indices: list[int],
    specs: list[InputSpec],
    keys: dict[str, str],
    chunk: int | None,
    batch_size: int,
) -> CalibrationData:
    """Read `indices` through LeRobot's `__getitem__` and batch them (inputs by input name, labels as actions)."""
    columns: dict[str, list[torch.Tensor]] = {spec.name: [] for spec in specs}
    labels: list[torch.Tensor] = []
    for index in indices:
        item = dataset[index]
        for spec in specs:
            value = item[keys[spec.name]]
            columns[spec.name].append(
                value.to(spec.torch_dtype) if spec.torch_dtype.is_floating_point else value
            )
        if chunk is not None:
            labels.append(item[ACTION_KEY].reshape(chunk, -1).float())
    arrays = {name: torch.stack(values) for name, values in columns.items()}
    for spec in specs:  # a temporal policy with a one-frame history takes (N, 1, ...)
        value = arrays[spec.name]
        if value.dim() == len(spec.shape) - 1 and tuple(value.shape[1:]) == tuple(spec.shape[2:]):
            arrays[spec.name] = value.unsqueeze(1)
    check_data_matches(specs, arrays, keys)
    if chunk is not None:
        arrays[LABEL_NAME] = torch.stack(labels)
    return calibration_from_data(
        arrays, specs, label_key=LABEL_NAME if chunk is not None else None, batch_size=batch_size
    )
