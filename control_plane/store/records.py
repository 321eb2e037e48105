"""Frozen records handed out by the store, converted from ORM rows with `from_row`.

Why: callers (the reconciler, the judge, the CLI) must never hold a live ORM object, whose
attributes reload lazily from a session that is already closed; a record is a plain value that can
be compared, logged and turned into JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from control_plane.store.models import AlertRow, DecisionRow, ProbeWindowRow, RolloutRow, State, VersionRow


@dataclass(frozen=True)
class VersionRecord:
    id: int
    model: str
    version: int
    state: State
    is_stable: bool
    manifest: dict[str, Any]
    source_sha256: str | None
    quality_metric: str | None
    quality_value: float | None
    discovered_at: datetime
    state_changed_at: datetime
    stable_since: datetime | None
    retired_at: datetime | None
    reason: str | None

    @classmethod
    def from_row(cls, row: VersionRow, *, model: str) -> VersionRecord:
        return cls(
            id=row.id,
            model=model,
            version=row.version,
            state=State(row.state),
            is_stable=bool(row.is_stable),
            manifest=dict(row.manifest or {}),
            source_sha256=row.source_sha256,
            quality_metric=row.quality_metric,
            quality_value=row.quality_value,
            discovered_at=row.discovered_at,
            state_changed_at=row.state_changed_at,
            stable_since=row.stable_since,
            retired_at=row.retired_at,
            reason=row.reason,
        )


@dataclass(frozen=True)
class RolloutRecord:
    id: int
    model: str
    candidate: int
    stable: int | None
    phase: str
    started_at: datetime
    ended_at: datetime | None
    outcome: str | None

    @classmethod
    def from_row(cls, row: RolloutRow, *, model: str, candidate: int, stable: int | None) -> RolloutRecord:
        return cls(
            id=row.id,
            model=model,
            candidate=candidate,
            stable=stable,
            phase=row.phase,
            started_at=row.started_at,
            ended_at=row.ended_at,
            outcome=row.outcome,
        )


@dataclass(frozen=True)
class ProbeWindowRecord:
    id: int
    model: str
    version: int
    role: str
    rollout_id: int | None
    started_at: datetime
    ended_at: datetime
    requests: int | None
    errors: int | None
    failure_by_reason: dict[str, Any] | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    avg_queue_ms: float | None
    avg_compute_ms: float | None
    client_p50_ms: float | None
    client_p95_ms: float | None
    quality: float | None
    agreement: float | None
    triton_cpu_memory_bytes: int | None
    gpu_memory_bytes: int | None
    samples: tuple[float, ...]
    raw: dict[str, Any]

    @classmethod
    def from_row(cls, row: ProbeWindowRow, *, model: str, version: int) -> ProbeWindowRecord:
        return cls(
            id=row.id,
            model=model,
            version=version,
            role=row.role,
            rollout_id=row.rollout_id,
            started_at=row.started_at,
            ended_at=row.ended_at,
            requests=row.requests,
            errors=row.errors,
            failure_by_reason=row.failure_by_reason,
            p50_ms=row.p50_ms,
            p95_ms=row.p95_ms,
            p99_ms=row.p99_ms,
            avg_queue_ms=row.avg_queue_ms,
            avg_compute_ms=row.avg_compute_ms,
            client_p50_ms=row.client_p50_ms,
            client_p95_ms=row.client_p95_ms,
            quality=row.quality,
            agreement=row.agreement,
            triton_cpu_memory_bytes=row.triton_cpu_memory_bytes,
            gpu_memory_bytes=row.gpu_memory_bytes,
            samples=tuple(float(s) for s in (row.samples or ())),
            raw=dict(row.raw or {}),
        )


@dataclass(frozen=True)
class DecisionRecord:
    id: int
    model: str
    version: int
    rollout_id: int | None
    at: datetime
    outcome: str
    reason: str | None
    checks: Any
    policy: dict[str, Any]

    @classmethod
    def from_row(cls, row: DecisionRow, *, model: str, version: int) -> DecisionRecord:
        return cls(
            id=row.id,
            model=model,
            version=version,
            rollout_id=row.rollout_id,
            at=row.at,
            outcome=row.outcome,
            reason=row.reason,
            checks=row.checks,
            policy=dict(row.policy or {}),
        )


@dataclass(frozen=True)
class AlertRecord:
    id: int
    at: datetime
    event: str
    model: str
    version: int
    channel: str
    payload: dict[str, Any]
    status: str
    attempts: int
    last_error: str | None

    @classmethod
    def from_row(cls, row: AlertRow) -> AlertRecord:
        return cls(
            id=row.id,
            at=row.at,
            event=row.event,
            model=row.model,
            version=row.version,
            channel=row.channel,
            payload=dict(row.payload or {}),
            status=row.status,
            attempts=row.attempts,
            last_error=row.last_error,
        )
