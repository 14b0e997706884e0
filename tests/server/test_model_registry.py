"""The model registry: an upload is stored, loaded and profiled in a child process with a real latency figure,
then listed, fetched and deleted; a bad file, a time limit or a cancellation leaves no folder and no record.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import random
import zipfile
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import torch
from safetensors.torch import save_file
from sqlmodel import Session

from server.history import HistoryDB
from server.model_registry import ModelRecord, ModelRegistry, parse_load_options
from server.settings import Settings, load_settings
from server.uploads import MultipartUpload, receive_multipart
from tests.model_zoo import TinyMLP
from tools.errors import (
    ChildTimeoutError,
    CorruptFileError,
    NotFoundError,
    UnsafeFileError,
    UnsupportedFormatError,
    ValidationError,
)
from tools.intake.types import LoadOptions


class SmallConvNet(torch.nn.Module):
    """A small policy backbone: one strided convolution and a linear head (no BatchNorm, so ONNX keeps it)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.head = torch.nn.Linear(8 * 15 * 15, 4)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(image)).flatten(1))


def zipped(members: dict[str, bytes]) -> bytes:
    """A zip archive holding `members`."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return buffer.getvalue()


def parameter_count(module: torch.nn.Module) -> int:
    """Parameter elements of a module."""
    return sum(p.numel() for p in module.parameters())


@pytest.fixture
def net() -> SmallConvNet:
    torch.manual_seed(0)
    return SmallConvNet().eval()


@pytest.fixture
def onnx_file(tmp_path: Path, net: SmallConvNet) -> Path:
    path = tmp_path / "src" / "policy.onnx"
    path.parent.mkdir(exist_ok=True)
    torch.onnx.export(net, (torch.randn(1, 3, 32, 32),), str(path), input_names=["image"], dynamo=False)
    return path


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def upload_settings(data_dir: Path, **overrides: object) -> Settings:
    values = {"data_dir": data_dir, "latency_threads": 1, "latency_warmup": 2, "latency_iterations": 10}
    return load_settings(**{**values, **overrides})


@pytest.fixture
def history(data_dir: Path) -> Iterator[HistoryDB]:
    db = HistoryDB.for_data_dir(data_dir)
    yield db
    db.close()


@pytest.fixture
def registry(history: HistoryDB, data_dir: Path) -> ModelRegistry:
    return ModelRegistry(history.engine, data_dir, upload_settings(data_dir))


async def receive_upload(registry: ModelRegistry, files: dict, data: dict | None = None) -> MultipartUpload:
    """Stream a multipart body built by httpx into a fresh staging folder, as the route does."""
    request = httpx.Request("POST", "http://robopt.test/api/v1/models", files=files, data=data or {})
    body = request.read()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    return await receive_multipart(
        chunks(),
        request.headers["content-type"],
        registry.staging_dir(),
        max_bytes=10**8,
        file_fields={"file", "config"},
    )


def upload_and_add(
    registry: ModelRegistry,
    files: dict,
    *,
    options: str | None = None,
    name: str | None = None,
    allow_trusted: bool = False,
) -> ModelRecord:
    """Upload `files` and add the model, as POST /api/v1/models does."""

    async def scenario() -> ModelRecord:
        upload = await receive_upload(registry, files)
        config = upload.files.get("config")
        parsed = parse_load_options(
            options, config_path=config.path if config else None, allow_trusted=allow_trusted
        )
        return await registry.add(upload, name=name, options=parsed)

    return asyncio.run(scenario())


def assert_nothing_left(registry: ModelRegistry, data_dir: Path) -> None:
    """No model folder, no staging folder, no record."""
    assert registry.list() == []
    for folder in ("models", "uploads", "intake"):
        assert not (data_dir / folder).exists() or not any((data_dir / folder).iterdir()), folder


def test_onnx_upload_is_stored_profiled_and_measured_then_deleted(
    registry: ModelRegistry, data_dir: Path, onnx_file: Path, net: SmallConvNet
) -> None:
    content = onnx_file.read_bytes()

    record = upload_and_add(registry, {"file": ("policy.onnx", content)})

    assert record.id.startswith("mdl-") and len(record.id) == 14
    assert (record.name, record.filename, record.format) == ("policy", "policy.onnx", "onnx")
    assert record.params == parameter_count(net) == record.profile["parameters"]
    assert record.profile["flops"] > 0
    latency = record.profile["latency"]
    assert latency["p50_ms"] > 0 and 5 <= latency["iterations"] <= 10 and latency["threads"] == 1
    stored = Path(record.path)
    assert stored == (data_dir / "models" / record.id / "policy.onnx").resolve()
    assert (
        hashlib.sha256(stored.read_bytes()).hexdigest()
        == record.sha256
        == hashlib.sha256(content).hexdigest()
    )
    assert record.size_bytes == len(content)
    assert record.options["input_specs"][0]["name"] == "image"
    assert registry.load_options(record).input_specs[0].shape == (1, 3, 32, 32)
    assert not any((data_dir / "uploads").iterdir())  # the staging folder is gone

    fetched = registry.get(record.id)
    assert (fetched.sha256, fetched.profile, fetched.created) == (
        record.sha256,
        record.profile,
        record.created,
    )
    assert fetched.created.tzinfo is not None
    assert [r.id for r in registry.list()] == [record.id]

    registry.delete(record.id)

    assert not (data_dir / "models" / record.id).exists()
    assert registry.list() == []
    with pytest.raises(NotFoundError) as caught:
        registry.get(record.id)
    assert "/api/v1/models" in (caught.value.hint or "")
    with pytest.raises(NotFoundError):
        registry.delete(record.id)


def test_state_dict_with_uploaded_config_builds_the_named_architecture(
    registry: ModelRegistry, data_dir: Path, tmp_path: Path
) -> None:
    torch.manual_seed(1)
    mlp = TinyMLP(in_features=6, hidden=12, out_features=3).eval()
    weights = tmp_path / "mlp.safetensors"
    save_file(mlp.state_dict(), str(weights))
    config = json.dumps({"in_features": 6, "hidden": 12, "out_features": 3}).encode()

    record = upload_and_add(
        registry,
        {"file": ("mlp.safetensors", weights.read_bytes()), "config": ("config.json", config)},
        options=json.dumps({"architecture": "tests.model_zoo:TinyMLP"}),
        name="  reacher mlp ",
    )

    assert (record.name, record.format, record.params) == ("reacher mlp", "safetensors", parameter_count(mlp))
    assert record.profile["latency"]["p50_ms"] > 0
    config_path = Path(record.options["config_path"])
    assert config_path == (data_dir / "models" / record.id / "config" / "config.json").resolve()
    assert json.loads(config_path.read_text()) == json.loads(config)
    options = registry.load_options(record)
    assert options.architecture == "tests.model_zoo:TinyMLP"
    assert options.input_specs[0].shape == (1, 6)  # found by intake: TinyMLP.input_specs(config)


def test_archive_upload_is_unpacked_in_the_data_dir_and_removed_with_the_model(
    registry: ModelRegistry, data_dir: Path, tmp_path: Path, onnx_file: Path, net: SmallConvNet
) -> None:
    archive = tmp_path / "policy.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(onnx_file, "export/policy.onnx")

    record = upload_and_add(registry, {"file": ("policy.zip", archive.read_bytes())})

    assert (record.format, record.params) == ("onnx", parameter_count(net))
    assert Path(record.path).name == "policy.zip"
    unpacked = list((data_dir / "intake").glob("archive-*/export/policy.onnx"))
    assert len(unpacked) == 1 and unpacked[0].read_bytes() == onnx_file.read_bytes()

    registry.delete(record.id)

    assert not any((data_dir / "intake").iterdir())
    assert not (data_dir / "models" / record.id).exists()


def test_list_is_newest_first(registry: ModelRegistry, history: HistoryDB) -> None:
    base = datetime(2025, 1, 1, tzinfo=timezone.utc)
    with Session(history.engine) as session:
        for model_id, hours in (("mdl-000000000a", 2), ("mdl-000000000b", 0), ("mdl-000000000c", 5)):
            session.add(
                ModelRecord(
                    id=model_id,
                    name=model_id,
                    filename="m.onnx",
                    format="onnx",
                    size_bytes=1,
                    sha256="0" * 64,
                    path="/nowhere",
                    params=1,
                    created=base + timedelta(hours=hours),
                )
            )
        session.commit()

    records = registry.list()

    assert [r.id for r in records] == ["mdl-000000000c", "mdl-000000000a", "mdl-000000000b"]
    assert records[0].created == base + timedelta(hours=5)


@pytest.mark.parametrize(
    ("make", "filename", "named", "error"),
    [
        (lambda onnx: onnx[: len(onnx) // 2], "policy.onnx", "policy.onnx", CorruptFileError),
        # Fixed bytes: os.urandom made byte 8 a "{" one run in 256, which reads as a SafeTensors header.
        (lambda onnx: random.Random(0).randbytes(4096), "weights.bin", "weights.bin", UnsupportedFormatError),
        (
            lambda onnx: zipped({"m/policy.onnx": onnx[: len(onnx) // 2]}),
            "m.zip",
            "policy.onnx",
            CorruptFileError,
        ),
    ],
    ids=["truncated-onnx", "random-bytes", "archive-of-truncated-onnx"],
)
def test_corrupt_or_unknown_file_is_refused_and_leaves_nothing(
    registry: ModelRegistry, data_dir: Path, onnx_file: Path, make, filename: str, named: str, error: type
) -> None:
    with pytest.raises(error) as caught:
        upload_and_add(registry, {"file": (filename, make(onnx_file.read_bytes()))})

    assert named in caught.value.message
    assert_nothing_left(registry, data_dir)


def test_pickled_module_is_refused_unless_trusted(
    registry: ModelRegistry, data_dir: Path, tmp_path: Path, net: SmallConvNet
) -> None:
    pickled = tmp_path / "whole.pt"
    torch.save(net, pickled)

    with pytest.raises(UnsafeFileError, match="can run code"):
        upload_and_add(registry, {"file": ("whole.pt", pickled.read_bytes())})

    assert_nothing_left(registry, data_dir)


def test_time_limit_refuses_the_upload_and_leaves_nothing(
    history: HistoryDB, data_dir: Path, onnx_file: Path
) -> None:
    registry = ModelRegistry(history.engine, data_dir, upload_settings(data_dir, latency_timeout_s=0.5))

    with pytest.raises(ChildTimeoutError):
        upload_and_add(registry, {"file": ("policy.onnx", onnx_file.read_bytes())})

    assert_nothing_left(registry, data_dir)


def test_cancelled_add_leaves_nothing(registry: ModelRegistry, data_dir: Path, onnx_file: Path) -> None:
    async def scenario() -> bool:
        upload = await receive_upload(registry, {"file": ("policy.onnx", onnx_file.read_bytes())})
        options = parse_load_options(None, config_path=None, allow_trusted=False)
        task = asyncio.create_task(registry.add(upload, name=None, options=options))
        for _ in range(200):  # until the file is in its model folder and the child is working on it
            await asyncio.sleep(0.01)
            if list((data_dir / "models").glob("*/policy.onnx")):
                break
        stored_while_running = bool(list((data_dir / "models").glob("*/policy.onnx")))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return stored_while_running

    assert asyncio.run(scenario())
    assert_nothing_left(registry, data_dir)


def test_upload_without_a_model_file_is_refused(registry: ModelRegistry, data_dir: Path) -> None:
    async def scenario() -> None:
        upload = await receive_upload(registry, {"config": ("config.json", b"{}")})
        await registry.add(upload, name=None, options=LoadOptions())

    with pytest.raises(ValidationError, match="'file'"):
        asyncio.run(scenario())
    assert_nothing_left(registry, data_dir)


def test_unknown_ids_are_not_found(registry: ModelRegistry) -> None:
    for model_id in ("mdl-0123456789", "../../etc", "mdl-zz"):
        with pytest.raises(NotFoundError, match="no model with id"):
            registry.get(model_id)
        with pytest.raises(NotFoundError):
            registry.delete(model_id)


def test_models_table_sits_beside_the_history_tables(history: HistoryDB, data_dir: Path) -> None:
    job = history.create_job(goal="under 5 ms", model="m.onnx")
    ModelRegistry(history.engine, data_dir, upload_settings(data_dir))
    ModelRegistry(history.engine, data_dir, upload_settings(data_dir))  # checkfirst: a second start is fine

    tables = set(sa.inspect(history.engine).get_table_names())

    assert {"models", "jobs", "attempts", "events"} <= tables
    assert [j.id for j in history.list_jobs()] == [job.id]  # the history's own tables are untouched


def test_load_options_are_parsed_from_the_options_field(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    text = json.dumps(
        {
            "architecture": "tests.model_zoo:TinyMLP",
            "input_specs": ["state:1x8:float32", "ids:1x16:int64:0-100"],
        }
    )

    options = parse_load_options(text, config_path=config, allow_trusted=False)

    assert options.architecture == "tests.model_zoo:TinyMLP"
    assert options.config_path == config
    assert [(s.name, s.shape, s.dtype, s.high) for s in options.input_specs] == [
        ("state", (1, 8), "float32", None),
        ("ids", (1, 16), "int64", 100),
    ]
    assert not options.trust_pickle and not options.trust_remote_code
    assert parse_load_options(None, config_path=None, allow_trusted=False) == LoadOptions()
    assert parse_load_options("  ", config_path=None, allow_trusted=False) == LoadOptions()


@pytest.mark.parametrize("flag", ["trust_pickle", "trust_remote_code"])
def test_trust_flags_are_refused_unless_the_operator_allows_them(flag: str) -> None:
    text = json.dumps({flag: True})

    with pytest.raises(ValidationError) as caught:
        parse_load_options(text, config_path=None, allow_trusted=False)

    assert flag in caught.value.message and "run code on the server" in caught.value.message
    assert "ROBOPT_ALLOW_TRUSTED_LOADS=true" in (caught.value.hint or "")
    assert getattr(parse_load_options(text, config_path=None, allow_trusted=True), flag) is True


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["a"]', "must be a JSON object"),
        ('{"architecture": "m:C", "trust": true, "arch": 1}', "unknown options 'arch', 'trust'"),
        ('{"input_specs": ["state:1x8:float32", "bad spec"]}', r"input_specs\[1\]"),
        ('{"input_specs": "state:1x8:float32"}', "must be a list of strings"),
        ('{"input_specs": ["a:1x8:float32", "a:1x4:float32"]}', "names input 'a' twice"),
        ('{"input_specs": ["a:1x100000x100000:float32"]}', "more than"),
        ('{"trust_pickle": "yes"}', "must be true or false"),
        ('{"architecture": "os.system"}', "package.module:Class"),
        ('{"architecture": "a:b; rm -rf /"}', "package.module:Class"),
    ],
)
def test_bad_options_are_refused_naming_the_problem(text: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message) as caught:
        parse_load_options(text, config_path=None, allow_trusted=True)
    assert caught.value.hint


def test_purge_orphans_removes_leftovers_of_a_crash_but_keeps_recorded_models(
    registry: ModelRegistry, history: HistoryDB, data_dir: Path
) -> None:
    kept = data_dir / "models" / "mdl-00000000aa"
    kept.mkdir(parents=True)
    (kept / "m.onnx").write_bytes(b"weights")
    with Session(history.engine) as session:
        session.add(
            ModelRecord(
                id=kept.name,
                name="kept",
                filename="m.onnx",
                format="onnx",
                size_bytes=7,
                sha256="0" * 64,
                path=str(kept / "m.onnx"),
                params=1,
            )
        )
        session.commit()
    orphan = data_dir / "models" / "mdl-00000000bb"
    orphan.mkdir()
    (orphan / "m.onnx").write_bytes(b"half")
    staging = registry.staging_dir()
    (staging / "big.onnx").write_bytes(b"partial")

    removed = registry.purge_orphans()

    assert set(removed) == {orphan, staging}
    assert [p.name for p in (data_dir / "models").iterdir()] == [kept.name]
    assert (kept / "m.onnx").read_bytes() == b"weights"
    assert not any((data_dir / "uploads").iterdir())
