"""Uploaded models: moved into `<data>/models/<id>/`, validated and profiled in a child process, then recorded.

A model is recorded only once intake has loaded it and it has been profiled and timed; any failure removes its
folder and leaves no record, so a listed model can always be optimized. Loading and profiling run through
`tools.isolation` (a corrupt file that crashes a native library, or one that hangs, fails only the upload).
The child calls `analyze_model`, whose latency measurement is its own child process: the pattern the graph's
work functions use.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import secrets
import shutil
import tempfile
import time
import unicodedata
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import JSON, Column
from sqlmodel import Field, Session, SQLModel, select

from server.history import UTCDateTime, utcnow
from server.settings import Settings
from server.uploads import MultipartUpload
from tools.errors import ChildTimeoutError, MeasurementError, NotFoundError, ValidationError
from tools.inputs import InputSpec, parse_input_spec
from tools.intake.types import LoadOptions
from tools.isolation import Limits, run_isolated_async
from tools.log import get_logger

log = get_logger("models")

MODEL_ID = re.compile(r"^mdl-[0-9a-f]{10}$")
ARCHITECTURE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")
OPTION_KEYS = ("architecture", "input_specs", "trust_pickle", "trust_remote_code")
MAX_INPUT_ELEMENTS = 1 << 28  # one input of 1 GiB in float32: far past any robotics policy's
MAX_NAME_CHARS = 128
UPLOAD_ITERATIONS = 20
UPLOAD_WARMUP = 5
UPLOAD_MEASURE_S = 5.0
LATENCY_MARGIN_S = 2.0
MODELS_HINT = "GET /api/v1/models lists the uploaded models"
OPTIONS_HINT = (
    'send options as JSON: {"architecture": "package.module:Class", "input_specs": '
    '["name:1x3x64x64:float32"], "trust_pickle": false, "trust_remote_code": false}'
)


class ModelRecord(SQLModel, table=True):
    """One uploaded model: its stored file, how intake loads it, and its measured profile."""

    __tablename__ = "models"

    id: str = Field(primary_key=True, description="'mdl-' and 10 hex digits.")
    name: str
    filename: str = Field(description="The sanitized uploaded filename.")
    format: str = Field(description="What intake detected (for an archive: the format inside).")
    size_bytes: int
    sha256: str = Field(index=True)
    path: str = Field(description="Absolute path of the model file or directory in <data>/models/<id>/.")
    options: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False), description="LoadOptions, dumped."
    )
    params: int
    profile: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False), description="ModelProfile, dumped."
    )
    created: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)


def parse_load_options(text: str | None, *, config_path: Path | None, allow_trusted: bool) -> LoadOptions:
    """Read an upload's `options` form field (JSON) into LoadOptions; refuse unknown keys and untrusted flags."""
    raw: Any = {}
    if text is not None and text.strip():
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValidationError(f"options is not valid JSON: {exc}", hint=OPTIONS_HINT) from None
    if not isinstance(raw, dict):
        raise ValidationError(f"options must be a JSON object, got {type(raw).__name__}", hint=OPTIONS_HINT)
    unknown = sorted(set(raw) - set(OPTION_KEYS))
    if unknown:
        raise ValidationError(
            f"unknown options {', '.join(map(repr, unknown))}; known: {', '.join(OPTION_KEYS)}",
            hint=OPTIONS_HINT,
        )
    trusted = [key for key in ("trust_pickle", "trust_remote_code") if _flag(raw, key)]
    if trusted and not allow_trusted:
        raise ValidationError(
            f"{' and '.join(trusted)} refused: loading such a file could run code on the server",
            hint="the server's operator can allow it with ROBOPT_ALLOW_TRUSTED_LOADS=true; otherwise upload "
            "ONNX, TorchScript, a state dict or safetensors with an architecture",
        )
    return LoadOptions(
        architecture=_architecture(raw.get("architecture")),
        config_path=config_path,
        trust_pickle=_flag(raw, "trust_pickle"),
        trust_remote_code=_flag(raw, "trust_remote_code"),
        input_specs=_input_specs(raw.get("input_specs")),
    )


def _flag(raw: dict[str, Any], key: str) -> bool:
    """A boolean option (false when absent); anything else is refused."""
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise ValidationError(f"options.{key} must be true or false, got {value!r}", hint=OPTIONS_HINT)
    return value


def _architecture(value: Any) -> str | None:
    """`package.module:Class`, or None."""
    if value is None:
        return None
    if not isinstance(value, str) or not ARCHITECTURE.match(value.strip()):
        raise ValidationError(
            f"options.architecture {value!r} is not of the form package.module:Class", hint=OPTIONS_HINT
        )
    return value.strip()


def _input_specs(value: Any) -> tuple[InputSpec, ...]:
    """Parse `["name:1x8:float32", ...]`, naming the entry that is wrong."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValidationError(
            f"options.input_specs must be a list of strings, got {type(value).__name__}", hint=OPTIONS_HINT
        )
    specs: list[InputSpec] = []
    for index, text in enumerate(value):
        if not isinstance(text, str):
            raise ValidationError(
                f"options.input_specs[{index}] must be a string like 'state:1x8:float32', got {text!r}",
                hint=OPTIONS_HINT,
            )
        try:
            spec = parse_input_spec(text)
        except ValidationError as exc:
            raise ValidationError(f"options.input_specs[{index}]: {exc.message}", hint=exc.hint) from None
        if spec.name in {s.name for s in specs}:
            raise ValidationError(
                f"options.input_specs names input {spec.name!r} twice", hint="give each input once"
            )
        if _elements(spec.shape) > MAX_INPUT_ELEMENTS:
            raise ValidationError(
                f"options.input_specs[{index}] {text!r} has more than {MAX_INPUT_ELEMENTS} elements",
                hint="give the batch-1 shape the model really takes",
            )
        specs.append(spec)
    return tuple(specs)


def _elements(shape: tuple[int, ...]) -> int:
    """Number of elements of a shape."""
    count = 1
    for dim in shape:
        count *= dim
    return count


def profile_uploaded_model(
    data_dir: str,
    path: str,
    options: dict[str, Any],
    threads: int,
    warmup: int,
    iterations: int,
    time_limit_s: float,
    max_archive_bytes: int,
    max_archive_files: int,
) -> dict[str, Any]:
    """Load and profile an uploaded model, with measured batch-1 latency (runs in an isolated child).

    Returns JSON-ready values: the detected format, the load options with the input specs intake settled on,
    and the profile. Temporary files of this child and of its latency child go to `<data>/work/tmp`.
    """
    from tools.intake import ArchiveLimits, load_model
    from tools.profiling import analyze_model

    started = time.monotonic()
    root = Path(data_dir)
    scratch = root / "work" / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    os.environ["TMPDIR"] = str(scratch)  # inherited by the latency child
    tempfile.tempdir = None
    limits = ArchiveLimits(max_total_bytes=max_archive_bytes, max_files=max_archive_files)
    loaded = load_model(Path(path), LoadOptions.model_validate(options), root, limits)
    left_s = time_limit_s - (time.monotonic() - started) - LATENCY_MARGIN_S
    if left_s < 1.0:
        raise ChildTimeoutError(
            f"loading {Path(path).name} took most of the {time_limit_s:g} s limit; no time was left to profile it",
            hint="raise ROBOPT_LATENCY_TIMEOUT_S on the server, or upload a smaller model",
        )
    try:
        profile = analyze_model(
            loaded,
            latency=True,
            threads=threads,
            warmup=warmup,
            iterations=iterations,
            max_measure_s=UPLOAD_MEASURE_S,
            timeout_s=left_s,
            data_dir=root,
        )
    except MeasurementError as exc:
        if "timeout_s" not in exc.detail:
            raise
        raise ChildTimeoutError(  # a model too slow for the limit is the input's limit, not a robopt failure
            exc.message, hint="raise ROBOPT_LATENCY_TIMEOUT_S on the server, or upload a smaller model"
        ) from None
    settled = loaded.options.model_copy(update={"input_specs": tuple(loaded.input_specs)})
    return {
        "format": loaded.format.value,
        "options": settled.model_dump(mode="json"),
        "profile": profile.model_dump(mode="json"),
    }


class ModelRegistry:
    """Uploaded models on disk under `<data>/models/` and in the `models` table; methods other than `add` are
    synchronous (async callers use `asyncio.to_thread`)."""

    def __init__(self, engine: sa.Engine, data_dir: Path, settings: Settings) -> None:
        """Use `engine` (the history DB's) and create the `models` table when missing."""
        self.engine = engine
        self.data_dir = Path(data_dir).resolve()
        self.settings = settings
        self.models_dir = self.data_dir / "models"
        self.uploads_dir = self.data_dir / "uploads"
        ModelRecord.__table__.create(engine, checkfirst=True)

    def staging_dir(self) -> Path:
        """A fresh folder under `<data>/uploads/` for one upload's files."""
        self.uploads_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="upload-", dir=self.uploads_dir))

    async def add(self, upload: MultipartUpload, *, name: str | None, options: LoadOptions) -> ModelRecord:
        """Store the upload's `file` (and `config`), load and profile it in a child process, and record it.

        On any failure (corrupt or unsafe file, time limit, cancellation) the model's folder and the staging
        folder are removed, no record is written, and the error is raised unchanged.
        """
        stored = upload.files.get("file")
        try:
            if stored is None:
                raise ValidationError(
                    "the upload holds no model in the form field 'file'",
                    hint="send it as `-F file=@model.onnx`",
                )
            label = _model_name(name, stored.filename)
        except ValidationError:
            self._discard_staging(upload)
            raise
        model_id, model_dir = self._new_model_dir()
        unpacked = self.data_dir / "intake" / f"archive-{stored.sha256[:16]}"
        unpacked_before = unpacked.exists()
        started = time.monotonic()
        insert: asyncio.Future[None] | None = None
        try:
            model_path = model_dir / stored.filename
            await _move(stored.path, model_path)
            config = upload.files.get("config")
            if config is not None:
                (model_dir / "config").mkdir()
                config_path = model_dir / "config" / config.filename
                await _move(config.path, config_path)
                options = options.model_copy(update={"config_path": config_path})
            result = await run_isolated_async(
                "server.model_registry:profile_uploaded_model",
                {
                    "data_dir": str(self.data_dir),
                    "path": str(model_path),
                    "options": options.model_dump(mode="json"),
                    "threads": self.settings.latency_threads,
                    "warmup": min(self.settings.latency_warmup, UPLOAD_WARMUP),
                    "iterations": min(self.settings.latency_iterations, UPLOAD_ITERATIONS),
                    "time_limit_s": self.settings.latency_timeout_s,
                    "max_archive_bytes": self.settings.max_archive_bytes,
                    "max_archive_files": self.settings.max_archive_files,
                },
                limits=Limits(
                    time_s=self.settings.latency_timeout_s,
                    memory_mb=self.settings.attempt_memory_mb,
                    threads=self.settings.latency_threads,
                ),
                job_id=model_id,
                scratch_dir=self.data_dir / "work",
            )
            record = ModelRecord(
                id=model_id,
                name=label,
                filename=stored.filename,
                format=result["format"],
                size_bytes=stored.size,
                sha256=stored.sha256,
                path=str(model_path),
                options=result["options"],
                params=int(result["profile"]["parameters"]),
                profile=result["profile"],
            )
            insert = asyncio.ensure_future(asyncio.to_thread(self._insert, record))
            await asyncio.shield(insert)
        except BaseException as exc:
            if insert is not None:
                await asyncio.wait({insert})  # a write still in flight lands first, then is undone
                if not insert.cancelled() and insert.exception() is None:
                    self._delete_record(model_id)
            shutil.rmtree(model_dir, ignore_errors=True)
            if not unpacked_before:
                self._remove_unpacked(stored.sha256, except_id=model_id)
            self._discard_staging(upload)
            log.warning(
                "model upload refused",
                extra={"component": "models", "model_id": model_id, "error": getattr(exc, "code", repr(exc))},
            )
            raise
        self._discard_staging(upload)
        log.info(
            "model added",
            extra={
                "component": "models",
                "model_id": model_id,
                "format": record.format,
                "params": record.params,
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        return record

    def get(self, model_id: str) -> ModelRecord:
        """The model with this id (NotFoundError when there is none)."""
        record = None
        if MODEL_ID.match(model_id):
            with Session(self.engine, expire_on_commit=False) as session:
                record = session.get(ModelRecord, model_id)
        if record is None:
            raise NotFoundError(f"no model with id {model_id!r}", hint=MODELS_HINT)
        return record

    def list(self) -> list[ModelRecord]:
        """Every uploaded model, newest first."""
        with Session(self.engine, expire_on_commit=False) as session:
            query = select(ModelRecord).order_by(ModelRecord.created.desc(), ModelRecord.id.desc())
            return list(session.exec(query).all())

    def delete(self, model_id: str) -> None:
        """Delete a model's record and its files (NotFoundError when unknown)."""
        record = self.get(model_id)
        if not self._delete_record(record.id):
            raise NotFoundError(f"no model with id {model_id!r}", hint=MODELS_HINT)
        shutil.rmtree(self.models_dir / record.id, ignore_errors=True)
        self._remove_unpacked(record.sha256, except_id=record.id)
        log.info("model deleted", extra={"component": "models", "model_id": record.id})

    def load_options(self, record: ModelRecord) -> LoadOptions:
        """How intake loads this model (with the input specs found at upload)."""
        return LoadOptions.model_validate(record.options)

    def purge_orphans(self) -> list[Path]:
        """Remove staging folders and model folders without a record (left by a crash); call at start-up."""
        removed: list[Path] = []
        known = {record.id for record in self.list()}
        for folder in (self.uploads_dir, self.models_dir):
            if not folder.is_dir():
                continue
            for child in folder.iterdir():
                if folder == self.models_dir and child.name in known:
                    continue
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
                removed.append(child)
        return removed

    def _new_model_dir(self) -> tuple[str, Path]:
        """A fresh id and its empty folder."""
        self.models_dir.mkdir(parents=True, exist_ok=True)
        while True:
            model_id = f"mdl-{secrets.token_hex(5)}"
            try:
                (self.models_dir / model_id).mkdir()
            except FileExistsError:
                continue
            return model_id, self.models_dir / model_id

    def _insert(self, record: ModelRecord) -> None:
        """Write one record."""
        with Session(self.engine, expire_on_commit=False) as session:
            session.add(record)
            session.commit()
            session.refresh(record)

    def _delete_record(self, model_id: str) -> bool:
        """Delete one record; False when it was already gone."""
        with Session(self.engine) as session:
            row = session.get(ModelRecord, model_id)
            if row is None:
                return False
            session.delete(row)
            session.commit()
            return True

    def _remove_unpacked(self, sha256: str, *, except_id: str) -> None:
        """Remove the unpacked copy of an archive unless another model was uploaded from the same archive."""
        unpacked = self.data_dir / "intake" / f"archive-{sha256[:16]}"
        if not unpacked.exists():
            return
        with Session(self.engine) as session:
            query = select(ModelRecord.id).where(ModelRecord.sha256 == sha256, ModelRecord.id != except_id)
            if session.exec(query).first() is not None:
                return
        shutil.rmtree(unpacked, ignore_errors=True)

    def _discard_staging(self, upload: MultipartUpload) -> None:
        """Remove the staging folders of an upload's files (only those under `<data>/uploads/`)."""
        for stored in upload.files.values():
            folder = Path(stored.path).resolve().parent
            if folder.is_relative_to(self.uploads_dir) and folder != self.uploads_dir:
                shutil.rmtree(folder, ignore_errors=True)


async def _move(source: Path, target: Path) -> None:
    """Move a staged file into a model folder: a rename, atomic and instant (so a cancellation cannot race a
    half-done move); a copy in a worker thread only when uploads/ and models/ are on different filesystems."""
    try:
        os.replace(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        await asyncio.to_thread(shutil.move, source, target)


def _model_name(name: str | None, filename: str) -> str:
    """The model's display name: the given one, else the filename without its extensions."""
    text = (name or "").strip() or filename.split(".")[0] or filename
    if len(text) > MAX_NAME_CHARS or any(unicodedata.category(ch)[0] == "C" for ch in text):
        raise ValidationError(
            f"model name {text[:40]!r} is longer than {MAX_NAME_CHARS} characters or holds control characters",
            hint="give a short, plain name",
        )
    return text
