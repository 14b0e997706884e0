"""Unpack `.zip` / `.tar(.gz)` model archives safely inside the data directory.

No member may escape the destination (absolute paths, `..`, links, devices), and the bytes actually written
and the member count are capped while extracting, so a forged header or an archive bomb stops early. The
archive is unpacked into a temporary folder and renamed into place only when complete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import uuid
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from tools.errors import CorruptFileError, ResourceError, UnsafeFileError
from tools.log import get_logger

_CHUNK = 1024 * 1024
_log = get_logger("intake")


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps applied while unpacking: total bytes written, number of members, and compression ratio."""

    max_total_bytes: int = 32 * 1024**3
    max_files: int = 10_000
    max_ratio: float = 200.0


def unpack_archive(archive: Path, data_dir: Path, limits: ArchiveLimits | None = None) -> Path:
    """Unpack `archive` under `<data_dir>/intake/` and return the model directory inside it.

    The destination is named by the archive's sha256, so unpacking the same archive twice reuses it.
    """
    limits = limits or ArchiveLimits()
    root = Path(data_dir) / "intake"
    root.mkdir(parents=True, exist_ok=True)
    destination = root / f"archive-{file_sha256(archive)[:16]}"
    if not destination.is_dir():
        staging = root / f".staging-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            if zipfile.is_zipfile(archive):
                _extract_zip(archive, staging, limits)
            else:
                _extract_tar(archive, staging, limits)
            os.replace(staging, destination)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _log.info("unpacked archive", extra={"archive": archive.name, "destination": str(destination)})
    return _model_root(destination)


def file_sha256(path: Path) -> str:
    """Hash a file in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _model_root(destination: Path) -> Path:
    """Descend through single top-level folders (`model/`, `export/model/`) to where the files are."""
    current = destination
    while True:
        children = [c for c in current.iterdir() if not c.name.startswith(".") and c.name != "__MACOSX"]
        if len(children) == 1 and children[0].is_dir():
            current = children[0]
            continue
        return current


def _safe_member_path(name: str, staging: Path) -> Path:
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeFileError(
            f"archive member {name!r} has an absolute path", hint="archive relative paths only"
        )
    if ".." in pure.parts:
        raise UnsafeFileError(
            f"archive member {name!r} escapes the destination with '..'",
            hint="re-create the archive from inside the model directory",
        )
    target = (staging / Path(*pure.parts)).resolve() if pure.parts else staging.resolve()
    if not target.is_relative_to(staging.resolve()):
        raise UnsafeFileError(f"archive member {name!r} resolves outside the destination")
    return target


class _Budget:
    """Count members and bytes written against the limits; raise as soon as one is passed."""

    def __init__(self, archive: Path, limits: ArchiveLimits) -> None:
        self.archive = archive
        self.limits = limits
        self.files = 0
        self.written = 0
        self.compressed_size = max(archive.stat().st_size, 1)

    def add_file(self) -> None:
        self.files += 1
        if self.files > self.limits.max_files:
            raise ResourceError(
                f"{self.archive.name} holds more than {self.limits.max_files} files",
                hint="archive only the model directory",
            )

    def add_bytes(self, count: int) -> None:
        self.written += count
        if self.written > self.limits.max_total_bytes:
            raise ResourceError(
                f"{self.archive.name} unpacks to more than {self.limits.max_total_bytes} bytes; refused",
                hint="raise ROBOPT_MAX_ARCHIVE_BYTES if the model is really this large",
            )
        ratio_floor = 64 * _CHUNK  # small archives of small files may compress well; judge ratio past 64 MB
        if self.written > ratio_floor and self.written / self.compressed_size > self.limits.max_ratio:
            raise ResourceError(
                f"{self.archive.name} expands more than {self.limits.max_ratio:.0f}x its size: an archive bomb; refused"
            )


def _copy_capped(source: IO[bytes], target: Path, budget: _Budget) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        out = target.open("xb")
    except FileExistsError:
        raise UnsafeFileError(f"{budget.archive.name} holds {target.name!r} twice; refused") from None
    with out:
        for chunk in iter(lambda: source.read(_CHUNK), b""):
            budget.add_bytes(len(chunk))
            out.write(chunk)


def _extract_zip(archive: Path, staging: Path, limits: ArchiveLimits) -> None:
    budget = _Budget(archive, limits)
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            declared = sum(info.file_size for info in infos)
            if declared > limits.max_total_bytes:
                raise ResourceError(
                    f"{archive.name} declares {declared} bytes uncompressed; refused (limit "
                    f"{limits.max_total_bytes})"
                )
            for info in infos:
                target = _safe_member_path(info.filename, staging)
                mode = (info.external_attr >> 16) & 0o170000
                if mode == 0o120000:
                    raise UnsafeFileError(f"archive member {info.filename!r} is a symbolic link; refused")
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                budget.add_file()
                with zf.open(info) as source:
                    _copy_capped(source, target, budget)
    except zipfile.BadZipFile as exc:
        raise CorruptFileError(f"{archive.name} is a damaged zip archive: {exc}") from None


def _extract_tar(archive: Path, staging: Path, limits: ArchiveLimits) -> None:
    budget = _Budget(archive, limits)
    try:
        with tarfile.open(archive, mode="r:*") as tf:
            for member in tf:  # iterates lazily, one header at a time
                target = _safe_member_path(member.name, staging)
                if member.issym() or member.islnk():
                    raise UnsafeFileError(f"archive member {member.name!r} is a link; refused")
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if not member.isfile():
                    raise UnsafeFileError(
                        f"archive member {member.name!r} is a device or special file; refused"
                    )
                budget.add_file()
                source = tf.extractfile(member)
                if source is None:
                    raise CorruptFileError(f"archive member {member.name!r} cannot be read")
                with source:
                    _copy_capped(source, target, budget)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise CorruptFileError(f"{archive.name} is a damaged tar archive: {exc}") from None
