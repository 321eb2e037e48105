"""Reading the history: typed records for the control plane, one snapshot per reconciler pass.

Why reads apart from writes: reading never needs the lifecycle's rules, and the reconciler's whole
picture (`snapshot`) is a read of its own, a handful of SELECTs in one transaction instead of a query
per question.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from control_plane.store import reports, rows
from control_plane.store.database import Database
from control_plane.store.models import (
    ROLES,
    AlertRow,
    DecisionRow,
    ModelRow,
    ProbeWindowRow,
    State,
    VersionRow,
)
from control_plane.store.records import AlertRecord, DecisionRecord, ProbeWindowRecord, RolloutRecord, VersionRecord
from control_plane.store.snapshot import StoreSnapshot, read_snapshot
from control_plane.store.values import aware, one_of, state


def _versions_query(model: str | None, states: Iterable[State] | None, since: datetime | None) -> Select:
    query = select(VersionRow, ModelRow.name).join(ModelRow, ModelRow.id == VersionRow.model_id)
    if model is not None:
        query = query.where(ModelRow.name == model)
    if states is not None:
        query = query.where(VersionRow.state.in_([state(s).value for s in states]))
    if since is not None:
        query = query.where(VersionRow.state_changed_at >= aware(since, where="since"))
    return query.order_by(ModelRow.name, VersionRow.version)


def _versions(session: Session, query: Select) -> list[VersionRecord]:
    return [VersionRecord.from_row(row, model=name) for row, name in session.execute(query)]


class Reads:
    """Every read of the history; each method is one short transaction returning frozen records."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- versions -------------------------------------------------------------------------------
    def get_version(self, model: str, version: int) -> VersionRecord | None:
        with self.db.tx(f"read {model} v{version}") as session:
            row = rows.version_row(session, model, version)
            return VersionRecord.from_row(row, model=model) if row is not None else None

    def versions(
        self,
        *,
        model: str | None = None,
        states: Iterable[State] | None = None,
        since: datetime | None = None,
    ) -> list[VersionRecord]:
        """Versions ordered by model and number; `since` keeps those whose state changed at or after it."""
        query = _versions_query(model, states, since)
        with self.db.tx("list versions") as session:
            return _versions(session, query)

    def stable(self, model: str) -> VersionRecord | None:
        query = (
            select(VersionRow)
            .join(ModelRow, ModelRow.id == VersionRow.model_id)
            .where(ModelRow.name == model, VersionRow.is_stable.is_(True))
        )
        with self.db.tx(f"read the stable version of {model}") as session:
            row = session.scalars(query).one_or_none()
            return VersionRecord.from_row(row, model=model) if row is not None else None

    def pinned(self, model: str) -> int | None:
        with self.db.tx(f"read the pin of {model}") as session:
            row = rows.model_row(session, model)
            return row.pinned_version if row is not None else None

    def open_rollout(self, model: str, candidate: int) -> RolloutRecord | None:
        with self.db.tx(f"read the open rollout of {model} v{candidate}") as session:
            return rows.open_rollout(session, model, candidate)

    # -- evidence -------------------------------------------------------------------------------
    def probe_windows(
        self,
        model: str,
        version: int,
        *,
        role: str | None = None,
        rollout_id: int | None = None,
        since: datetime | None = None,
        step: int | None = None,
    ) -> list[ProbeWindowRecord]:
        """Windows of one version (of one rollout step, when given), oldest first."""
        query = (
            select(ProbeWindowRow)
            .join(VersionRow, VersionRow.id == ProbeWindowRow.version_id)
            .join(ModelRow, ModelRow.id == VersionRow.model_id)
            .where(ModelRow.name == model, VersionRow.version == version)
        )
        if role is not None:
            query = query.where(ProbeWindowRow.role == one_of(role, ROLES, where="role"))
        if rollout_id is not None:
            query = query.where(ProbeWindowRow.rollout_id == rollout_id)
        if since is not None:
            query = query.where(ProbeWindowRow.started_at >= aware(since, where="since"))
        if step is not None:
            query = query.where(ProbeWindowRow.step == step)
        query = query.order_by(ProbeWindowRow.started_at, ProbeWindowRow.id)
        with self.db.tx(f"read probe windows of {model} v{version}") as session:
            return [ProbeWindowRecord.from_row(r, model=model, version=version) for r in session.scalars(query)]

    def decisions(self, model: str, version: int) -> list[DecisionRecord]:
        query = (
            select(DecisionRow)
            .join(VersionRow, VersionRow.id == DecisionRow.version_id)
            .join(ModelRow, ModelRow.id == VersionRow.model_id)
            .where(ModelRow.name == model, VersionRow.version == version)
            .order_by(DecisionRow.at, DecisionRow.id)
        )
        with self.db.tx(f"read decisions on {model} v{version}") as session:
            return [DecisionRecord.from_row(r, model=model, version=version) for r in session.scalars(query)]

    def pending_alerts(self) -> list[AlertRecord]:
        query = select(AlertRow).where(AlertRow.status == "pending").order_by(AlertRow.at, AlertRow.id)
        with self.db.tx("read pending alerts") as session:
            return [AlertRecord.from_row(r) for r in session.scalars(query)]

    # -- reports and the reconciler's picture ----------------------------------------------------
    def history(self, *, model: str | None = None, since: datetime | None = None) -> list[dict[str, Any]]:
        """One JSON-serialisable dict per version, for `shepherd history` and scripts."""
        query = _versions_query(model, None, since)
        now = self.db.now()
        with self.db.tx("read the history") as session:
            versions = _versions(session, query)
            return reports.history_rows(session, versions, now) if versions else []

    def status(self) -> list[dict[str, Any]]:
        """Per model: the stable version, the candidate in flight (preflight or canary) and its rollout."""
        with self.db.tx("read the status") as session:
            return reports.status_rows(session)

    def snapshot(self) -> StoreSnapshot:
        """Every model, every version and every open rollout, in three SELECTs in one transaction."""
        taken_at = self.db.now()
        with self.db.tx("read a snapshot") as session:
            return read_snapshot(session, taken_at=taken_at)
