"""Read routes (viewer): status, history, a version's decisions and transitions, rollouts with their steps
and probe windows, the fleet's health.

Each answers from the SQL history only; none touches Triton, so they stay fast and work while Triton is down.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, status

from control_plane.api import queries
from control_plane.api.auth import Viewer
from control_plane.api.context import READ_ERRORS, RuntimeDep
from control_plane.api.schemas import (
    DecisionOut,
    ModelStatus,
    ProbeWindow,
    Replica,
    RolloutDetail,
    RolloutOut,
    RolloutStep,
    Transition,
    VersionHistory,
    Whoami,
)
from control_plane.runtime import Runtime
from control_plane.store.models import ROLES, State
from control_plane.store.records import RolloutRecord

router = APIRouter(prefix="/api/v1", tags=["reads"], responses=READ_ERRORS)

MAX_INT = 2**31 - 1
ModelName = Annotated[str, Path(min_length=1, max_length=200, description="The model's name.")]
VersionNumber = Annotated[int, Path(ge=1, le=MAX_INT)]
RolloutId = Annotated[int, Path(ge=1, le=MAX_INT)]


def not_found(what: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail=what)


def utc(value: datetime | None, name: str) -> datetime | None:
    """An aware UTC time (a naive one is read as UTC); one that cannot be expressed in UTC is a 422."""
    if value is None:
        return None
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except (OverflowError, ValueError) as exc:
        raise HTTPException(422, detail=f"{name}: {exc}") from exc


def need_version(rt: Runtime, model: str, version: int) -> None:
    if rt.store.read.get_version(model, version) is None:
        raise not_found(f"{model} version {version} is not in the history")


def need_rollout(rt: Runtime, rollout_id: int) -> RolloutRecord:
    record = queries.rollout(rt.store.db, rollout_id)
    if record is None:
        raise not_found(f"no rollout {rollout_id}")
    return record


@router.get("/whoami", summary="The token's owner and role")
def whoami(who: Viewer) -> Whoami:
    return Whoami.model_validate(who)


@router.get("/status", summary="Every model: stable version, candidate in flight and its phase")
def model_status(rt: RuntimeDep, who: Viewer) -> list[ModelStatus]:
    return [ModelStatus.model_validate(row) for row in rt.store.read.status()]


@router.get("/history", summary="Every version with its state, quality, time in canary and last decision")
def history(
    rt: RuntimeDep,
    who: Viewer,
    model: Annotated[str | None, Query(max_length=200, description="Only this model.")] = None,
    state: Annotated[list[State] | None, Query(description="Only versions in these states.")] = None,
    since: Annotated[datetime | None, Query(description="Only versions whose state changed at or after.")] = None,
    until: Annotated[datetime | None, Query(description="Only versions whose state changed at or before.")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[VersionHistory]:
    after, before = utc(since, "since"), utc(until, "until")
    rows = [VersionHistory.model_validate(row) for row in rt.store.read.history(model=model, since=after)]
    wanted = set(state) if state else None
    return [
        row
        for row in rows
        if (wanted is None or row.state in wanted) and (before is None or row.state_changed_at <= before)
    ][:limit]


@router.get(
    "/models/{model}/versions/{version}/decisions", summary="Every decision on a version, with its checks and policy"
)
def decisions(rt: RuntimeDep, who: Viewer, model: ModelName, version: VersionNumber) -> list[DecisionOut]:
    need_version(rt, model, version)
    return [DecisionOut.model_validate(d) for d in rt.store.read.decisions(model, version)]


@router.get("/models/{model}/versions/{version}/transitions", summary="Every state change of a version, with its actor")
def transitions(rt: RuntimeDep, who: Viewer, model: ModelName, version: VersionNumber) -> list[Transition]:
    need_version(rt, model, version)
    return [Transition.model_validate(t) for t in queries.transitions(rt.store.db, model, version)]


@router.get("/rollouts", summary="Rollouts, newest first")
def rollouts(
    rt: RuntimeDep,
    who: Viewer,
    model: Annotated[str | None, Query(max_length=200, description="Only this model's.")] = None,
    open_only: Annotated[bool, Query(alias="open", description="Only rollouts still running.")] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[RolloutOut]:
    found = queries.rollouts(rt.store.db, model=model, open_only=open_only, limit=limit)
    return [RolloutOut.model_validate(r) for r in found]


@router.get("/rollouts/{rollout_id}", summary="One rollout with its steps (each replica's role per step)")
def rollout(rt: RuntimeDep, who: Viewer, rollout_id: RolloutId) -> RolloutDetail:
    record = need_rollout(rt, rollout_id)
    steps = [RolloutStep.model_validate(s) for s in rt.store.fleet.steps(rollout_id)]
    return RolloutDetail.model_validate({**RolloutOut.model_validate(record).model_dump(), "steps": steps})


@router.get(
    "/rollouts/{rollout_id}/windows", summary="The probe windows of a rollout, candidate and stable, oldest first"
)
def windows(
    rt: RuntimeDep,
    who: Viewer,
    rollout_id: RolloutId,
    role: Annotated[
        str | None, Query(description=f"Only this side: {', '.join(ROLES)}.", pattern="^(candidate|stable|preflight)$")
    ] = None,
    step: Annotated[int | None, Query(ge=0, le=MAX_INT, description="Only this rollout step.")] = None,
) -> list[ProbeWindow]:
    record = need_rollout(rt, rollout_id)
    found = []
    for version in dict.fromkeys(v for v in (record.candidate, record.stable) if v is not None):
        found += rt.store.read.probe_windows(record.model, version, role=role, rollout_id=rollout_id, step=step)
    found.sort(key=lambda w: (w.started_at, w.id))
    return [ProbeWindow.model_validate(w) for w in found]


@router.get("/rollouts/{rollout_id}/decisions", summary="The decisions taken during a rollout, oldest first")
def rollout_decisions(rt: RuntimeDep, who: Viewer, rollout_id: RolloutId) -> list[DecisionOut]:
    record = need_rollout(rt, rollout_id)
    found = [d for d in rt.store.read.decisions(record.model, record.candidate) if d.rollout_id == rollout_id]
    return [DecisionOut.model_validate(d) for d in found]


@router.get("/fleet", summary="The last known health of each replica of the fleet")
def fleet(rt: RuntimeDep, who: Viewer) -> list[Replica]:
    return [Replica.model_validate(r) for r in queries.replicas(rt.store.db)]
