"""Every file of the bad corpus (at least 70: forged headers, hostile archives, pickles that run code) uploaded to a
real `robopt serve` is a 422 with its code, message and hint, with and without the trust flags (the operator allows
them with ROBOPT_ALLOW_TRUSTED_LOADS=true); no payload runs and nothing is kept."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from tests.bad_corpus import BadCase, build_bad_corpus
from tests.server.api_support import Server, server_env, start_server

pytestmark = pytest.mark.integration
UPLOAD_REFUSALS = {"empty.pt": ("validation_error", "is empty (0 bytes)")}
"""Files the upload itself refuses before intake reads them, with the code and fragment of that refusal."""


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bad-uploads")


@pytest.fixture(scope="module")
def cases(root: Path) -> list[BadCase]:
    return build_bad_corpus(root / "files", root / "code-ran.marker")


def _upload_file(case: BadCase, root: Path) -> Path:
    """The file to upload: the case itself, or a zip of it when it is a directory."""
    if case.path.is_file():
        return case.path
    return Path(shutil.make_archive(str(root / "zips" / case.name), "zip", case.path.parent, case.path.name))


@pytest.mark.parametrize("trusted", [False, True], ids=["untrusted", "trusted"])
def test_every_bad_upload_is_a_422_with_its_code_and_nothing_is_kept(
    root: Path, cases: list[BadCase], trusted: bool
) -> None:
    data = root / f"data-{trusted}"
    server: Server = start_server(
        server_env(data, allow_trusted_loads="true" if trusted else "false"), root / f"server-{trusted}.log"
    )
    options = {"trust_pickle": True, "trust_remote_code": True} if trusted else {}
    try:
        with server.client() as client:
            for case in cases:
                error, fragment = case.expected(trusted)
                code, fragment = UPLOAD_REFUSALS.get(case.name, (error.code, fragment))
                upload = _upload_file(case, root)
                form = {"name": case.name, **({"options": json.dumps(options)} if options else {})}
                with upload.open("rb") as handle:
                    response = client.post("/models", files={"file": (upload.name, handle)}, data=form)
                assert response.status_code == 422, (case.name, response.status_code, response.text)
                body = response.json()
                assert set(body) == {"code", "message", "detail", "hint"}, (case.name, body)
                assert body["code"] == code and fragment in body["message"], (case.name, body)
                assert not (root / "code-ran.marker").exists(), f"{case.name}: the payload ran"
            listed = client.get("/models").json()
    finally:
        server.stop()
    models = listed["data"] if isinstance(listed, dict) else listed
    assert [m for m in models if m.get("name") in {c.name for c in cases}] == []
    assert not Path("/tmp/robopt-absolute.txt").exists() and not Path("/tmp/robopt-zip-absolute.txt").exists()
