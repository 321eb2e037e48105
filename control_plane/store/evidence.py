"""What the control plane saw and said: probe windows, decisions, alert deliveries, manual actions.

Why apart from the lifecycle: these rows only ever get added (an alert's delivery status aside) and
never change a version's state; the one exception, a decision that causes a transition, is written
by `Lifecycle.transition` with `decision_row` from here, in the transition's own transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Integer
from sqlalchemy.orm import Session

from control_plane.alerts.events import ALERT_EVENTS
from control_plane.errors import StoreError
from control_plane.store import rows
from control_plane.store.database import Database
from control_plane.store.models import (
    ALERT_STATUSES,
    DECISION_OUTCOMES,
    MANUAL_ACTIONS,
    ROLES,
    AlertRow,
    DecisionRow,
    ManualActionRow,
    ProbeWindowRow,
    RolloutRow,
)
from control_plane.store.records import Decision
from control_plane.store.values import aware, clean_json, number, one_of

# The columns a window's `figures` may fill, read off the table so models.py stays the one list;
# the others are the window's identity and time, set from add_probe_window's own arguments.
WINDOW_IDENTITY = frozenset({"id", "version_id", "rollout_id", "role", "started_at", "ended_at", "raw"})
_FIGURES = [c for c in ProbeWindowRow.__table__.columns if c.name not in WINDOW_IDENTITY]
WINDOW_COLUMNS = tuple(c.name for c in _FIGURES)
INT_COLUMNS = frozenset(c.name for c in _FIGURES if isinstance(c.type, Integer))  # BigInteger included
JSON_COLUMNS = frozenset(c.name for c in _FIGURES if isinstance(c.type, JSON))


def clean_decision(decision: Decision) -> Decision:
    """The decision with its outcome checked and its checks and policy as plain JSON (StoreError if not)."""
    one_of(decision.outcome, DECISION_OUTCOMES, where="outcome")
    return Decision(
        outcome=decision.outcome,
        reason=decision.reason,
        checks=clean_json(decision.checks, where="checks"),
        policy=clean_json(decision.policy, where="policy"),
        rollout_id=decision.rollout_id,
    )


def decision_row(version_id: int, clean: Decision, *, at: datetime) -> DecisionRow:
    """The row for a decision already passed through `clean_decision`."""
    return DecisionRow(
        version_id=version_id,
        rollout_id=clean.rollout_id,
        at=at,
        outcome=clean.outcome,
        reason=clean.reason,
        checks=clean.checks,
        policy=clean.policy,
    )


def _added(session: Session, row: Any) -> int:
    session.add(row)
    session.flush()
    return int(row.id)


class EvidenceLog:
    """Appends evidence rows; every method is one short transaction and returns the new row's id."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add_probe_window(
        self,
        model: str,
        version: int,
        *,
        role: str,
        rollout_id: int | None,
        started_at: datetime,
        ended_at: datetime,
        figures: dict[str, Any],
    ) -> int:
        """Store one probe window; keys of `figures` are column names, any other key is kept under `raw`."""
        one_of(role, ROLES, where="role")
        start, end = aware(started_at, where="started_at"), aware(ended_at, where="ended_at")
        if end < start:
            raise StoreError(f"probe window of {model} v{version} ends ({end}) before it starts ({start})")
        values: dict[str, Any] = {}
        raw = dict(figures.get("raw") or {})
        for key, value in figures.items():
            if key == "raw":
                continue
            if key not in WINDOW_COLUMNS:
                raw[key] = value
            elif key in JSON_COLUMNS:
                values[key] = clean_json(value, where=key)
            else:
                values[key] = number(value, where=key, integer=key in INT_COLUMNS)
        if isinstance(values.get("samples"), list):
            values["samples"] = [s for s in values["samples"] if s is not None]
        clean_raw = clean_json(raw, where="raw")
        with self.db.tx(f"store a probe window of {model} v{version}") as session:
            row = rows.need_version(session, model, version, url=self.db.safe_url)
            if rollout_id is not None and session.get(RolloutRow, rollout_id) is None:
                raise StoreError(f"unknown rollout {rollout_id} for the probe window of {model} v{version}")
            return _added(
                session,
                ProbeWindowRow(
                    version_id=row.id,
                    rollout_id=rollout_id,
                    role=role,
                    started_at=start,
                    ended_at=end,
                    raw=clean_raw,
                    **values,
                ),
            )

    def add_decision(self, model: str, version: int, decision: Decision) -> int:
        """Store a judge's decision with every check and its figures, and the policy it applied.

        A decision that moves the version is better given to `Lifecycle.transition(decision=...)`,
        which stores both together or neither.
        """
        clean = clean_decision(decision)
        with self.db.tx(f"store a decision on {model} v{version}") as session:
            row = rows.need_version(session, model, version, url=self.db.safe_url)
            return _added(session, decision_row(row.id, clean, at=self.db.now()))

    def add_alert(self, *, event: str, model: str, version: int, channel: str, payload: dict[str, Any]) -> int:
        one_of(event, ALERT_EVENTS, where="event")
        clean = clean_json(payload, where="payload")
        with self.db.tx(f"store a {event} alert") as session:
            return _added(
                session,
                AlertRow(
                    at=self.db.now(),
                    event=event,
                    model=model,
                    version=version,
                    channel=channel,
                    payload=clean,
                    status="pending",
                    attempts=0,
                ),
            )

    def update_alert(self, alert_id: int, *, status: str, attempts: int, last_error: str | None = None) -> None:
        one_of(status, ALERT_STATUSES, where="status")
        with self.db.tx(f"update alert {alert_id}") as session:
            row = session.get(AlertRow, alert_id)
            if row is None:
                raise StoreError(f"unknown alert {alert_id} in {self.db.safe_url}")
            row.status, row.attempts, row.last_error = status, attempts, last_error

    def add_manual_action(self, *, model: str, version: int, action: str, actor: str, reason: str) -> int:
        one_of(action, MANUAL_ACTIONS, where="action")
        with self.db.tx(f"record the manual {action} of {model} v{version}") as session:
            return _added(
                session,
                ManualActionRow(
                    at=self.db.now(), model=model, version=version, action=action, actor=actor, reason=reason
                ),
            )
