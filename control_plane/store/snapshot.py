"""Reading the reconciler's whole picture at once: every model, every version, every open rollout.

Why a few plain SELECTs and no joins: the version numbers a rollout names are looked up among the
versions already read, so one pass costs the same few statements however many models there are, and
everything it sees was true at the same moment (one transaction).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from control_plane.store.models import ModelRow, ReplicaRow, RolloutRow, RolloutStepRow, VersionRow
from control_plane.store.records import (
    ModelRecord,
    ReplicaRecord,
    RolloutRecord,
    RolloutStepRecord,
    StoreSnapshot,
    VersionRecord,
)

__all__ = ["StoreSnapshot", "read_snapshot"]


def read_snapshot(session: Session, *, taken_at: datetime) -> StoreSnapshot:
    models = session.scalars(select(ModelRow).order_by(ModelRow.name)).all()
    names = {m.id: m.name for m in models}
    versions = [
        VersionRecord.from_row(v, model=names[v.model_id])
        for v in session.scalars(select(VersionRow).order_by(VersionRow.model_id, VersionRow.version))
    ]
    by_id = {v.id: v for v in versions}
    rollouts = session.scalars(select(RolloutRow).where(RolloutRow.ended_at.is_(None)).order_by(RolloutRow.id)).all()
    steps = _current_steps(session)
    replicas = session.scalars(select(ReplicaRow).order_by(ReplicaRow.name)).all()
    return StoreSnapshot(
        models={m.name: ModelRecord(m.name, m.kind, m.pinned_version, bool(m.automation_paused)) for m in models},
        versions=tuple(sorted(versions, key=lambda v: (v.model, v.version))),
        open_rollouts=tuple(
            RolloutRecord.from_row(
                r,
                model=names[r.model_id],
                candidate=by_id[r.candidate_version_id].version,
                stable=by_id[r.stable_version_id].version if r.stable_version_id is not None else None,
            )
            for r in rollouts
        ),
        taken_at=taken_at,
        steps={s.rollout_id: s for s in steps},
        replicas={r.name: ReplicaRecord.from_row(r) for r in replicas},
    )


def _current_steps(session: Session) -> list[RolloutStepRecord]:
    """The latest step of every open rollout, in one statement."""
    latest = (
        select(RolloutStepRow.rollout_id, func.max(RolloutStepRow.step).label("step"))
        .join(RolloutRow, RolloutRow.id == RolloutStepRow.rollout_id)
        .where(RolloutRow.ended_at.is_(None))
        .group_by(RolloutStepRow.rollout_id)
        .subquery()
    )
    query = select(RolloutStepRow).join(
        latest, (RolloutStepRow.rollout_id == latest.c.rollout_id) & (RolloutStepRow.step == latest.c.step)
    )
    return [RolloutStepRecord.from_row(row) for row in session.scalars(query)]
