"""`robopt serve` shows the web page at `/` from the built bundle, serves its assets and nothing beside them, needs
no API key for the page (the API still does), and says how to build the page when it is not built."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.server.api_support import server_env, start_server

pytestmark = pytest.mark.integration


def _bundle(folder: Path) -> Path:
    """A built page as `npm run build` lays it out: index.html and assets/."""
    (folder / "assets").mkdir(parents=True)
    (folder / "index.html").write_text(
        '<!doctype html><div id="root"></div><script src="/assets/app-1.js"></script>'
    )
    (folder / "assets" / "app-1.js").write_text("console.log('robopt page')")
    (folder.parent / "secret.txt").write_text("not part of the page")
    return folder


def test_the_page_and_its_assets_are_served_at_the_root_and_the_api_keeps_its_key(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "site" / "dist")
    env = server_env(tmp_path / "data", frontend_dir=str(bundle))
    server = start_server(env, tmp_path / "server.log", api_key="page-test-key")
    try:
        page = httpx.get(f"{server.url}/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert 'id="root"' in page.text
        script = httpx.get(f"{server.url}/assets/app-1.js")
        assert script.status_code == 200 and "robopt page" in script.text
        for escape in ("/assets/../../secret.txt", "/assets/%2e%2e/%2e%2e/secret.txt", "/assets/missing.js"):
            refused = httpx.get(f"{server.url}{escape}")
            assert refused.status_code == 404 and "not part of the page" not in refused.text, escape
        assert httpx.get(f"{server.url}/api/v1/models").status_code == 401  # the page is open, the API is not
        with server.client() as client:
            assert client.get("/models").status_code == 200
            assert client.get("/no-such-route").json()["code"] == "not_found"
        assert httpx.get(f"{server.url}/docs").status_code == 200
    finally:
        server.stop()


def test_an_unbuilt_page_is_a_404_that_says_how_to_build_it(tmp_path: Path) -> None:
    env = server_env(tmp_path / "data", frontend_dir=str(tmp_path / "never-built"))
    server = start_server(env, tmp_path / "server.log")
    try:
        answer = httpx.get(f"{server.url}/")
        assert answer.status_code == 404
        body = answer.json()
        assert body["code"] == "not_found" and "npm run build" in body["hint"]
    finally:
        server.stop()
