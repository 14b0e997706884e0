"""GET /api/v1/references (issue 17): the reference models a job can start from, listed behind the API key,
against a real `robopt serve` on 127.0.0.1, without building any of them."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.server.api_support import API, server_env, start_server
from tools.reference import REFERENCE_MODELS

pytestmark = pytest.mark.integration
KEY = "test-key-5e2a"


def test_references_are_listed_behind_the_key_without_building_any(tmp_path: Path) -> None:
    cache = tmp_path / "references"
    server = start_server(server_env(tmp_path / "data", cache), tmp_path / "server.log", api_key=KEY)
    try:
        anonymous = httpx.get(f"{server.url}{API}/references")
        assert anonymous.status_code == 401 and anonymous.json()["code"] == "unauthorized"
        with server.client() as client:
            response = client.get("/references")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["count"] == len(body["data"]) == len(REFERENCE_MODELS)
        listed = {entry["name"]: entry for entry in body["data"]}
        assert list(listed) == list(REFERENCE_MODELS)
        assert listed["vla"] == {
            "name": "vla",
            "description": REFERENCE_MODELS["vla"].description,
            "kind": "torch_policy",
            "format": "torch_state_dict",
            "trained": True,
            "task": "reaching",
            "simulator": "reaching",
        }
        assert listed["reacher"]["trained"] and listed["reacher"]["task"] is None
        assert listed["conv_policy"]["simulator"] == "reaching:single_target"
        assert (
            listed["reacher"]["simulator"] == "gym:Reacher-v5" and listed["hf_smolvlm"]["simulator"] is None
        )
        assert listed["hf_smolvlm"]["kind"] == "hf_directory" and not listed["hf_smolvlm"]["trained"]
        assert listed["hf_archives"]["format"] == "zip"
        assert not cache.exists() or not any(cache.iterdir()), "listing built a reference model"
    finally:
        server.stop()
