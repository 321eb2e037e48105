"""What the history keeps about the fleet: rollout steps with their roles, replica health, metric marks.

Why apart from the lifecycle: none of these rows moves a version's state. A step records which
replica had which role when (every rollout can be replayed replica by replica); a replica's health
row changes only when it goes down or comes back; a metric mark is the end of the last window read
from one replica for one model, so the next window, even of another process, starts there.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import select

from control_plane.errors import StoreError
from control_plane.store.database import Database
from control_plane.store.models import STRATEGIES, MetricMarkRow, ReplicaRow, RolloutRow, RolloutStepRow
from control_plane.store.records import RolloutStepRecord
from control_plane.store.values import aware, clean_json, one_of

REPLICA_ROLES = ("canary", "baseline", "stable", "bluegreen")


class FleetLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- rollout steps --------------------------------------------------------------------------
    def add_step(
        self, rollout_id: int, step: int, *, strategy: str, share: float, roles: dict[str, str], reason: str
    ) -> RolloutStepRecord:
        """Record step `step` of a rollout; adding a step that exists returns the stored one (a retried pass)."""
        one_of(strategy, STRATEGIES, where="strategy")
        for replica, role in roles.items():
            one_of(role, REPLICA_ROLES, where=f"role of replica {replica}")
        if not 0.0 <= share <= 1.0:
            raise StoreError(f"rollout {rollout_id} step {step}: share {share!r} is not in [0, 1]")
        with self.db.tx(f"record step {step} of rollout {rollout_id}") as session:
            if session.get(RolloutRow, rollout_id) is None:
                raise StoreError(f"unknown rollout {rollout_id}")
            existing = session.scalars(
                select(RolloutStepRow).where(RolloutStepRow.rollout_id == rollout_id, RolloutStepRow.step == step)
            ).first()
            if existing is not None:
                return RolloutStepRecord.from_row(existing)
            row = RolloutStepRow(
                rollout_id=rollout_id,
                step=step,
                strategy=strategy,
                started_at=self.db.now(),
                share=float(share),
                roles=dict(sorted(roles.items())),
                reason=reason,
            )
            session.add(row)
            session.flush()
            return RolloutStepRecord.from_row(row)

    def steps(self, rollout_id: int) -> list[RolloutStepRecord]:
        """Every step of a rollout, first first."""
        query = select(RolloutStepRow).where(RolloutStepRow.rollout_id == rollout_id).order_by(RolloutStepRow.step)
        with self.db.tx(f"read the steps of rollout {rollout_id}") as session:
            return [RolloutStepRecord.from_row(row) for row in session.scalars(query)]

    # -- replica health -------------------------------------------------------------------------
    def record_health(self, changes: Iterable[tuple[str, str, str, bool, str | None]]) -> None:
        """Write (name, grpc, metrics, reachable, error) rows that changed, in one transaction."""
        changes = list(changes)
        if not changes:
            return
        with self.db.tx("record the health of the fleet's replicas") as session:
            now = self.db.now()
            for name, grpc, metrics, reachable, error in changes:
                row = session.get(ReplicaRow, name)
                if row is None:
                    row = ReplicaRow(name=name, grpc=grpc, metrics=metrics, reachable=reachable, changed_at=now)
                    session.add(row)
                row.grpc, row.metrics, row.reachable, row.changed_at = grpc, metrics, reachable, now
                row.last_error = error if not reachable else row.last_error

    # -- metric marks ---------------------------------------------------------------------------
    def marks(self, model: str, replicas: Iterable[str]) -> dict[str, tuple[datetime, dict[str, Any]]]:
        """The stored end of the last window read for `model` on each of `replicas` (absent: none yet)."""
        names = list(replicas)
        query = select(MetricMarkRow).where(MetricMarkRow.model == model, MetricMarkRow.replica.in_(names))
        with self.db.tx(f"read the metric marks of {model}") as session:
            return {row.replica: (row.taken_at, dict(row.counters or {})) for row in session.scalars(query)}

    def put_marks(self, model: str, marks: dict[str, tuple[datetime, dict[str, Any]]]) -> None:
        """Replace the marks of `model` on the given replicas, in one transaction."""
        if not marks:
            return
        with self.db.tx(f"store the metric marks of {model}") as session:
            for replica, (taken_at, counters) in marks.items():
                row = session.get(MetricMarkRow, (replica, model))
                clean = clean_json(counters, where="counters")
                at = aware(taken_at, where="taken_at")
                if row is None:
                    session.add(MetricMarkRow(replica=replica, model=model, taken_at=at, counters=clean))
                else:
                    row.taken_at, row.counters = at, clean
