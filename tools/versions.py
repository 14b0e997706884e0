"""The version store: immutable model versions under `<data>/versions/<job>/<version>/`.

Each version holds its artifact (a file or a directory) and `manifest.json` (id, parent, technique, params,
sha256, size, metrics, created). A version is written into a staging folder and renamed into place only when
complete, so a crash leaves no half-written version; files are made read-only; nothing is ever overwritten.
Rollback is a pointer move in the graph state: the store only adds versions, and deletes a job when asked.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tools.errors import IntegrityError, NotFoundError, ValidationError
from tools.intake.archive import file_sha256
from tools.log import get_logger

MANIFEST = "manifest.json"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_log = get_logger("versions")


class ArtifactRef(BaseModel):
    """What the graph state keeps of a version: enough to find and verify it, never the model itself."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    version_id: str
    path: Path = Field(description="The artifact: a file or a directory inside the version folder.")
    sha256: str
    format: str


class VersionManifest(BaseModel):
    """The record of one immutable version, stored as `manifest.json` beside its artifact."""

    model_config = ConfigDict(frozen=True)

    id: str
    job_id: str
    parent: str | None = Field(
        default=None, description="Version this one was derived from; None for the original."
    )
    technique: str = Field(description="What produced it: 'intake' for the original, else a technique name.")
    params: dict[str, Any] = Field(default_factory=dict)
    artifact: str = Field(description="Artifact name inside the version folder.")
    format: str
    sha256: str = Field(
        description="sha256 of the artifact file, or of the sorted (path, hash) list of a directory."
    )
    size_bytes: int
    metrics: dict[str, Any] = Field(default_factory=dict)
    load_options: dict[str, Any] = Field(
        default_factory=dict,
        description="`tools.intake.LoadOptions` (as JSON) that load this artifact: input specs, trust flags.",
    )
    created: datetime


def artifact_sha256(path: Path) -> str:
    """Hash a file, or a directory as the sorted list of its files' relative paths and hashes."""
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for child in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{child.relative_to(path).as_posix()}\0{file_sha256(child)}\n".encode())
    return digest.hexdigest()


def artifact_size(path: Path) -> int:
    """Bytes of a file, or of every file in a directory."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class VersionStore:
    """Save, get, list, trace and verify immutable model versions of each job."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def save(
        self,
        job_id: str,
        artifact: Path,
        *,
        technique: str,
        format: str,
        parent: str | None = None,
        params: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        load_options: dict[str, Any] | None = None,
        move: bool = False,
    ) -> VersionManifest:
        """Store `artifact` as the job's next version and return its manifest; `move` takes the file instead of copying."""
        _check_id(job_id, "job id")
        source = Path(artifact)
        if not source.exists():
            raise NotFoundError(f"artifact to store does not exist: {source}")
        job_dir = self.root / job_id
        if parent is not None:
            self.get(job_id, parent)
        job_dir.mkdir(parents=True, exist_ok=True)
        staging = job_dir / f".staging-{uuid.uuid4().hex}"
        staging.mkdir()
        claimed: Path | None = None
        try:
            target = staging / source.name
            if move:
                shutil.move(str(source), target)
            elif source.is_dir():
                shutil.copytree(source, target)
            else:
                shutil.copy2(source, target)
            version_id = self._claim_next_id(job_dir)
            claimed = job_dir / version_id
            manifest = VersionManifest(
                id=version_id,
                job_id=job_id,
                parent=parent,
                technique=technique,
                params=dict(params or {}),
                artifact=source.name,
                format=format,
                sha256=artifact_sha256(target),
                size_bytes=artifact_size(target),
                metrics=dict(metrics or {}),
                load_options=dict(load_options or {}),
                created=datetime.now(timezone.utc),
            )
            (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2))
            _make_read_only(staging)
            os.replace(staging, claimed)
        except BaseException:
            _remove_tree(staging)
            if claimed is not None and claimed.is_dir() and not any(claimed.iterdir()):
                claimed.rmdir()
            raise
        _log.info(
            "stored version", extra={"job_id": job_id, "version_id": version_id, "technique": technique}
        )
        return manifest

    def _claim_next_id(self, job_dir: Path) -> str:
        """Reserve the next `vNNNN` by creating its (empty) folder: mkdir is atomic, so two writers never share one.

        The complete staging folder later replaces the empty one in a single rename.
        """
        while True:
            existing = [int(p.name[1:]) for p in job_dir.iterdir() if re.fullmatch(r"v\d{4,}", p.name)]
            version_id = f"v{(max(existing) + 1) if existing else 1:04d}"
            try:
                (job_dir / version_id).mkdir()
                return version_id
            except FileExistsError:
                continue

    def get(self, job_id: str, version_id: str) -> VersionManifest:
        """Return a version's manifest, or raise NotFoundError listing the job's versions."""
        _check_id(job_id, "job id")
        _check_id(version_id, "version id")
        path = self.root / job_id / version_id / MANIFEST
        if not path.is_file():
            known = ", ".join(m.id for m in self.list(job_id)) or "none"
            raise NotFoundError(f"version {version_id!r} of job {job_id!r} not found (versions: {known})")
        return VersionManifest.model_validate_json(path.read_text())

    def artifact_path(self, job_id: str, version_id: str) -> Path:
        """Path of a version's artifact."""
        return self.root / job_id / version_id / self.get(job_id, version_id).artifact

    def ref(self, job_id: str, version_id: str) -> ArtifactRef:
        """The state-sized reference to a version."""
        manifest = self.get(job_id, version_id)
        return ArtifactRef(
            job_id=job_id,
            version_id=version_id,
            path=self.artifact_path(job_id, version_id),
            sha256=manifest.sha256,
            format=manifest.format,
        )

    def list(self, job_id: str) -> list[VersionManifest]:
        """Every complete version of a job, oldest first (staging folders are invisible)."""
        job_dir = self.root / job_id
        if not job_dir.is_dir():
            return []
        manifests = [
            VersionManifest.model_validate_json((p / MANIFEST).read_text())
            for p in sorted(job_dir.iterdir())
            if (p / MANIFEST).is_file() and not p.name.startswith(".")
        ]
        return sorted(manifests, key=lambda m: m.id)

    def jobs(self) -> list[str]:
        """Job ids that have at least one version."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.list(p.name))

    def lineage(self, job_id: str, version_id: str) -> list[VersionManifest]:
        """The chain from the original version to `version_id`, original first."""
        chain: list[VersionManifest] = []
        current: str | None = version_id
        while current is not None:
            manifest = self.get(job_id, current)
            if any(m.id == manifest.id for m in chain):
                raise IntegrityError(f"version lineage of {job_id}/{version_id} has a cycle at {manifest.id}")
            chain.append(manifest)
            current = manifest.parent
        return list(reversed(chain))

    def verify(self, job_id: str, version_id: str) -> VersionManifest:
        """Recompute the artifact's hash; raise IntegrityError if it no longer matches the manifest."""
        manifest = self.get(job_id, version_id)
        actual = artifact_sha256(self.artifact_path(job_id, version_id))
        if actual != manifest.sha256:
            raise IntegrityError(
                f"version {job_id}/{version_id} was modified: sha256 {actual[:12]}… != recorded {manifest.sha256[:12]}…",
                hint="versions are immutable; restore the file or discard the job",
            )
        return manifest

    def delete_job(self, job_id: str, *, confirm: bool = False) -> int:
        """Delete every version of a job; only with `confirm=True`. Return the number of versions removed."""
        if not confirm:
            raise ValidationError(f"deleting job {job_id!r} removes all its versions; call with confirm=True")
        count = len(self.list(job_id))
        job_dir = self.root / job_id
        _check_id(job_id, "job id")
        if job_dir.is_dir():
            _remove_tree(job_dir)
        return count


def _check_id(value: str, what: str) -> None:
    if not _ID_RE.match(value or ""):
        raise ValidationError(
            f"invalid {what} {value!r}: use letters, digits, '_', '-', '.' (no path separators)"
        )


def _make_read_only(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        if path.is_file():
            path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)


def _remove_tree(root: Path) -> None:
    """Remove a folder; its files may be read-only, which does not matter since folders stay writable."""
    shutil.rmtree(root, ignore_errors=False)
