"""/references: the bundled reference models a job can start from (`"reference": name` instead of a
`model_id`), with what is known of each without building it."""

from __future__ import annotations

from fastapi import APIRouter

from server.schemas import ReferencePublic, ReferencesPublic

router = APIRouter(prefix="/references", tags=["models"])


@router.get("", response_model=ReferencesPublic)
async def list_references() -> ReferencesPublic:
    """The reference models, in their declared order; nothing is built or loaded."""
    from server.jobs import REFERENCE_TASKS
    from tools.reference import REFERENCE_FORMATS, REFERENCE_MODELS
    from tools.reference.reproducible import TRAINED_REFERENCES

    data = [
        ReferencePublic(
            name=entry.name,
            description=entry.description,
            kind=entry.kind,
            format=REFERENCE_FORMATS[entry.kind],
            trained=entry.name in TRAINED_REFERENCES,
            task=REFERENCE_TASKS.get(entry.name),
            simulator=entry.simulator,
        )
        for entry in REFERENCE_MODELS.values()
    ]
    return ReferencesPublic(data=data, count=len(data))
