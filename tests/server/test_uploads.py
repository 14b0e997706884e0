"""Streaming multipart uploads: files land in the destination with their size and sha256, caps hold, and any
refusal or cancellation leaves nothing behind."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from server.errors import UploadTooLargeError
from server.uploads import (
    MultipartUpload,
    check_content_length,
    receive_multipart,
    sanitize_filename,
)
from tools.errors import ValidationError

FILE_FIELDS = {"file", "config"}
BOUNDARY = "robopt-test-boundary-7f3a"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def encode_with_httpx(files: dict, data: dict | None = None) -> tuple[bytes, str]:
    """Body and Content-Type of the multipart request httpx would send."""
    request = httpx.Request("POST", "http://robopt.test/api/v1/models", files=files, data=data or {})
    return request.read(), request.headers["content-type"]


def encode_by_hand(parts: list[tuple[str, str | None, bytes]], boundary: str = BOUNDARY) -> bytes:
    """A multipart body from (field name, filename or None, content), with the filename written verbatim."""
    body = bytearray()
    for name, filename, content in parts:
        body += f"--{boundary}\r\n".encode()
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += f"Content-Disposition: {disposition}\r\n".encode("latin-1")
        if filename is not None:
            body += b"Content-Type: application/octet-stream\r\n"
        body += b"\r\n" + content + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return bytes(body)


async def chunked(body: bytes, size: int) -> AsyncIterator[bytes]:
    """Yield the body in chunks of `size` bytes, as a server receives it."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


def receive(
    body: bytes, content_type: str, destination: Path, chunk: int = 65536, **kwargs
) -> MultipartUpload:
    """Run receive_multipart on a body fed in chunks."""
    kwargs.setdefault("max_bytes", 10 * 1024 * 1024)
    kwargs.setdefault("file_fields", FILE_FIELDS)
    return asyncio.run(receive_multipart(chunked(body, chunk), content_type, destination, **kwargs))


def files_under(root: Path) -> set[Path]:
    """Every file below `root`."""
    return {path for path in root.rglob("*") if path.is_file()}


@pytest.mark.parametrize(
    ("chunk", "block", "size"),
    [
        (7, 7, 20_011),
        (7, 1024 * 1024, 2 * 1024 * 1024 + 17),
        (65536, 1024 * 1024, 2 * 1024 * 1024 + 17),
        (65536, 65536, 2 * 1024 * 1024 + 17),
        (1_000_003, 1024 * 1024, 2 * 1024 * 1024 + 17),
    ],
    ids=["7B-chunks-7B-parser-writes", "7B-chunks", "64KiB-chunks", "64KiB-parser-writes", "1MB-chunks"],
)
def test_files_and_fields_arrive_intact_across_chunk_boundaries(
    tmp_path: Path, chunk: int, block: int, size: int
) -> None:
    model = os.urandom(size)
    config = b'{"in_features": 8}'
    body, content_type = encode_with_httpx(
        {"file": ("policy.onnx", model), "config": ("config.json", config)},
        {"name": "my policy \u00e9", "options": '{"input_specs": ["state:1x8:float32"]}'},
    )
    destination = tmp_path / "staging"

    upload = receive(body, content_type, destination, chunk=chunk, block_bytes=block)

    stored = upload.files["file"]
    assert stored.path == destination.resolve() / "policy.onnx"
    assert stored.filename == "policy.onnx"
    assert (stored.size, stored.sha256) == (len(model), hashlib.sha256(model).hexdigest())
    assert stored.path.read_bytes() == model
    assert upload.files["config"].path.read_bytes() == config
    assert upload.files["config"].sha256 == hashlib.sha256(config).hexdigest()
    assert upload.fields == {"name": "my policy \u00e9", "options": '{"input_specs": ["state:1x8:float32"]}'}
    assert files_under(tmp_path) == {stored.path, upload.files["config"].path}


@pytest.mark.parametrize("existing", [False, True], ids=["fresh-destination", "existing-destination"])
def test_too_large_upload_is_refused_and_deleted(tmp_path: Path, existing: bool) -> None:
    model = os.urandom(300_000)
    body, content_type = encode_with_httpx({"file": ("big.onnx", model)})
    destination = tmp_path / "staging"
    if existing:
        destination.mkdir()

    with pytest.raises(UploadTooLargeError) as caught:
        receive(body, content_type, destination, chunk=4096, block_bytes=8192, max_bytes=200_000)

    assert "200000" in caught.value.message
    assert "ROBOPT_MAX_UPLOAD_BYTES" in (caught.value.hint or "")
    assert files_under(tmp_path) == set()
    assert destination.is_dir() == existing


def test_upload_of_exactly_the_cap_is_accepted(tmp_path: Path) -> None:
    body, content_type = encode_with_httpx({"file": ("m.onnx", b"x" * 1000)})

    upload = receive(body, content_type, tmp_path / "d", max_bytes=len(body))

    assert upload.files["file"].size == 1000


def test_content_length_past_the_cap_is_refused_before_reading() -> None:
    with pytest.raises(UploadTooLargeError) as caught:
        check_content_length({"content-length": "5000"}, 4999)
    assert "5000" in caught.value.message and "4999" in caught.value.message
    assert "ROBOPT_MAX_UPLOAD_BYTES" in (caught.value.hint or "")
    check_content_length({"content-length": "4999"}, 4999)
    check_content_length({}, 10)
    with pytest.raises(ValidationError, match="Content-Length"):
        check_content_length({"content-length": "lots"}, 10)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("a/b/model.onnx", "model.onnx"),
        ("..\\..\\Windows\\model.onnx", "model.onnx"),
        ("/abs/path/policy.tar.gz", "policy.tar.gz"),
        ("..hidden.pt", "hidden.pt"),
        ("mo\tdel\x7f.onnx", "model.onnx"),
        ('we"ird:na*me?.onnx', "we_ird_na_me_.onnx"),
    ],
)
def test_traversal_filenames_are_reduced_to_a_base_name_inside_the_destination(
    tmp_path: Path, raw: str, expected: str
) -> None:
    assert sanitize_filename(raw) == expected
    body = encode_by_hand([("file", raw, b"weights")])
    destination = tmp_path / "data" / "uploads" / "u1"

    upload = receive(body, CONTENT_TYPE, destination)

    assert upload.files["file"].filename == expected
    assert files_under(tmp_path) == {destination.resolve() / expected}


def test_long_filename_is_shortened_and_keeps_its_extension() -> None:
    name = sanitize_filename("a" * 400 + ".tar.gz")
    assert name.endswith(".tar.gz") and len(name.encode()) <= 200


@pytest.mark.parametrize("raw", ["..", "...", "a/..", "/", "\x01\x02", "  .  "])
def test_filename_that_sanitizes_to_nothing_is_refused(tmp_path: Path, raw: str) -> None:
    body = encode_by_hand([("file", raw, b"weights")])
    with pytest.raises(ValidationError, match="no usable name"):
        receive(body, CONTENT_TYPE, tmp_path / "d")
    assert files_under(tmp_path) == set()


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"{}", "application/json", "not multipart/form-data"),
        (b"", "multipart/form-data", "no usable boundary"),
        (b"hello, this is not a multipart body", CONTENT_TYPE, "malformed multipart body"),
        (encode_by_hand([("file", "m.onnx", b"abc")], boundary="other"), CONTENT_TYPE, "malformed"),
        (
            encode_by_hand([("file", "m.onnx", b"abc" * 1000)])[:-40],
            CONTENT_TYPE,
            "before the closing boundary",
        ),
        (
            f"--{BOUNDARY}\r\nContent-Disposition: attachment\r\n\r\nabc\r\n--{BOUNDARY}--\r\n".encode(),
            CONTENT_TYPE,
            "no Content-Disposition form-data name",
        ),
    ],
    ids=["json", "no-boundary", "garbage", "wrong-boundary", "truncated", "no-name"],
)
def test_malformed_requests_are_refused_and_leave_nothing(
    tmp_path: Path, body: bytes, content_type: str, message: str
) -> None:
    with pytest.raises(ValidationError, match=message) as caught:
        receive(body, content_type, tmp_path / "d", chunk=5, block_bytes=5)
    assert caught.value.hint
    assert files_under(tmp_path) == set()


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ([("weights", "m.onnx", b"abc")], "files are accepted only in config, file"),
        ([("file", None, b"abc")], "must be a file part"),
        ([("name", None, b"only a name")], "holds no file in config or file"),
        ([("file", "m.onnx", b"")], "is empty"),
        ([("file", "m.onnx", b"abc"), ("name", None, b"x" * 70_000)], "longer than 65536 bytes"),
        ([("file", "m.onnx", b"abc"), ("file", "n.onnx", b"def")], "sent twice"),
        ([("file", "m.onnx", b"abc"), ("config", "m.onnx", b"{}")], "both named 'm.onnx'"),
        ([("file", "m.onnx", b"abc"), ("name", None, b"\xff\xfe")], "not UTF-8"),
    ],
    ids=[
        "file-in-text-field",
        "text-in-file-field",
        "no-file",
        "empty-file",
        "long-field",
        "twice",
        "same-name",
        "utf8",
    ],
)
def test_bad_parts_are_refused_and_written_files_removed(
    tmp_path: Path, parts: list[tuple[str, str | None, bytes]], message: str
) -> None:
    destination = tmp_path / "staging"
    destination.mkdir()  # as the service's staging folder: it exists before the upload
    with pytest.raises(ValidationError, match=message) as caught:
        receive(encode_by_hand(parts), CONTENT_TYPE, destination, chunk=3, block_bytes=64)
    assert caught.value.hint
    assert files_under(tmp_path) == set()
    assert destination.is_dir()


def test_cancelled_upload_removes_what_was_written(tmp_path: Path) -> None:
    model = os.urandom(256 * 1024)
    body = encode_by_hand([("file", "m.onnx", model)])
    destination = tmp_path / "staging"
    destination.mkdir()
    stored = destination / "m.onnx"
    half_sent = asyncio.Event()

    async def client_that_stalls() -> AsyncIterator[bytes]:
        yield body[: len(body) // 2]
        half_sent.set()
        await asyncio.Event().wait()  # the client goes quiet, then disconnects
        yield b""

    async def scenario() -> tuple[int, bool]:
        task = asyncio.create_task(
            receive_multipart(
                client_that_stalls(),
                CONTENT_TYPE,
                destination,
                max_bytes=10**7,
                file_fields=FILE_FIELDS,
                block_bytes=4096,
            )
        )
        await half_sent.wait()
        await asyncio.sleep(0.05)
        size_while_receiving = stored.stat().st_size
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return size_while_receiving, stored.exists()

    size_while_receiving, exists_after = asyncio.run(scenario())

    assert size_while_receiving > 100_000  # the file really was being streamed to disk
    assert not exists_after
    assert files_under(tmp_path) == set()
