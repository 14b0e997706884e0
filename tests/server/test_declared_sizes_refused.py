"""The seven files that used to crash (forged SafeTensors shapes, a 4x10^15-byte ONNX tensor, a config.json naming
a function as its architecture) exit 2 with one line from the console script and are a 422 over HTTP."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.bad_corpus import BadCase, build_bad_corpus
from tests.server.api_support import Server, server_env, start_server

pytestmark = pytest.mark.integration
FORGED = (
    "shape_negative.safetensors",
    "shape_string.safetensors",
    "shape_null.safetensors",
    "shape_overflowing.safetensors",
    "huge_input.onnx",
    "huge_external_data",
    "hf_function_arch",
    "hf_config_arch",
)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("declared-sizes")


@pytest.fixture(scope="module")
def cases(root: Path) -> dict[str, BadCase]:
    return {case.name: case for case in build_bad_corpus(root / "files", root / "code-ran.marker")}


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[Server]:
    running = start_server(server_env(root / "data"), root / "server.log")
    yield running
    running.stop()


def _upload_file(case: BadCase, root: Path) -> Path:
    """The file to upload: the case itself, or a zip of it when it is a directory."""
    if case.path.is_file():
        return case.path
    return Path(shutil.make_archive(str(root / "zips" / case.name), "zip", case.path.parent, case.path.name))


def test_console_script_refuses_each_with_one_line(cases: dict[str, BadCase], tmp_path: Path) -> None:
    robopt = Path(sys.executable).with_name("robopt")
    for name in ("huge_input.onnx", "shape_null.safetensors", "hf_function_arch"):
        case = cases[name]
        result = subprocess.run(
            [str(robopt), "--data-dir", str(tmp_path / "data"), "analyze", str(case.path)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 2, (name, result.stderr)
        assert (
            "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
        ), result.stderr
        assert f"[{case.error.code}]" in result.stderr and case.fragment in result.stderr, result.stderr


@pytest.mark.parametrize("name", FORGED)
def test_upload_is_a_422_with_code_message_and_hint(
    server: Server, cases: dict[str, BadCase], root: Path, name: str
) -> None:
    case = cases[name]
    upload = _upload_file(case, root)
    with server.client() as client:
        response = client.post("/models", files={"file": (upload.name, upload.read_bytes())})
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["code"] == case.error.code and case.fragment in error["message"], error
    assert set(error) == {"code", "message", "detail", "hint"}
    assert not (root / "code-ran.marker").exists()
