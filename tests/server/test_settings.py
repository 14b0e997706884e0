"""Settings come from environment, then .env, then config/default.json, then code defaults; bad values are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.settings import load_settings
from tools.errors import ConfigurationError


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for key in ("ROBOPT_DATA_DIR", "ROBOPT_LATENCY_THREADS", "ROBOPT_LOG_LEVEL"):
        monkeypatch.delenv(key, raising=False)
    (tmp_path / "config").mkdir()
    return tmp_path


def test_precedence_env_over_dotenv_over_json_over_defaults(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_settings().latency_threads == 1
    (workdir / "config" / "default.json").write_text(
        json.dumps({"latency_threads": 2, "data_dir": "from-json"})
    )
    assert load_settings().latency_threads == 2
    (workdir / ".env").write_text("ROBOPT_LATENCY_THREADS=3\n")
    assert load_settings().latency_threads == 3
    assert load_settings().data_dir == Path("from-json")
    monkeypatch.setenv("ROBOPT_LATENCY_THREADS", "4")
    assert load_settings().latency_threads == 4
    assert load_settings().reference_dir == Path("from-json") / "reference"


def test_invalid_values_raise_configuration_error(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROBOPT_LATENCY_THREADS", "0")
    with pytest.raises(ConfigurationError, match="latency_threads"):
        load_settings()
    monkeypatch.setenv("ROBOPT_LATENCY_THREADS", "1")
    (workdir / "config" / "default.json").write_text("{not json")
    with pytest.raises(ConfigurationError, match="not valid JSON"):
        load_settings()


def test_env_example_lists_every_setting() -> None:
    from server.settings import Settings

    example = (Path(__file__).resolve().parents[2] / ".env.example").read_text()
    for name in Settings.model_fields:
        assert f"ROBOPT_{name.upper()}" in example, name
