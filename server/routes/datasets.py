"""/datasets: upload inputs (and labels) a job calibrates and measures accuracy with; inspect one.

A dataset is one `.npz`, `.safetensors` or weights-only `.pt` file of arrays named like the model's inputs,
plus `actions`/`labels` for a task metric, or a LeRobotDataset directory uploaded as a `.zip` / `.tar.gz`
archive (unpacked safely inside the dataset's folder; split by episode, recorded actions as labels). It is
checked against the model when a job uses it.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, status

from graph.work import LABEL_KEYS
from server.deps import ServicesDep
from server.schemas import DatasetPublic, error_responses
from server.uploads import check_content_length, receive_multipart
from tools.errors import NotFoundError, ValidationError
from tools.intake.archive import ArchiveLimits

router = APIRouter(prefix="/datasets", tags=["datasets"])
DATASETS = "datasets"
META = "dataset.json"
_ID = re.compile(r"^ds-[0-9a-f]{10}$")
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


def dataset_dir(data_dir: Path, dataset_id: str) -> Path:
    """The folder of a stored dataset; NotFoundError for an id that is not one."""
    folder = Path(data_dir).resolve() / DATASETS / dataset_id
    if not _ID.match(dataset_id) or not (folder / META).is_file():
        raise NotFoundError(
            f"dataset {dataset_id!r} not found", hint="upload data with POST /api/v1/datasets"
        )
    return folder


def dataset_file(data_dir: Path, dataset_id: str) -> Path:
    """The stored data file of a dataset, or the root of an unpacked LeRobotDataset."""
    folder = dataset_dir(data_dir, dataset_id)
    meta = json.loads((folder / META).read_text())
    return folder / (meta.get("root") or meta["filename"])


def is_archive_name(filename: str) -> bool:
    """Whether an upload's name says it is an archive (a `.npz` is a zip too, so the name decides)."""
    return filename.lower().endswith(ARCHIVE_SUFFIXES)


def _unpack_lerobot(archive: Path, folder: Path, limits: ArchiveLimits) -> tuple[Path, dict[str, Any]]:
    """Unpack a LeRobotDataset archive inside `folder` (archive removed) and describe it from meta/info.json."""
    from tools.intake.archive import unpack_archive
    from tools.lerobot.dataset import ACTION_KEY, read_dataset_info

    root = unpack_archive(archive, folder, limits)
    archive.unlink()
    info = read_dataset_info(root)
    features = {
        key: list(value.get("shape") or [])
        for key, value in info["features"].items()
        if isinstance(value, dict)
    }
    described = {
        "arrays": features,
        "has_labels": ACTION_KEY in features,
        "kind": "lerobot",
        "episodes": int(info.get("total_episodes") or 0),
    }
    return root, described


def _inspect(path: Path) -> dict[str, Any]:
    """Load the arrays (nothing is executed) and describe them."""
    from tools.inputs import load_input_data

    arrays = load_input_data(path)
    if not arrays:
        raise ValidationError(f"{path.name} holds no arrays", hint="save a dict of named arrays")
    return {
        "arrays": {name: list(tensor.shape) for name, tensor in arrays.items()},
        "has_labels": any(key in arrays for key in LABEL_KEYS),
    }


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetPublic,
    responses=error_responses(413, 422),
    openapi_extra={
        "requestBody": {
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {
                                "type": "string",
                                "format": "binary",
                                "description": ".npz/.safetensors/.pt of named arrays, or a LeRobotDataset "
                                ".zip/.tar.gz",
                            },
                        },
                    }
                }
            },
            "required": True,
        }
    },
)
async def upload_dataset(request: Request, services: ServicesDep) -> DatasetPublic:
    """Upload a data file, or a LeRobotDataset directory as a `.zip`/`.tar.gz` archive (multipart field `file`)."""
    settings = services.settings
    check_content_length(request.headers, settings.max_upload_bytes)
    dataset_id = f"ds-{uuid.uuid4().hex[:10]}"
    folder = Path(settings.data_dir).resolve() / DATASETS / dataset_id
    try:
        upload = await receive_multipart(
            request.stream(),
            request.headers.get("content-type", ""),
            folder,
            max_bytes=settings.max_upload_bytes,
            file_fields={"file"},
        )
        stored = upload.files["file"]
        root: str | None = None
        if is_archive_name(stored.path.name):
            limits = ArchiveLimits(
                max_total_bytes=settings.max_archive_bytes, max_files=settings.max_archive_files
            )
            unpacked, described = await asyncio.to_thread(_unpack_lerobot, stored.path, folder, limits)
            root = unpacked.relative_to(folder).as_posix()
        else:
            described = await asyncio.to_thread(_inspect, stored.path)
        public = DatasetPublic(
            id=dataset_id,
            filename=stored.path.name,
            size_bytes=stored.size,
            sha256=stored.sha256,
            **described,
        )
        meta = {**public.model_dump(mode="json"), "root": root}
        await asyncio.to_thread((folder / META).write_text, json.dumps(meta, indent=2))
    except BaseException:
        await asyncio.to_thread(shutil.rmtree, folder, True)
        raise
    return public


@router.get("/{dataset_id}", response_model=DatasetPublic, responses=error_responses(404, 422))
async def get_dataset(dataset_id: str, services: ServicesDep) -> DatasetPublic:
    """A stored dataset's arrays and whether it has labels."""
    folder = dataset_dir(services.settings.data_dir, dataset_id)
    return DatasetPublic.model_validate_json(await asyncio.to_thread((folder / META).read_text))
