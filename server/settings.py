"""Settings, read in this order: environment (`ROBOPT_*`), `.env`, `config/default.json`, code defaults.

Created through the cached `get_settings()` so tests can override them; nothing is read at import time.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from graph.database_url import is_postgres_url
from tools.errors import ConfigurationError

CONFIG_FILE = Path("config/default.json")


class JsonConfigSource(PydanticBaseSettingsSource):
    """Read settings from `config/default.json` (relative to the working directory), if present."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path = CONFIG_FILE) -> None:
        super().__init__(settings_cls)
        self.path = path
        self.data: dict[str, Any] = {}
        if path.is_file():
            try:
                self.data = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise ConfigurationError(f"{path} is not valid JSON: {exc}") from None

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {key: value for key, value in self.data.items() if key in self.settings_cls.model_fields}


class Settings(BaseSettings):
    """robopt's settings; every field is listed in `.env.example` under its `ROBOPT_` name."""

    model_config = SettingsConfigDict(env_prefix="ROBOPT_", env_file=".env", extra="ignore")

    data_dir: Path = Field(
        default=Path("data"), description="Root for versions, uploads, caches and databases."
    )
    log_level: str = Field(default="WARNING", description="Level of the JSON logs on stderr.")
    latency_threads: int = Field(default=1, ge=1, le=256, description="Threads for latency measurement.")
    latency_warmup: int = Field(default=5, ge=0, le=1000, description="Warm-up runs before timing.")
    latency_iterations: int = Field(default=50, ge=3, le=100_000, description="Timed runs (upper bound).")
    latency_timeout_s: float = Field(default=300.0, gt=0, description="Kill a measurement child after this.")
    max_archive_bytes: int = Field(
        default=32 * 1024**3, gt=0, description="Cap on bytes unpacked from an archive."
    )
    max_archive_files: int = Field(default=10_000, gt=0, description="Cap on files unpacked from an archive.")
    history_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the optimization history (default: SQLite <data_dir>/optimization_history.db); "
        "postgresql:// is read as postgresql+psycopg://, so it can be the checkpoint URL too.",
    )
    checkpoint_url: str | None = Field(
        default=None,
        description="PostgreSQL URL for graph checkpoints (default: SQLite <data_dir>/checkpoints.db); "
        "postgresql://, postgres:// or postgresql+psycopg://, so it can be the history URL too.",
    )
    reasoner: Literal["rules", "openai"] = Field(
        default="rules", description="Who reasons: the offline expert rules, or an OpenAI-compatible LLM."
    )
    max_attempts: int = Field(default=8, ge=1, le=200, description="Optimization attempts per job.")
    time_budget_s: float = Field(default=1800.0, gt=0, description="Wall time per job, seconds.")
    attempt_memory_mb: int | None = Field(
        default=None, gt=0, description="Memory limit (RSS, MB) of one attempt's child process; unset: none."
    )
    reference_cache_dir: Path | None = Field(
        default=None, description="Where built reference models are cached (default: <data_dir>/reference)."
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="Bearer key the HTTP service requires on every route but /health; unset: no auth "
        "(then the service only serves on a loopback address).",
    )
    host: str = Field(default="127.0.0.1", description="Address `robopt serve` binds.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port `robopt serve` binds.")
    max_upload_bytes: int = Field(
        default=8 * 1024**3, gt=0, description="Largest model or data upload the service accepts, bytes."
    )
    max_concurrent_jobs: int = Field(default=1, ge=1, le=64, description="Jobs the service runs at once.")
    max_queued_jobs: int = Field(
        default=32, ge=0, le=10_000, description="Jobs that may wait for a slot; beyond that: 503."
    )
    allow_trusted_loads: bool = Field(
        default=False,
        description="Let API clients set trust_pickle / trust_remote_code (code from an upload runs here).",
    )
    frontend_dir: Path = Field(
        default=Path(__file__).resolve().parents[1] / "frontend" / "dist",
        description="The built web page (`npm run build` in frontend/) that `robopt serve` shows at `/`.",
    )
    min_free_memory_mb: int = Field(
        default=512,
        ge=0,
        description="Memory admission keeps this much free after a job's estimated needs; else 503.",
    )

    @field_validator(
        "reference_cache_dir", "history_url", "checkpoint_url", "attempt_memory_mb", "api_key", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value in ("", None) else value

    @field_validator("checkpoint_url")
    @classmethod
    def _postgres_checkpoints(cls, value: str | None) -> str | None:
        if value is not None and not is_postgres_url(value):
            raise ValueError(
                "must be a PostgreSQL URL (postgresql://user:password@host:5432/db), or unset for SQLite"
            )
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(f"unknown log level {value!r}")
        return value.upper()

    @property
    def reference_dir(self) -> Path:
        """The reference-model cache directory."""
        return self.reference_cache_dir or self.data_dir / "reference"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            JsonConfigSource(settings_cls),
            file_secret_settings,
        )


def load_settings(**overrides: Any) -> Settings:
    """Build settings, turning pydantic's validation errors into a one-line ConfigurationError."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ConfigurationError(
            f"invalid setting {where}: {first['msg']}",
            hint=f"check ROBOPT_{where.upper()} in the environment, .env or config/default.json",
        ) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings (cached; tests call `get_settings.cache_clear()`)."""
    return load_settings()
