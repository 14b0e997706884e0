"""The checkpointer on a real PostgreSQL: several jobs open it at once on a fresh database, checkpoints written on
one connection are listed and read back (strictly deserialized) on another, and nothing lands in the data dir.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.base import empty_checkpoint
from pydantic import BaseModel

from graph.checkpoint import open_checkpointer
from graph.state import Attempt, JobOptions
from tests.postgres_support import connect
from tools.errors import ConfigurationError


class Intruder(BaseModel):
    """A type the state does not declare."""

    command: str = "rm -rf /"


def _config(thread_id: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}


async def _write(data_dir: Path, url: str, thread_id: str, values: dict[str, Any]) -> str:
    """Store one checkpoint of `thread_id` holding `values`; return its id."""
    async with open_checkpointer(data_dir, url) as saver:
        checkpoint = empty_checkpoint()
        checkpoint["channel_values"] = values
        checkpoint["channel_versions"] = {name: 1 for name in values}
        stored = await saver.aput(
            _config(thread_id), checkpoint, {"source": "input", "step": 0}, checkpoint["channel_versions"]
        )
        return str(stored["configurable"]["checkpoint_id"])


def test_jobs_opening_at_once_set_up_one_schema_and_share_checkpoints(
    postgres_url: str, data_dir: Path
) -> None:
    attempt = Attempt(
        index=1,
        parent_version="v0001",
        steps=[{"type": "ort_int8_dynamic"}],
        status="accepted",
        reason="faster",
    )

    async def scenario() -> tuple[list[str], list[Any], Any]:
        # six jobs open their checkpointer on an empty database at once: each runs setup() (the advisory lock
        # makes them take turns) and writes on its own connection
        ids = await asyncio.gather(
            *(
                _write(data_dir, postgres_url, f"job-{i}", {"options": JobOptions(), "attempts": [attempt]})
                for i in range(6)
            )
        )
        async with open_checkpointer(data_dir, postgres_url) as saver:
            listed = [item async for item in saver.alist(_config("job-3"))]
            latest = await saver.aget_tuple(_config("job-3"))
        return ids, listed, latest

    ids, listed, latest = asyncio.run(scenario())
    assert len(set(ids)) == 6
    assert [item.config["configurable"]["checkpoint_id"] for item in listed] == [ids[3]]
    values = latest.checkpoint["channel_values"]
    assert values["attempts"] == [attempt] and isinstance(values["options"], JobOptions)
    with connect(postgres_url) as connection:
        rows = connection.execute(
            "SELECT thread_id, checkpoint_id FROM checkpoints ORDER BY thread_id"
        ).fetchall()
        migrations = connection.execute(
            "SELECT count(*), count(DISTINCT v) FROM checkpoint_migrations"
        ).fetchone()
    assert rows == [(f"job-{i}", ids[i]) for i in range(6)]
    assert migrations[0] == migrations[1] > 0, "each migration recorded once"
    assert list(data_dir.iterdir()) == [], "no SQLite checkpoint file beside PostgreSQL"


def test_unknown_types_stay_data_on_postgres(postgres_url: str, data_dir: Path) -> None:
    async def scenario() -> Any:
        await _write(data_dir, postgres_url, "intruded", {"x": Intruder()})
        async with open_checkpointer(data_dir, postgres_url) as saver:
            return await saver.aget_tuple(_config("intruded"))

    restored = asyncio.run(scenario()).checkpoint["channel_values"]["x"]
    assert not isinstance(restored, Intruder) and restored == {"command": "rm -rf /"}


@pytest.mark.parametrize("form", ["postgres://", "postgresql+psycopg://"])
def test_every_postgres_url_form_reaches_the_same_checkpoints(
    postgres_url: str, data_dir: Path, form: str
) -> None:
    other_form = postgres_url.replace("postgresql://", form, 1)
    written = asyncio.run(_write(data_dir, postgres_url, "job", {"attempts": []}))

    async def read_back() -> Any:
        async with open_checkpointer(data_dir, other_form) as saver:
            return await saver.aget_tuple(_config("job"))

    assert asyncio.run(read_back()).config["configurable"]["checkpoint_id"] == written


def test_an_unreachable_or_non_postgres_url_is_a_configuration_error(
    postgres_server: Any, data_dir: Path
) -> None:
    async def open_with(url: str) -> None:
        async with open_checkpointer(data_dir, url):
            pass

    with pytest.raises(ConfigurationError, match="cannot connect to the checkpoint database") as caught:
        asyncio.run(open_with(postgres_server.url("no_such_database")))
    assert "ROBOPT_CHECKPOINT_URL" in caught.value.hint
    with pytest.raises(ConfigurationError, match="must name a PostgreSQL database"):
        asyncio.run(open_with(f"sqlite:///{data_dir / 'checkpoints.db'}"))
    assert list(data_dir.iterdir()) == []
