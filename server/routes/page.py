"""The web page at `/`: the bundle `npm run build` wrote into `frontend/dist` (its routes are hash routes, so only
`/` and `/assets/*` are served); no API key is needed for the page itself, only for the API it calls."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from server.deps import ServicesDep
from tools.errors import NotFoundError

router = APIRouter(include_in_schema=False)
BUILD_HINT = "build it with `cd frontend && npm ci && npm run build` (or run `python3 run_robopt.py serve`)"


def _built(services: ServicesDep) -> Path:
    """The page's folder, refused with a hint when it was never built."""
    folder = Path(services.settings.frontend_dir)
    if not (folder / "index.html").is_file():
        raise NotFoundError(f"the web page is not built here ({folder} has no index.html)", hint=BUILD_HINT)
    return folder


@router.get("/")
async def page(services: ServicesDep) -> FileResponse:
    """The page's index.html."""
    return FileResponse(_built(services) / "index.html", media_type="text/html")


@router.get("/assets/{name:path}")
async def asset(name: str, services: ServicesDep) -> FileResponse:
    """One file of the bundle's assets folder; nothing outside it."""
    assets = (_built(services) / "assets").resolve()
    path = (assets / name).resolve()
    if assets not in path.parents or not path.is_file():
        raise NotFoundError(f"no asset {name!r} in the web page's bundle", hint=BUILD_HINT)
    return FileResponse(path)
