"""Write the service's OpenAPI document without starting it: `python -m server.openapi_export --out FILE`.

The web page's API types (`frontend/src/services/openapi.ts`) are generated from this document by
`npm run gen:api` in frontend/, and tests/server/test_openapi_types.py checks that both files are current. The
app is built but its lifespan never runs, so no service, scheduler or data directory is created; the settings
point at a temporary data directory all the same. The JSON is deterministic: keys sorted, two-space indent, a
final newline, and `info.version` read from pyproject.toml (the installed package's metadata may be stale or absent).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOCUMENT_PATH = ROOT / "frontend" / "src" / "services" / "openapi.json"
"""Where the checked-in document lives (the page's types are generated from it)."""


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document of the app `create_app` builds (no lifespan: nothing is started or written)."""
    from server.main import create_app
    from server.settings import load_settings

    with tempfile.TemporaryDirectory(prefix="robopt-openapi-") as data_dir:
        app = create_app(load_settings(data_dir=Path(data_dir)))
        document = app.openapi()
    with (ROOT / "pyproject.toml").open("rb") as pyproject:
        document["info"]["version"] = tomllib.load(pyproject)["project"]["version"]
    return document


def render_document(document: dict[str, Any]) -> str:
    """The document as deterministic JSON text: sorted keys, two-space indent, ending in a newline."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the document to --out (default: the checked-in frontend/src/services/openapi.json), or stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=DOCUMENT_PATH,
        help=f"file to write; '-' for stdout (default: {DOCUMENT_PATH})",
    )
    args = parser.parse_args(argv)
    text = render_document(openapi_document())
    if str(args.out) == "-":
        sys.stdout.write(text)
    else:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
