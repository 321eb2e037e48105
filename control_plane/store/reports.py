"""The JSON dictionaries of `shepherd history` and `shepherd status`, built inside a read transaction.

Why apart from the reads: these are a presentation of the history (ISO times, seconds in canary,
the last decision in three fields), shaped for the CLI and scripts; the records the control plane
works with stay typed values in records.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from control_plane.store.models import DecisionRow, ModelRow, RolloutRow, State, TransitionRow, VersionRow
from control_plane.store.records import VersionRecord
from control_plane.store.values import iso


def history_rows(session: Session, versions: Sequence[VersionRecord], now: datetime) -> list[dict[str, Any]]:
    """One JSON-serialisable dict per version: its state, times, seconds in canary and last decision."""
    ids = [v.id for v in versions]
    transitions = session.execute(
        select(TransitionRow.version_id, TransitionRow.to_state, TransitionRow.at)
        .where(TransitionRow.version_id.in_(ids))
        .order_by(TransitionRow.version_id, TransitionRow.id)
    ).all()
    latest = (
        select(DecisionRow.version_id, func.max(DecisionRow.id).label("id"))
        .where(DecisionRow.version_id.in_(ids))
        .group_by(DecisionRow.version_id)
        .subquery()
    )
    last_decisions = {
        d.version_id: d for d in session.scalars(select(DecisionRow).join(latest, latest.c.id == DecisionRow.id))
    }
    canary_seconds = time_in_canary(transitions, now)
    result = []
    for v in versions:
        decision = last_decisions.get(v.id)
        result.append(
            {
                "model": v.model,
                "version": v.version,
                "state": v.state.value,
                "is_stable": v.is_stable,
                "quality_metric": v.quality_metric,
                "quality_value": v.quality_value,
                "discovered_at": iso(v.discovered_at),
                "state_changed_at": iso(v.state_changed_at),
                "retired_at": iso(v.retired_at),
                "reason": v.reason,
                "time_in_canary_s": canary_seconds.get(v.id),
                "last_decision": (
                    {"outcome": decision.outcome, "reason": decision.reason, "at": iso(decision.at)}
                    if decision is not None
                    else None
                ),
            }
        )
    return result


def status_rows(session: Session) -> list[dict[str, Any]]:
    """Per model: the stable version, the candidate in flight (preflight or canary) and its rollout."""
    models = session.scalars(select(ModelRow).order_by(ModelRow.name)).all()
    stables = {v.model_id: v.version for v in session.scalars(select(VersionRow).where(VersionRow.is_stable.is_(True)))}
    in_flight: dict[int, VersionRow] = {}
    for v in session.scalars(
        select(VersionRow)
        .where(VersionRow.state.in_([State.preflight.value, State.canary.value]))
        .order_by(VersionRow.version)
    ):
        in_flight[v.model_id] = v
    open_rollouts = {
        r.candidate_version_id: r for r in session.scalars(select(RolloutRow).where(RolloutRow.ended_at.is_(None)))
    }
    result = []
    for m in models:
        candidate = in_flight.get(m.id)
        rollout = open_rollouts.get(candidate.id) if candidate is not None else None
        result.append(
            {
                "model": m.name,
                "kind": m.kind,
                "stable": stables.get(m.id),
                "candidate": candidate.version if candidate is not None else None,
                "phase": candidate.state if candidate is not None else None,
                "phase_since": iso(candidate.state_changed_at) if candidate is not None else None,
                "rollout_id": rollout.id if rollout is not None else None,
                "pinned": m.pinned_version,
                "automation_paused": m.automation_paused,
            }
        )
    return result


def time_in_canary(transitions: Iterable[Any], now: datetime) -> dict[int, float]:
    """Seconds each version spent in canary, summed over its visits (still running counts up to now)."""
    seconds: dict[int, float] = {}
    entered: dict[int, datetime] = {}
    for version_id, to_state, at in transitions:
        if version_id in entered and to_state != State.canary.value:
            seconds[version_id] = seconds.get(version_id, 0.0) + (at - entered.pop(version_id)).total_seconds()
        if to_state == State.canary.value and version_id not in entered:
            entered[version_id] = at
            seconds.setdefault(version_id, 0.0)
    for version_id, at in entered.items():
        seconds[version_id] = seconds.get(version_id, 0.0) + max(0.0, (now - at).total_seconds())
    return {k: round(v, 3) for k, v in seconds.items()}
