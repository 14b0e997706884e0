"""The web page's API types are current (issue 17): the checked-in OpenAPI document
(frontend/src/services/openapi.json) is what the service produces now, and the checked-in types
(frontend/src/services/openapi.ts) are what openapi-typescript makes of it.

Where npm is missing the types test skips, unless `CI` is set: then it fails, because a missing component must
fail CI rather than skip silently.
"""

from __future__ import annotations

import difflib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from _bootstrap import FRONTEND, ensure_frontend_packages, npm
from server.openapi_export import DOCUMENT_PATH, openapi_document, render_document

TYPES_PATH = FRONTEND / "src" / "services" / "openapi.ts"
REGENERATE = "regenerate them: `cd frontend && npm run gen:api`, and commit openapi.json and openapi.ts"


@pytest.fixture(scope="module")
def document_text() -> str:
    """The service's OpenAPI document as the export writes it, built in this process."""
    return render_document(openapi_document())


def stale(name: str, expected: str, checked_in: str) -> str:
    """A failure message: which file is stale, how to regenerate it, and the first lines of the difference."""
    diff = difflib.unified_diff(
        checked_in.splitlines(), expected.splitlines(), "checked in", "generated now", lineterm="", n=2
    )
    return f"{name} is not current; {REGENERATE}\n" + "\n".join(list(diff)[:60])


def test_the_document_is_deterministic(document_text: str) -> None:
    assert render_document(openapi_document()) == document_text


def test_the_checked_in_document_is_the_services(document_text: str) -> None:
    checked_in = DOCUMENT_PATH.read_text(encoding="utf-8")
    assert checked_in == document_text, stale(DOCUMENT_PATH.name, document_text, checked_in)


def test_the_document_names_the_types_the_page_uses(document_text: str) -> None:
    document: dict[str, Any] = json.loads(document_text)
    schemas = document["components"]["schemas"]
    for name in (
        "JobPublic",
        "JobAccepted",
        "ChatRequest",
        "ChatResponse",
        "ErrorPublic",
        "CheckpointsPublic",
    ):
        assert name in schemas, f"{name} is gone from the document; frontend/src/services/types.ts uses it"


@pytest.mark.integration
def test_the_checked_in_types_are_generated_from_the_document(document_text: str, tmp_path: Path) -> None:
    if npm() is None:
        if os.environ.get("CI"):
            pytest.fail("npm not found: the page's API types cannot be checked in CI", pytrace=False)
        pytest.skip("npm not found: the page's API types are not checked")
    assert ensure_frontend_packages(), "npm ci failed in frontend/: the page's API types cannot be checked"
    source = tmp_path / "openapi.json"
    source.write_text(document_text, encoding="utf-8")
    output = tmp_path / "openapi.ts"
    result = subprocess.run(
        [str(FRONTEND / "node_modules" / ".bin" / "openapi-typescript"), str(source), "-o", str(output)],
        cwd=FRONTEND,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"openapi-typescript failed:\n{result.stdout}\n{result.stderr}"
    generated = output.read_text(encoding="utf-8")
    checked_in = TYPES_PATH.read_text(encoding="utf-8")
    assert checked_in == generated, stale(TYPES_PATH.name, generated, checked_in)
