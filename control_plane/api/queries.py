"""The reads of the history the API needs and the Store does not have: rollouts, transitions, replicas.

Why here and not in store/reads.py: only the API asks these questions (a list of rollouts for a page,
one rollout by id, a version's transitions with their actors, the fleet's health rows); they reuse the
store's own queries (`rows.rollout_query`) and hand out its frozen records, never ORM rows.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from control_plane.store import rows
from control_plane.store.database import Database
from control_plane.store.models import ModelRow, ReplicaRow, RolloutRow, TransitionRow, VersionRow
from control_plane.store.records import ReplicaRecord, RolloutRecord


def _rollout(found: Any) -> RolloutRecord:
    row, name, candidate, stable = found
    return RolloutRecord.from_row(row, model=name, candidate=candidate, stable=stable)


def rollouts(
    db: Database, *, model: str | None = None, open_only: bool = False, limit: int = 100
) -> list[RolloutRecord]:
    """Rollouts, newest first."""
    query = rows.rollout_query()
    if model is not None:
        query = query.where(ModelRow.name == model)
    if open_only:
        query = query.where(RolloutRow.ended_at.is_(None))
    query = query.order_by(RolloutRow.started_at.desc(), RolloutRow.id.desc()).limit(limit)
    with db.tx("list rollouts") as session:
        return [_rollout(found) for found in session.execute(query)]


def rollout(db: Database, rollout_id: int) -> RolloutRecord | None:
    with db.tx(f"read rollout {rollout_id}") as session:
        found = session.execute(rows.rollout_query().where(RolloutRow.id == rollout_id)).first()
        return _rollout(found) if found is not None else None


def transitions(db: Database, model: str, version: int) -> list[dict[str, Any]]:
    """Every state change of a version, oldest first, with who made it and why."""
    query = (
        select(TransitionRow)
        .join(VersionRow, VersionRow.id == TransitionRow.version_id)
        .join(ModelRow, ModelRow.id == VersionRow.model_id)
        .where(ModelRow.name == model, VersionRow.version == version)
        .order_by(TransitionRow.at, TransitionRow.id)
    )
    with db.tx(f"read the transitions of {model} v{version}") as session:
        return [
            {
                "id": t.id,
                "model": model,
                "version": version,
                "from_state": t.from_state,
                "to_state": t.to_state,
                "at": t.at,
                "reason": t.reason,
                "actor": t.actor,
                "evidence": dict(t.evidence) if t.evidence is not None else None,
            }
            for t in session.scalars(query)
        ]


def replicas(db: Database) -> list[ReplicaRecord]:
    with db.tx("read the fleet's health") as session:
        return [ReplicaRecord.from_row(row) for row in session.scalars(select(ReplicaRow).order_by(ReplicaRow.name))]


def model_known(db: Database, name: str) -> bool:
    with db.tx(f"read model {name}") as session:
        return rows.model_row(session, name) is not None
