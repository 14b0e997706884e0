"""/datasets: upload inputs (and labels) a job calibrates and measures accuracy with; inspect one.

A dataset is one `.npz`, `.safetensors` or weights-only `.pt` file of arrays named like the model's inputs,
plus `actions`/`labels` for a task metric. It is checked against the model when a job uses it.
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
from server.schemas import DatasetPublic
from server.uploads import check_content_length, receive_multipart
from tools.errors import NotFoundError, ValidationError

router = APIRouter(prefix="/datasets", tags=["datasets"])
DATASETS = "datasets"
META = "dataset.json"
_ID = re.compile(r"^ds-[0-9a-f]{10}$")


def dataset_dir(data_dir: Path, dataset_id: str) -> Path:
    """The folder of a stored dataset; NotFoundError for an id that is not one."""
    folder = Path(data_dir).resolve() / DATASETS / dataset_id
    if not _ID.match(dataset_id) or not (folder / META).is_file():
        raise NotFoundError(
            f"dataset {dataset_id!r} not found", hint="upload data with POST /api/v1/datasets"
        )
    return folder


def dataset_file(data_dir: Path, dataset_id: str) -> Path:
    """The stored data file of a dataset."""
    folder = dataset_dir(data_dir, dataset_id)
    meta = json.loads((folder / META).read_text())
    return folder / meta["filename"]


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


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DatasetPublic)
async def upload_dataset(request: Request, services: ServicesDep) -> DatasetPublic:
    """Upload a data file (multipart field `file`)."""
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
        described = await asyncio.to_thread(_inspect, stored.path)
        public = DatasetPublic(
            id=dataset_id,
            filename=stored.path.name,
            size_bytes=stored.size,
            sha256=stored.sha256,
            **described,
        )
        await asyncio.to_thread((folder / META).write_text, public.model_dump_json(indent=2))
    except BaseException:
        await asyncio.to_thread(shutil.rmtree, folder, True)
        raise
    return public


@router.get("/{dataset_id}", response_model=DatasetPublic)
async def get_dataset(dataset_id: str, services: ServicesDep) -> DatasetPublic:
    """A stored dataset's arrays and whether it has labels."""
    folder = dataset_dir(services.settings.data_dir, dataset_id)
    return DatasetPublic.model_validate_json(await asyncio.to_thread((folder / META).read_text))
