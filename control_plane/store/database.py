"""Opening the history database: engine, schema migrations, and errors translated at the boundary.

Why here and not in the store: the store reads as a list of small transactions; everything about
reaching the server (URL parsing, connect timeouts, SQLite pragmas, running Alembic, turning a
driver's exception into a StoreError that names the URL without its password) lives in one place.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from control_plane.clock import Clock, utc_now
from control_plane.errors import StoreError
from control_plane.store.values import aware

DEFAULT_URL = "sqlite:///shepherd.db"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
CONNECT_TIMEOUT_S = 5


def parse_url(url: str) -> URL:
    try:
        return make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise StoreError(f"not a database URL: {url!r} ({exc})") from exc


def mask_url(url: str | URL) -> str:
    """The URL with its password replaced by ***, safe for logs and error messages."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except (ArgumentError, ValueError):
        return "<unparsable URL>"
    return parsed.render_as_string(hide_password=True)


def cause_of(exc: BaseException) -> str:
    """The driver's own message (without the SQL statement SQLAlchemy appends), on one line."""
    inner = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    message = str(inner).strip().splitlines()
    return " ".join(line.strip() for line in message if line.strip()) or type(inner).__name__


@contextmanager
def translated(safe_url: str, doing: str) -> Iterator[None]:
    """Turn SQLAlchemy and driver errors into a StoreError naming the database and what was being done."""
    try:
        yield
    except StoreError:
        raise
    except SQLAlchemyError as exc:
        raise StoreError(f"{safe_url}: could not {doing}: {cause_of(exc)}") from exc


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Foreign keys are off by default in SQLite; WAL lets `shepherd status` read while `run` writes.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA journal_mode=WAL")
    finally:
        cursor.close()


def make_engine(url: str) -> Engine:
    parsed = parse_url(url)
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
    try:
        engine = create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
    except (ArgumentError, ImportError, SQLAlchemyError) as exc:
        raise StoreError(f"{mask_url(parsed)}: cannot open the database: {cause_of(exc)}") from exc
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def alembic_config() -> Config:
    """An Alembic config pointing into the package, so no alembic.ini is needed at run time."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


_MIGRATING = threading.Lock()  # Alembic's `context` is process-global: one migration at a time per process


def migrate(engine: Engine, *, revision: str = "head") -> None:
    """Bring the schema to `revision` in one transaction, serialised against other processes.

    PostgreSQL runs DDL transactionally and env.py takes an advisory lock. SQLite's driver would
    commit each CREATE on its own, so the migration runs inside BEGIN IMMEDIATE instead: a second
    process starting on the same fresh file waits, then finds the schema at head.
    """
    config = alembic_config()
    with (
        _MIGRATING,
        translated(mask_url(engine.url), f"migrate the schema to {revision}"),
        engine.connect() as connection,
    ):
        if connection.dialect.name == "sqlite":
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        connection.commit()


def check_schema(engine: Engine) -> None:
    """Refuse a history whose schema is not at this shepherd's newest revision, without writing anything.

    Why: readers (`status`, `history`) must work on a read-only database or replica, so they do
    not migrate; reading a schema of another revision would give wrong answers instead.
    """
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    with translated(mask_url(engine.url), "read the schema revision"), engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    if current != head:
        raise StoreError(
            f"{mask_url(engine.url)}: the history's schema is at revision {current or 'none (empty)'}, "
            f"this shepherd reads {head}: run `shepherd tick` or `shepherd run` once, which migrate it"
        )


class Database:
    """One open history database: its engine, its clock, and short transactions on it.

    Why the clock lives here: every row the store writes is stamped with `now()`, and a runtime
    driven by a fake clock must write the times it reads.
    """

    def __init__(self, engine: Engine, *, clock: Clock = utc_now) -> None:
        self.engine = engine
        self.safe_url = mask_url(engine.url)
        self._clock = clock
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def now(self) -> datetime:
        return aware(self._clock(), where="the store's clock")

    @contextmanager
    def tx(self, doing: str) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back (and translated) when it raises."""
        with translated(self.safe_url, doing), self._sessions.begin() as session:
            yield session

    def close(self) -> None:
        self.engine.dispose()
