"""The version store keeps immutable, verifiable versions with lineage; nothing is overwritten or half-written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tools.errors import IntegrityError, NotFoundError, ValidationError
from tools.versions import VersionStore


@pytest.fixture
def store(data_dir: Path) -> VersionStore:
    return VersionStore(data_dir / "versions")


def _file(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def test_save_records_manifest_with_hash_size_and_lineage(store: VersionStore, tmp_path: Path) -> None:
    original = store.save(
        "job-1", _file(tmp_path, "model.onnx", b"fp32" * 100), technique="intake", format="onnx"
    )
    child = store.save(
        "job-1",
        _file(tmp_path, "model_int8.onnx", b"i8" * 10),
        technique="ort_int8_dynamic",
        format="onnx",
        parent=original.id,
        params={"per_channel": True},
        metrics={"p50_ms": 1.5},
    )
    assert (original.id, child.id) == ("v0001", "v0002")
    assert child.size_bytes == 20 and original.size_bytes == 400
    assert [m.id for m in store.lineage("job-1", child.id)] == ["v0001", "v0002"]
    on_disk = json.loads((store.root / "job-1" / "v0002" / "manifest.json").read_text())
    assert on_disk["parent"] == "v0001" and on_disk["params"] == {"per_channel": True}
    assert store.ref("job-1", "v0002").sha256 == child.sha256 != original.sha256


def test_directory_artifacts_hash_their_content(store: VersionStore, tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"x" * 64)
    saved = store.save("job-2", folder, technique="intake", format="hf_directory")
    assert saved.size_bytes == 66
    store.verify("job-2", saved.id)
    stored = store.artifact_path("job-2", saved.id) / "model.safetensors"
    os.chmod(stored, 0o644)
    stored.write_bytes(b"y" * 64)
    with pytest.raises(IntegrityError, match="modified"):
        store.verify("job-2", saved.id)


def test_versions_are_never_overwritten(store: VersionStore, tmp_path: Path) -> None:
    source = _file(tmp_path, "m.pt", b"a")
    first = store.save("job", source, technique="intake", format="torch_state_dict")
    source.write_bytes(b"b")
    second = store.save("job", source, technique="intake", format="torch_state_dict")
    assert first.id != second.id
    assert store.artifact_path("job", first.id).read_bytes() == b"a"
    assert store.artifact_path("job", first.id).stat().st_mode & 0o222 == 0


def test_failed_save_leaves_no_half_written_version(
    store: VersionStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _file(tmp_path, "m.onnx", b"abc")
    store.save("job", source, technique="intake", format="onnx")

    def fail(_path: Path) -> str:
        raise OSError("disk full")

    monkeypatch.setattr("tools.versions.artifact_sha256", fail)
    with pytest.raises(OSError, match="disk full"):
        store.save("job", source, technique="fp16", format="onnx", parent="v0001")
    assert [p.name for p in (store.root / "job").iterdir()] == ["v0001"]
    assert [m.id for m in store.list("job")] == ["v0001"]


def test_unknown_version_and_parent_are_refused(store: VersionStore, tmp_path: Path) -> None:
    source = _file(tmp_path, "m.onnx", b"abc")
    with pytest.raises(NotFoundError, match="v0009"):
        store.save("job", source, technique="x", format="onnx", parent="v0009")
    with pytest.raises(NotFoundError, match="versions: none"):
        store.get("job", "v0001")


def test_ids_cannot_escape_the_store(store: VersionStore, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="invalid job id"):
        store.save("../outside", _file(tmp_path, "m.onnx", b"abc"), technique="intake", format="onnx")
    assert not (store.root.parent / "outside").exists()


def test_delete_job_is_explicit(store: VersionStore, tmp_path: Path) -> None:
    store.save("job", _file(tmp_path, "m.onnx", b"abc"), technique="intake", format="onnx")
    with pytest.raises(ValidationError, match="confirm=True"):
        store.delete_job("job")
    assert store.jobs() == ["job"]
    assert store.delete_job("job", confirm=True) == 1
    assert store.jobs() == []
