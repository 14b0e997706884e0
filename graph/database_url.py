"""One PostgreSQL URL for both stores: the history (SQLAlchemy) and the checkpoints (psycopg) spell it differently.

SQLAlchemy picks its driver from the scheme (`postgresql+psycopg://`; a bare `postgresql://` means psycopg2,
which robopt does not install), while LangGraph's Postgres saver hands the URL to libpq, which knows only
`postgresql://` and `postgres://`. Both settings accept any of the three forms and are normalised here, so a
user can set `ROBOPT_HISTORY_URL` and `ROBOPT_CHECKPOINT_URL` to the same string.
"""

from __future__ import annotations

from tools.errors import ConfigurationError

POSTGRES_SCHEMES = ("postgres", "postgresql")
HISTORY_DRIVER = "postgresql+psycopg"


def _scheme(url: str) -> str:
    """The URL's scheme, lower-cased ('' when it has none)."""
    return url.split("://", 1)[0].lower() if "://" in url else ""


def is_postgres_url(url: str | None) -> bool:
    """Whether `url` names a PostgreSQL database (`postgres://`, `postgresql://` or `postgresql+<driver>://`)."""
    if not url:
        return False
    scheme = _scheme(url)
    return scheme in POSTGRES_SCHEMES or scheme.startswith("postgresql+")


def checkpoint_dsn(url: str) -> str:
    """The libpq form (`postgresql://...`) of a PostgreSQL URL, for the checkpointer; anything else is refused."""
    if not is_postgres_url(url):
        raise ConfigurationError(
            f"the checkpoint URL must name a PostgreSQL database, got scheme {_scheme(url) or '(none)'!r}",
            hint="set ROBOPT_CHECKPOINT_URL to postgresql://user:password@host:5432/db, or unset it for "
            "SQLite in the data directory",
        )
    return "postgresql://" + url.split("://", 1)[1]


def history_sqlalchemy_url(url: str) -> str:
    """The SQLAlchemy form of a history URL: a bare PostgreSQL scheme gets the psycopg 3 driver; others pass."""
    if _scheme(url) in POSTGRES_SCHEMES:
        return f"{HISTORY_DRIVER}://" + url.split("://", 1)[1]
    return url
