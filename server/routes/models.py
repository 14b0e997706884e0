"""/models: upload a model (streamed to disk with a size cap, validated and profiled in a child process),
list, inspect and delete uploads."""

from __future__ import annotations

import asyncio
import shutil

from fastapi import APIRouter, Request, status
from starlette.requests import ClientDisconnect

from server.deps import ServicesDep
from server.model_registry import ModelRecord, parse_load_options
from server.schemas import ModelPublic, ModelsPublic, error_responses
from server.uploads import check_content_length, receive_multipart
from tools.errors import ChildCrashedError, CorruptFileError, ValidationError

router = APIRouter(prefix="/models", tags=["models"])


def model_public(record: ModelRecord) -> ModelPublic:
    """A model record as the API shows it."""
    return ModelPublic.model_validate(record, from_attributes=True)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ModelPublic,
    responses=error_responses(413, 422),
    openapi_extra={
        "requestBody": {
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {"type": "string", "format": "binary", "description": "model or archive"},
                            "config": {"type": "string", "format": "binary", "description": "config.json"},
                            "name": {"type": "string"},
                            "options": {
                                "type": "string",
                                "description": 'JSON: {"architecture": "mod:Class", "input_specs": '
                                '["name:1x3x64x64:float32"], "trust_pickle": false, "trust_remote_code": false}',
                            },
                        },
                    }
                }
            },
            "required": True,
        }
    },
)
async def upload_model(request: Request, services: ServicesDep) -> ModelPublic:
    """Upload a model file, or a .zip/.tar.gz of a model directory; answer its id and its measured profile."""
    settings = services.settings
    check_content_length(request.headers, settings.max_upload_bytes)
    staging = services.models.staging_dir()
    try:
        upload = await receive_multipart(
            request.stream(),
            request.headers.get("content-type", ""),
            staging,
            max_bytes=settings.max_upload_bytes,
            file_fields={"file", "config"},
        )
        config = upload.files.get("config")
        options = parse_load_options(
            upload.fields.get("options"),
            config_path=config.path if config else None,
            allow_trusted=settings.allow_trusted_loads,
        )
        record = await services.models.add(upload, name=upload.fields.get("name"), options=options)
    except ChildCrashedError as error:  # the loader died on the file: the file's fault, not the server's
        raise CorruptFileError(
            f"loading the upload crashed the loader: {error.message}",
            hint="check the file loads locally (robopt analyze FILE); a forged header can do this",
        ) from None
    except ClientDisconnect:
        raise ValidationError("the upload was interrupted", hint="send the whole file again") from None
    finally:
        await asyncio.to_thread(shutil.rmtree, staging, True)
    return model_public(record)


@router.get("", response_model=ModelsPublic)
async def list_models(services: ServicesDep) -> ModelsPublic:
    """Uploaded models, newest first."""
    records = await asyncio.to_thread(services.models.list)
    return ModelsPublic(data=[model_public(r) for r in records], count=len(records))


@router.get("/{model_id}", response_model=ModelPublic, responses=error_responses(404, 422))
async def get_model(model_id: str, services: ServicesDep) -> ModelPublic:
    """One uploaded model with its profile."""
    return model_public(await asyncio.to_thread(services.models.get, model_id))


@router.delete(
    "/{model_id}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(404, 409, 422)
)
async def delete_model(model_id: str, services: ServicesDep) -> None:
    """Delete an uploaded model (jobs keep their own copy as their version 1)."""
    await asyncio.to_thread(services.models.delete, model_id)
