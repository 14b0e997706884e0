"""Shared fixtures: a temporary data directory, hand-built model files, and the reference-model cache."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.model_zoo import write_all_formats, write_tiny_llava

if TYPE_CHECKING:
    from tests.postgres_support import PostgresServer

REPO = Path(__file__).resolve().parents[1]
# Hypothesis (under schemathesis) keeps its files in the tests' own cache folder, not in a `.hypothesis/` at the
# repository root (the last CI's one stray; the suite reports anything left outside its folders, issue 16)
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(REPO / ".cache" / "hypothesis"))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A fresh robopt data directory for one test."""
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """TinyMLP written once per session in every torch/ONNX intake format."""
    return write_all_formats(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llava Hugging Face directory written once per session."""
    return write_tiny_llava(tmp_path_factory.mktemp("hf") / "tiny-llava")


@pytest.fixture(scope="session")
def reference_cache() -> Path:
    """Persistent cache of built reference models (gitignored), so repeated local runs skip the build."""
    path = REPO / ".cache" / "reference"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def built_vla(reference_cache: Path) -> Path:
    """The reference VLA's directory, built from its shipped weights (measured and exported once, then cached)."""
    from tools.reference import build_reference

    return build_reference("vla", reference_cache)


@pytest.fixture(scope="session")
def built_conv_policy(reference_cache: Path) -> Path:
    """The reference ConvPolicy's directory, built from its shipped weights (then cached)."""
    from tools.reference import build_reference

    return build_reference("conv_policy", reference_cache)


@pytest.fixture
def version_store(data_dir: Path) -> "VersionStore":
    """An empty version store inside the test's data directory."""
    from tools.versions import VersionStore

    return VersionStore(data_dir / "versions")


@pytest.fixture(scope="session")
def lerobot_zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small random-weight LeRobot policy directories (act, diffusion, vqbet), built once per session."""
    pytest.importorskip("lerobot", reason="the lerobot extra is not installed")
    from tests.lerobot_zoo import BUILDERS

    root = tmp_path_factory.mktemp("lerobot")
    return {name: build(root / name) for name, build in BUILDERS.items()}


@pytest.fixture(scope="session")
def lerobot_act_dir(lerobot_zoo: dict[str, Path]) -> Path:
    """A small random-weight LeRobot ACT directory (config.json, model.safetensors, processors)."""
    return lerobot_zoo["act"]


@pytest.fixture(scope="session")
def lerobot_diffusion_dir(lerobot_zoo: dict[str, Path]) -> Path:
    """A small random-weight LeRobot Diffusion Policy directory."""
    return lerobot_zoo["diffusion"]


@pytest.fixture(scope="session")
def lerobot_vqbet_dir(lerobot_zoo: dict[str, Path]) -> Path:
    """A small random-weight LeRobot VQ-BeT directory."""
    return lerobot_zoo["vqbet"]


@pytest.fixture(scope="session")
def lerobot_diffusion_ddim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Diffusion Policy sampled with DDIM in 3 steps: deterministic, so its whole path exports."""
    pytest.importorskip("lerobot", reason="the lerobot extra is not installed")
    from tests.lerobot_zoo import write_tiny_diffusion

    return write_tiny_diffusion(
        tmp_path_factory.mktemp("lerobot") / "diffusion-ddim",
        noise_scheduler_type="DDIM",
        num_inference_steps=3,
    )


@pytest.fixture(scope="session")
def lerobot_dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small LeRobotDataset (4 episodes of 20 frames) with the features of the zoo's policies."""
    pytest.importorskip("lerobot", reason="the lerobot extra is not installed")
    from tests.lerobot_zoo import write_lerobot_dataset

    return write_lerobot_dataset(tmp_path_factory.mktemp("lerobot-data") / "pick_cube")


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator["PostgresServer"]:
    """A real PostgreSQL for the session (Debian's binaries, 127.0.0.1, free port); skips without it, fails in CI."""
    from tests.postgres_support import running_postgres

    with running_postgres(tmp_path_factory.mktemp("postgres")) as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: "PostgresServer") -> Iterator[str]:
    """The `postgresql://` URL of a fresh database on the session's PostgreSQL, dropped after the test."""
    name = postgres_server.create_database()
    yield postgres_server.url(name)
    postgres_server.drop_database(name)
