"""The history search of the console: versions by model, state and time range, and the SQL that ran.

    found = search(db, Filters(model="intent", states=("rolled_back",), since=..., until=...))
    found.rows        # one dict per version, newest change first
    found.sql         # the statement as run, with its values written in, for psql or sqlite3

Why show the SQL: the console answers the common question; the next one (join the decisions, group
by day) starts from a statement that already works on this database. The statement is run with
bound parameters; `sql` is the same statement compiled for the database's dialect with the values
written in (times as the database stores them: UTC).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select

from control_plane.store.database import Database
from control_plane.store.models import ModelRow, State, VersionRow

LIMIT = 500


@dataclass(frozen=True)
class Filters:
    model: str | None = None
    states: tuple[str, ...] = ()
    since: datetime | None = None  # aware UTC
    until: datetime | None = None


@dataclass(frozen=True)
class Found:
    rows: list[dict[str, Any]]
    sql: str
    truncated: bool


def statement(filters: Filters) -> Select:
    m, v = ModelRow.__table__.alias("m"), VersionRow.__table__.alias("v")
    query = select(
        m.c.name.label("model"),
        v.c.version,
        v.c.state,
        v.c.is_stable,
        v.c.quality_metric,
        v.c.quality_value,
        v.c.discovered_at,
        v.c.state_changed_at,
        v.c.reason,
    ).select_from(v.join(m, m.c.id == v.c.model_id))
    if filters.model:
        query = query.where(m.c.name == filters.model)
    states = [State(s).value for s in filters.states]
    if states:
        query = query.where(v.c.state.in_(states))
    if filters.since is not None:
        query = query.where(v.c.state_changed_at >= filters.since)
    if filters.until is not None:
        query = query.where(v.c.state_changed_at <= filters.until)
    return query.order_by(v.c.state_changed_at.desc(), m.c.name, v.c.version.desc()).limit(LIMIT)


def literal_sql(db: Database, query: Select) -> str:
    """`query` as text for this database's dialect, with every value written in."""
    compiled = query.compile(dialect=db.engine.dialect, compile_kwargs={"literal_binds": True})
    return str(compiled).strip() + ";"


def search(db: Database, filters: Filters) -> Found:
    query = statement(filters)
    with db.tx("search the history") as session:
        rows = [dict(row._mapping) for row in session.execute(query)]
    return Found(rows=rows, sql=literal_sql(db, query), truncated=len(rows) >= LIMIT)
