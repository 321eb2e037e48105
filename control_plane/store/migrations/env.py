"""Alembic environment for the SQL history.

Run programmatically (control_plane.store.database.migrate) with the connection handed over in
`config.attributes["connection"]`; with the `sqlalchemy.url` option set it also works for Alembic's
own command line. On PostgreSQL a transaction-scoped advisory lock serialises processes that start
at the same time against a fresh database, so two of them never race to create the same tables.
"""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection

from control_plane.store.models import Base

MIGRATION_LOCK = 0x5E9E_0DB  # any constant shared by every shepherd process


def _ours(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Autogenerate looks only at shepherd's tables, not APScheduler's job table in the same database."""
    return not (type_ == "table" and reflected and compare_to is None)


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_object=_ours,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        context.run_migrations()


def run_migrations() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url or pass a connection in config.attributes['connection']")
    engine = create_engine(url)
    with engine.begin() as own:
        _run(own)
    engine.dispose()


run_migrations()
