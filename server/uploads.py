"""Stream a multipart/form-data upload straight to files in the data directory, under a size cap.

Starlette's `request.form()` spools file parts to the system's temp folder; robopt writes nothing outside its
data directory, so the service parses the body itself with python-multipart's push parser. The parser and the
disk writes run in a worker thread, one block of about 1 MiB at a time, so the event loop stays free. Every
byte counts against the cap; past it, or on any error or cancellation, what was written is removed.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import threading
import unicodedata
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart.multipart import MultipartParseError, MultipartParser, parse_options_header

from server.errors import UploadTooLargeError
from tools.errors import ResourceError, ValidationError, first_line
from tools.log import get_logger

log = get_logger("uploads")

FEED_BYTES = 1024 * 1024
MAX_TEXT_FIELDS = 64
MAX_FILENAME_BYTES = 200
SIZE_HINT = "send a smaller file, or raise ROBOPT_MAX_UPLOAD_BYTES on the server"
FORM_HINT = "send multipart/form-data, e.g. `curl -F file=@model.onnx -F name=my-model URL`"
_UNSAFE_CHARS = re.compile(r'[<>:"|?*\x00-\x1f\x7f]')


@dataclass(frozen=True)
class StoredFile:
    """One uploaded file as stored on disk: where, its sanitized name, its size and its sha256."""

    path: Path
    filename: str
    size: int
    sha256: str


@dataclass(frozen=True)
class MultipartUpload:
    """What a multipart upload held: stored files by form field, and the text fields."""

    files: dict[str, StoredFile] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)


def check_content_length(headers: Mapping[str, str], max_bytes: int) -> None:
    """Refuse a request whose Content-Length already says it is past the upload cap (before reading it)."""
    value = headers.get("content-length")
    if value is None:
        return
    try:
        length = int(value)
    except ValueError:
        raise ValidationError(
            f"Content-Length {value!r} is not a number", hint="send a valid Content-Length header"
        ) from None
    if length > max_bytes:
        raise UploadTooLargeError(
            f"upload of {length} bytes is past the limit of {max_bytes} bytes",
            hint=SIZE_HINT,
            detail={"content_length": length, "max_bytes": max_bytes},
        )


def sanitize_filename(raw: str) -> str:
    """Return a safe base name for an uploaded file: no directories, `..`, control or reserved characters.

    The extension is kept (`model.tar.gz`); an empty result means the name cannot be used.
    """
    name = unicodedata.normalize("NFC", raw).replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")  # control, format, unassigned
    name = _UNSAFE_CHARS.sub("_", name).strip().lstrip(".").strip()
    if not name.strip("._ "):
        return ""
    while len(name.encode()) > MAX_FILENAME_BYTES:
        stem, dot, suffix = name.partition(".")
        name = (stem[:-1] + dot + suffix) if len(stem) > 1 else name[1:]
    return name


async def receive_multipart(
    chunks: AsyncIterator[bytes],
    content_type: str,
    destination: Path,
    *,
    max_bytes: int,
    file_fields: Collection[str],
    max_field_bytes: int = 65536,
    block_bytes: int = FEED_BYTES,
) -> MultipartUpload:
    """Parse a multipart/form-data body as it arrives, writing each file part to `destination/<filename>`.

    Counts every byte against `max_bytes` (UploadTooLargeError past it) and hashes files while writing. On any
    error, including cancellation when the client goes away, removes what it wrote and re-raises.
    The parser and the writes run in a worker thread once `block_bytes` have arrived (and at the end).
    """
    if max_bytes <= 0:
        raise ValidationError(
            f"max_bytes must be positive, got {max_bytes}", hint="check ROBOPT_MAX_UPLOAD_BYTES"
        )
    boundary = _boundary(content_type)
    destination = Path(destination).resolve()
    created = not destination.exists()
    destination.mkdir(parents=True, exist_ok=True)
    sink = _PartSink(destination, frozenset(file_fields), max_field_bytes)
    parser = MultipartParser(boundary, sink.callbacks())
    received = 0
    pending = bytearray()
    try:
        async for chunk in chunks:
            received += len(chunk)
            if received > max_bytes:
                raise UploadTooLargeError(
                    f"upload is past the limit of {max_bytes} bytes (received {received} so far); "
                    "what was received is deleted",
                    hint=SIZE_HINT,
                    detail={"received_bytes": received, "max_bytes": max_bytes},
                )
            pending += chunk
            if len(pending) >= block_bytes:
                block = bytes(pending)
                pending.clear()
                await asyncio.to_thread(sink.feed, parser, block)
        if pending:
            await asyncio.to_thread(sink.feed, parser, bytes(pending))
        upload = sink.finish()
    except BaseException:
        sink.discard(destination if created else None)
        raise
    log.info(
        "upload received",
        extra={
            "component": "uploads",
            "bytes": received,
            "files": {name: stored.size for name, stored in upload.files.items()},
        },
    )
    return upload


def _boundary(content_type: str) -> bytes:
    """The multipart boundary of a Content-Type header; ValidationError when it is not multipart/form-data."""
    kind, params = parse_options_header(content_type or "")
    if kind != b"multipart/form-data":
        raise ValidationError(
            f"content type {content_type or '(none)'!r} is not multipart/form-data", hint=FORM_HINT
        )
    boundary = params.get(b"boundary", b"")
    if not boundary or len(boundary) > 200:
        raise ValidationError(
            f"content type {content_type!r} has no usable boundary parameter",
            hint="let the HTTP client build the multipart body and its Content-Type header",
        )
    return boundary


class _PartSink:
    """python-multipart callbacks that write file parts to disk and collect text fields.

    `feed`, `finish` and `discard` take one lock: a block fed from a worker thread is finished before an
    abort removes the files, so nothing is written after the cleanup.
    """

    def __init__(self, destination: Path, file_fields: frozenset[str], max_field_bytes: int) -> None:
        self.destination = destination
        self.file_fields = file_fields
        self.max_field_bytes = max_field_bytes
        self.lock = threading.Lock()
        self.aborted = False
        self.ended = False
        self.error: BaseException | None = None
        self.header_field = bytearray()
        self.header_value = bytearray()
        self.headers: dict[str, bytes] = {}
        self.part_name: str | None = None
        self.part_text: bytearray | None = None
        self.part_handle: IO[bytes] | None = None
        self.part_hash: "hashlib._Hash | None" = None
        self.part_size = 0
        self.part_filename = ""
        self.written: list[Path] = []
        self.files: dict[str, StoredFile] = {}
        self.fields: dict[str, str] = {}

    def callbacks(self) -> dict[str, Callable[..., None]]:
        """The callback table for MultipartParser."""
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def feed(self, parser: MultipartParser, block: bytes) -> None:
        """Parse one block of the body (in a worker thread); raise what a callback raised."""
        with self.lock:
            if self.aborted:
                raise ValidationError("the upload was aborted")
            if self.ended:
                return  # the epilogue after the closing boundary is ignored
            try:
                parser.write(block)
            except MultipartParseError as exc:
                raise self.error or ValidationError(
                    f"malformed multipart body: {first_line(exc)}", hint=FORM_HINT
                ) from None
            except OSError as exc:
                raise _disk_error(exc) from None
            if self.error is not None:
                raise self.error

    def finish(self) -> MultipartUpload:
        """Check the body ended properly and held a file; return what was stored."""
        with self.lock:
            if not self.ended:
                raise ValidationError(
                    "malformed multipart body: it ended before the closing boundary",
                    hint="the upload was cut short; send it again",
                )
            if not self.files:
                raise ValidationError(
                    f"the upload holds no file in {' or '.join(sorted(self.file_fields))}",
                    hint=f"send the model as a file part, e.g. `-F {min(self.file_fields, default='file')}=@model.onnx`",
                )
            return MultipartUpload(files=dict(self.files), fields=dict(self.fields))

    def discard(self, remove_dir: Path | None) -> None:
        """Close and delete every file written (and `remove_dir` when this upload created it)."""
        with self.lock:
            self.aborted = True
            if self.part_handle is not None:
                self.part_handle.close()
                self.part_handle = None
            for path in self.written:
                path.unlink(missing_ok=True)
            if remove_dir is not None:
                shutil.rmtree(remove_dir, ignore_errors=True)

    # --- callbacks (run inside parser.write, in the worker thread) -------------------------------------------

    def _fail(self, error: ValidationError) -> None:
        """Record the first error and stop the parser (python-multipart has no other way to abort a write)."""
        if self.error is None:
            self.error = error
        raise MultipartParseError(error.message)

    def _part_begin(self) -> None:
        self.headers = {}
        self.part_name = None
        self.part_text = None
        self.part_handle = None
        self.part_hash = None
        self.part_size = 0

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def _header_end(self) -> None:
        self.headers[self.header_field.decode("latin-1").strip().lower()] = bytes(self.header_value)
        self.header_field.clear()
        self.header_value.clear()

    def _headers_finished(self) -> None:
        disposition, params = parse_options_header(self.headers.get("content-disposition"))
        name = params.get(b"name")
        if disposition != b"form-data" or name is None:
            self._fail(
                ValidationError(
                    "malformed multipart body: a part has no Content-Disposition form-data name",
                    hint=FORM_HINT,
                )
            )
        self.part_name = _decode(name)
        if self.part_name in self.files or self.part_name in self.fields:
            self._fail(
                ValidationError(
                    f"form field {self.part_name!r} is sent twice", hint="send each form field once"
                )
            )
        filename = params.get(b"filename")
        if filename is None:
            self._begin_text()
        else:
            self._begin_file(_decode(filename))

    def _begin_text(self) -> None:
        if self.part_name in self.file_fields:
            self._fail(
                ValidationError(
                    f"form field {self.part_name!r} must be a file part (with a filename)",
                    hint=f"send it as a file: `-F {self.part_name}=@path`",
                )
            )
        if len(self.fields) >= MAX_TEXT_FIELDS:
            self._fail(
                ValidationError(
                    f"the upload holds more than {MAX_TEXT_FIELDS} text fields",
                    hint="send only the fields the route documents",
                )
            )
        self.part_text = bytearray()

    def _begin_file(self, raw_filename: str) -> None:
        if self.part_name not in self.file_fields:
            self._fail(
                ValidationError(
                    f"form field {self.part_name!r} holds a file, but files are accepted only in "
                    f"{', '.join(sorted(self.file_fields))}",
                    hint="send the model in the documented file field",
                )
            )
        filename = sanitize_filename(raw_filename)
        if not filename:
            self._fail(
                ValidationError(
                    f"uploaded filename {raw_filename!r} has no usable name once directories and unsafe "
                    "characters are removed",
                    hint="name the file plainly, e.g. model.onnx",
                )
            )
        path = self.destination / filename
        try:
            handle = path.open("xb")
        except FileExistsError:
            self._fail(
                ValidationError(
                    f"two uploaded files are both named {filename!r}",
                    hint="rename one of them and send again",
                )
            )
        except OSError as exc:
            raise _disk_error(exc) from None
        self.written.append(path)
        self.part_handle = handle
        self.part_hash = hashlib.sha256()
        self.part_filename = filename

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self.part_handle is not None and self.part_hash is not None:
            view = memoryview(data)[start:end]
            self.part_hash.update(view)
            self.part_handle.write(view)
            self.part_size += end - start
        elif self.part_text is not None:
            self.part_text += data[start:end]
            if len(self.part_text) > self.max_field_bytes:
                self._fail(
                    ValidationError(
                        f"form field {self.part_name!r} is longer than {self.max_field_bytes} bytes",
                        hint="text fields carry short values; send large content as a file",
                    )
                )

    def _part_end(self) -> None:
        name = self.part_name or ""
        if self.part_handle is not None and self.part_hash is not None:
            self.part_handle.close()
            self.part_handle = None
            path = self.destination / self.part_filename
            if self.part_size == 0:
                self._fail(
                    ValidationError(
                        f"uploaded file {self.part_filename!r} in field {name!r} is empty (0 bytes)",
                        hint="check the path given to the client and send the file again",
                    )
                )
            self.files[name] = StoredFile(
                path, self.part_filename, self.part_size, self.part_hash.hexdigest()
            )
        elif self.part_text is not None:
            try:
                self.fields[name] = self.part_text.decode("utf-8")
            except UnicodeDecodeError:
                self._fail(
                    ValidationError(
                        f"form field {name!r} is not UTF-8 text", hint="send text fields as UTF-8"
                    )
                )
        self.part_text = None

    def _end(self) -> None:
        self.ended = True


def _decode(raw: bytes) -> str:
    """Header parameters arrive as raw bytes: UTF-8 from browsers and curl, else latin-1."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _disk_error(exc: OSError) -> ResourceError:
    """A failed write to the data directory (disk full, permissions) as a ResourceError."""
    return ResourceError(
        f"cannot store the upload: {first_line(exc)}",
        hint="free disk space in the data directory (ROBOPT_DATA_DIR) or check its permissions",
    )
