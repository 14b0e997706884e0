"""The reference registry and build cache: unknown names, atomic entries, rebuilds on changed sources."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.errors import NotFoundError
from tools.reference import REFERENCE_MODELS, build_reference
from tools.reference.build import METADATA_FILE, cached_build, source_fingerprint


def test_unknown_reference_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError) as caught:
        build_reference("openvla-7b", tmp_path)
    assert all(name in caught.value.message for name in REFERENCE_MODELS)
    assert {"vla", "conv_policy", "hf_llava_siglip", "hf_smolvlm", "hf_paligemma"} <= set(REFERENCE_MODELS)
    assert not list(tmp_path.iterdir())


def test_build_runs_once_and_is_reused(tmp_path: Path) -> None:
    calls: list[Path] = []

    def build(target: Path) -> dict:
        calls.append(target)
        (target / "weights.bin").write_bytes(b"1234")
        return {"formats": {"raw": "weights.bin"}}

    first = cached_build(tmp_path, "toy", 0, "abc", build)
    second = cached_build(tmp_path, "toy", 0, "abc", build)
    assert first == second == tmp_path / "toy-seed0-abc" and len(calls) == 1
    assert (first / "weights.bin").read_bytes() == b"1234" and (first / METADATA_FILE).is_file()
    assert cached_build(tmp_path, "toy", 0, "def", build) != first and len(calls) == 2
    assert cached_build(tmp_path, "toy", 1, "abc", build) != first and len(calls) == 3


def test_failed_or_killed_build_leaves_no_entry(tmp_path: Path) -> None:
    def broken(target: Path) -> dict:
        (target / "half.bin").write_bytes(b"12")
        raise RuntimeError("killed halfway")

    with pytest.raises(RuntimeError):
        cached_build(tmp_path, "toy", 0, "abc", broken)
    assert not (tmp_path / "toy-seed0-abc").exists() and not list(tmp_path.glob(".tmp-*"))

    stale = tmp_path / ".tmp-toy-seed0-leftover"  # what a SIGKILLed build leaves behind
    stale.mkdir()
    (tmp_path / "toy-seed0-abc").mkdir()  # an entry without reference.json is never trusted
    entry = cached_build(tmp_path, "toy", 0, "abc", lambda target: {})
    assert (entry / METADATA_FILE).is_file() and not stale.exists()


def test_fingerprint_follows_sources_and_versions() -> None:
    base = source_fingerprint(("reaching.py", "vla.py"))
    assert base == source_fingerprint(("vla.py", "reaching.py")) and len(base) == 16
    assert base != source_fingerprint(("reaching.py", "vla.py"), ("steps=1",))
    assert base != source_fingerprint(("reaching.py",))
