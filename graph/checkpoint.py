"""The checkpointer: SQLite (async) at `<data>/checkpoints.db` by default, Postgres when a URL is configured.

Deserialization is strict: only the state's own types (`graph.state.STATE_TYPES`) are revived from a
checkpoint; anything else in the database is refused.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from graph.state import STATE_TYPES
from tools.errors import MissingDependencyError

CHECKPOINT_FILE = "checkpoints.db"


def state_serializer() -> JsonPlusSerializer:
    """A serializer that revives only the state's types (and LangGraph's built-in safe types)."""
    allowed = [(cls.__module__, cls.__name__) for cls in STATE_TYPES]
    return JsonPlusSerializer(allowed_msgpack_modules=allowed)


@asynccontextmanager
async def open_checkpointer(data_dir: Path, url: str | None = None) -> AsyncIterator[BaseCheckpointSaver]:
    """Open the job checkpointer for the duration of the block."""
    if url and url.startswith(("postgres://", "postgresql://")):
        try:
            from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver  # type: ignore[import-not-found]
        except ImportError:
            raise MissingDependencyError(
                "a Postgres checkpoint URL is configured but langgraph-checkpoint-postgres is not installed",
                hint="pip install 'langgraph-checkpoint-postgres' 'psycopg[binary]', or unset ROBOPT_CHECKPOINT_URL",
            ) from None
        async with AsyncPostgresSaver.from_conn_string(url, serde=state_serializer()) as saver:
            await saver.setup()
            yield saver
        return
    import aiosqlite
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    path = Path(data_dir) / CHECKPOINT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    async with aiosqlite.connect(str(path)) as conn:
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA busy_timeout=30000")
        saver = AsyncSqliteSaver(conn, serde=state_serializer())
        await saver.setup()
        yield saver
