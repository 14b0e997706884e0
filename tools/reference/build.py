"""Build reference models once and cache them: train, measure, export, describe in `reference.json`.

A cache entry is `<cache_dir>/<name>-seed<seed>-<fingerprint>/`, where the fingerprint hashes the reference
source files and the torch (and transformers) versions, so a code change rebuilds. Builds run in a hidden
temporary directory under a per-name file lock and are renamed into place when complete, so a killed build
leaves no half cache entry, and two processes never train the same model at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from tools.errors import CorruptFileError, NotFoundError
from tools.inputs import InputSpec
from tools.log import get_logger
from tools.reference.conv_policy import POLICY_INPUTS as CONV_POLICY_INPUTS
from tools.reference.conv_policy import SINGLE_TARGET_TASK, ConvPolicy
from tools.reference.exports import ExportedModel, archive_directory, export_model
from tools.reference.reaching import ReachingConfig, make_dataset, random_policy, rollout_success
from tools.reference.reproducible import build_in_child, in_reproducible_process, reproducible_kernels
from tools.reference.shipped import TRAIN_FLAG, shipped_entry, ships, weights_for
from tools.reference.training import (
    POLICY_INPUTS,
    TrainingConfig,
    action_errors,
    deterministic,
    torch_policy,
    train_behaviour_cloning,
)
from tools.reference.vla import TinyVLA

logger = get_logger("reference")

METADATA_FILE = "reference.json"
PACKAGE_DIR = Path(__file__).resolve().parent
VLA_TRAINING = TrainingConfig(steps=700, batch_size=64, learning_rate=1e-3, threads=1)
CONV_POLICY_TRAINING = TrainingConfig(steps=300, batch_size=64, learning_rate=1e-3, threads=1)
EVAL_EPISODES = 100
EVAL_SEED = 10_000
EVAL_ACTIONS_PER_CHUNK = 4
HELDOUT_SAMPLES = 1024
HELDOUT_SEED = 20_000
_POLICY_SOURCES = ("reaching.py", "training.py", "exports.py", "build.py", "reproducible.py", "shipped.py")


def source_fingerprint(file_names: tuple[str, ...], extra: tuple[str, ...] = ()) -> str:
    """Hash the named files of this package with the torch version and any `extra` strings."""
    digest = hashlib.sha256()
    if os.environ.get(TRAIN_FLAG) == "1":  # a retrain is never the cached build of the shipped weights
        digest.update(b"trained\0")
    for name in sorted(file_names):
        digest.update(name.encode() + b"\0" + (PACKAGE_DIR / name).read_bytes() + b"\0")
    for item in (f"torch={torch.__version__}", *extra):
        digest.update(item.encode() + b"\0")
    return digest.hexdigest()[:16]


def cached_build(
    cache_dir: Path,
    name: str,
    seed: int,
    fingerprint: str,
    build: Callable[[Path], dict[str, Any]],
    reproducible: bool = False,
) -> Path:
    """Return the cache entry for (name, seed, fingerprint), running `build(tmp_dir)` first if it is missing.

    `build` fills the directory and returns metadata, which is written last as `reference.json`. A
    `reproducible` build (a reference that is trained, not loaded from shipped weights) runs in a child process
    with pinned kernels (`tools.reference.reproducible`), so a retrain repeats itself on the same machine.
    """
    cache_dir = Path(cache_dir)
    final = cache_dir / f"{name}-seed{seed}-{fingerprint}"
    if (final / METADATA_FILE).is_file():
        return final
    if reproducible and not in_reproducible_process():
        built = build_in_child(name, cache_dir, seed)
        if built.resolve() != final.resolve():
            raise CorruptFileError(f"the pinned build of {name!r} wrote {built}, expected {final}")
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _file_lock(cache_dir / f".{name}.lock"):
        if (final / METADATA_FILE).is_file():  # another process built it while we waited
            return final
        for stale in cache_dir.glob(f".tmp-{name}-seed*"):
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():  # an entry without metadata is not ours to trust
            shutil.rmtree(final)
        temporary = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-seed{seed}-", dir=cache_dir))
        os.chmod(temporary, 0o755)  # mkdtemp makes it private; the cache is shared
        try:
            started = time.perf_counter()
            metadata = build(temporary)
            metadata.update(
                name=name,
                seed=seed,
                fingerprint=fingerprint,
                build_seconds=round(time.perf_counter() - started, 2),
            )
            (temporary / METADATA_FILE).write_text(
                json.dumps(metadata, indent=2, sort_keys=True, default=str)
            )
            os.replace(temporary, final)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
    logger.info("built reference %s in %s", name, final, extra={"build_seconds": metadata["build_seconds"]})
    return final


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_reference_metadata(directory: Path) -> dict[str, Any]:
    """Read a built reference's `reference.json`."""
    path = Path(directory) / METADATA_FILE
    if not path.is_file():
        raise NotFoundError(f"{directory} is not a built reference (no {METADATA_FILE})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CorruptFileError(f"{path} is not valid JSON: {exc}") from None


def load_reference_module(directory: Path) -> nn.Module:
    """Rebuild a built torch reference from its architecture, config and SafeTensors weights."""
    import importlib

    from safetensors.torch import load_file

    metadata = read_reference_metadata(directory)
    if ":" not in metadata.get("architecture", "") or "safetensors" not in metadata.get("formats", {}):
        raise NotFoundError(
            f"{directory} is not a torch reference (load Hugging Face ones with transformers)"
        )
    module_name, _, class_name = metadata["architecture"].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    model = cls(**metadata["config"])
    model.load_state_dict(load_file(str(Path(directory) / metadata["formats"]["safetensors"])))
    return model.eval()


def export_reference(directory: Path, target_dir: Path) -> ExportedModel:
    """Write a built torch reference again, in every format, into `target_dir` (for tests that alter files)."""
    model = load_reference_module(directory)
    metadata = read_reference_metadata(directory)
    specs = [InputSpec.model_validate(spec) for spec in metadata["input_specs"]]
    return export_model(
        model, target_dir, metadata["architecture"], metadata["config"], specs, metadata["output_names"]
    )


def _architecture(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _build_policy(
    target: Path,
    name: str,
    seed: int,
    model_factory: Callable[[], nn.Module],
    training: TrainingConfig,
    task: ReachingConfig,
    inputs: tuple[str, ...],
) -> dict[str, Any]:
    """Load the shipped weights of a reaching policy (or train it, for a seed that does not ship), measure it
    against chance and its untrained self, and export every format."""
    with reproducible_kernels(), deterministic(training.seed, training.threads):
        model = model_factory()
        parameters = sum(parameter.numel() for parameter in model.parameters())
        evaluation = dict(
            episodes=EVAL_EPISODES, seed=EVAL_SEED, actions_per_chunk=EVAL_ACTIONS_PER_CHUNK, config=task
        )
        untrained = rollout_success(torch_policy(model, inputs), **evaluation)
        chance = rollout_success(random_policy(training.seed, task.chunk_size, task.max_step), **evaluation)

        def train() -> dict[str, Any]:
            report = train_behaviour_cloning(model, training, task, inputs)
            return {**training.as_dict(), **asdict(report)}

        provenance = weights_for(name, seed, model, train)
        started = time.perf_counter()
        trained = rollout_success(torch_policy(model, inputs), **evaluation)
        errors = action_errors(model, make_dataset(HELDOUT_SAMPLES, HELDOUT_SEED, task), inputs)
        evaluation_seconds = time.perf_counter() - started
    started = time.perf_counter()
    config = model.config.model_dump(mode="json")
    exported = export_model(
        model,
        target,
        _architecture(type(model)),
        config,
        model.input_specs(model.config),
        model.output_names(),
    )
    return {
        "architecture": exported.architecture,
        "config": config,
        "config_file": exported.config_path.name,
        "formats": {name: path.name for name, path in exported.formats.items()},
        "input_specs": [spec.model_dump(mode="json") for spec in exported.input_specs],
        "output_names": exported.output_names,
        "parameters": parameters,
        "task": asdict(task),
        "training": provenance["training"],
        "weights": {key: value for key, value in provenance.items() if key != "training"},
        "weights_sha256": provenance["weights_sha256"],
        "metrics": {
            **errors,
            "heldout_seed": HELDOUT_SEED,
            "closed_loop": {
                **trained.as_dict(),
                "seed": EVAL_SEED,
                "actions_per_chunk": EVAL_ACTIONS_PER_CHUNK,
            },
            "random_policy": chance.as_dict(),
            "untrained_policy": untrained.as_dict(),
        },
        "timings": {
            "training_seconds": (
                round(provenance["training"]["seconds"], 2) if provenance["source"] == "trained" else 0.0
            ),
            "evaluation_seconds": round(evaluation_seconds, 2),
            "export_seconds": round(time.perf_counter() - started, 2),
        },
        "torch_version": torch.__version__,
    }


def build_reference_vla(cache_dir: Path, seed: int = 0) -> Path:
    """Build (or find cached) the trained TinyVLA with its metrics and every export; return its directory."""
    training = TrainingConfig(**{**VLA_TRAINING.as_dict(), "seed": seed})
    fingerprint = source_fingerprint(
        _POLICY_SOURCES + ("vla.py",), (repr(training), _shipped_sha("vla", seed))
    )
    return cached_build(
        cache_dir,
        "vla",
        seed,
        fingerprint,
        lambda target: _build_policy(target, "vla", seed, TinyVLA, training, ReachingConfig(), POLICY_INPUTS),
        reproducible=not ships("vla", seed),
    )


def build_reference_conv_policy(cache_dir: Path, seed: int = 0) -> Path:
    """Build (or find cached) the trained ConvPolicy on the single-target task; return its directory."""
    training = TrainingConfig(**{**CONV_POLICY_TRAINING.as_dict(), "seed": seed})
    fingerprint = source_fingerprint(
        _POLICY_SOURCES + ("conv_policy.py",), (repr(training), _shipped_sha("conv_policy", seed))
    )
    return cached_build(
        cache_dir,
        "conv_policy",
        seed,
        fingerprint,
        lambda target: _build_policy(
            target, "conv_policy", seed, ConvPolicy, training, SINGLE_TARGET_TASK, CONV_POLICY_INPUTS
        ),
        reproducible=not ships("conv_policy", seed),
    )


def _shipped_sha(name: str, seed: int) -> str:
    """The shipped file's sha256 for a cache fingerprint (new shipped weights rebuild the cache entry)."""
    entry = shipped_entry(name, seed) if ships(name, seed) else None
    return f"shipped={entry['sha256'] if entry else 'none'}"


def build_hf_reference(name: str, cache_dir: Path, seed: int = 0) -> Path:
    """Build (or find cached) the tiny Hugging Face directory `name`; the entry is the model directory."""
    import transformers

    from tools.reference.hf_vla import HF_BUILDERS, build_inputs_for_hf_vla, load_hf_model, save_hf_reference

    if name not in HF_BUILDERS:
        raise NotFoundError(
            f"unknown Hugging Face reference {name!r}; known: {', '.join(sorted(HF_BUILDERS))}"
        )

    def build(target: Path) -> dict[str, Any]:
        save_hf_reference(name, target, seed=seed)
        model = load_hf_model(target)
        inputs = build_inputs_for_hf_vla(target)
        with torch.no_grad():
            model(**inputs)  # the directory must load and run before it is cached
        return {
            "architecture": type(model).__name__,
            "formats": {"hf_directory": "."},
            "model_type": model.config.model_type,
            "parameters": sum(parameter.numel() for parameter in model.parameters()),
            "example_input_shapes": {key: list(value.shape) for key, value in inputs.items()},
            "transformers_version": transformers.__version__,
        }

    fingerprint = source_fingerprint(("hf_vla.py", "build.py"), (f"transformers={transformers.__version__}",))
    return cached_build(cache_dir, name, seed, fingerprint, build)


def build_hf_archives(cache_dir: Path, seed: int = 0, source: str = "hf_llava_siglip") -> Path:
    """Build (or find cached) `.zip` and `.tar.gz` archives of a tiny Hugging Face directory."""
    import transformers

    source_dir = build_hf_reference(source, cache_dir, seed=seed)

    def build(target: Path) -> dict[str, Any]:
        paths = archive_directory(source_dir, target, stem=source)
        return {"source": source, "formats": {name: path.name for name, path in paths.items()}}

    fingerprint = source_fingerprint(
        ("hf_vla.py", "build.py", "exports.py"), (f"transformers={transformers.__version__}", source)
    )
    return cached_build(cache_dir, "hf_archives", seed, fingerprint, build)
