"""The SQL history's tables, as typed SQLAlchemy 2.0 declarative models.

Why these are the one description of the schema: the Alembic migration is checked against them in
the tests, and the store converts their rows into frozen records so nothing outside the package ever
holds a live ORM object (a detached row read after its session closed is a bug waiting to happen).

Closed sets (state, role, outcome, event, status, action) are plain strings guarded by CHECK
constraints, which read the same on SQLite and PostgreSQL and need no native enum type to migrate.
Timestamps are timezone-aware UTC on the way in and on the way out, whatever the backend keeps.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from control_plane.alerts.events import ALERT_EVENTS  # the one list; the CHECK on alerts.event is built from it


class State(enum.StrEnum):
    """Where a version is in its life; the names are the ones `shepherd history --json` prints."""

    discovered = "discovered"
    preflight = "preflight"
    canary = "canary"
    promoted = "promoted"
    rolled_back = "rolled_back"
    failed = "failed"
    rejected = "rejected"


ROLES = ("candidate", "stable", "preflight")
DECISION_OUTCOMES = ("promote", "rollback", "reject", "wait", "fail")
ALERT_STATUSES = ("pending", "sent", "failed")
MANUAL_ACTIONS = ("promote", "rollback", "pin", "unpin")


def _one_of(column: str, values: tuple[str, ...] | list[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class UTCDateTime(TypeDecorator[datetime]):
    """DateTime(timezone=True) that always stores UTC and always reads back an aware UTC datetime.

    Why: SQLite keeps no offset and hands back naive values; PostgreSQL keeps the instant and hands
    it back in the session's zone. Normalising here means comparisons in Python never mix the two.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the history stores timezone-aware UTC times only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class ModelRow(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime]
    pinned_version: Mapped[int | None] = mapped_column(Integer)
    automation_paused: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))


class VersionRow(Base):
    __tablename__ = "versions"
    __table_args__ = (
        UniqueConstraint("model_id", "version", name="uq_versions_model_id_version"),
        CheckConstraint(_one_of("state", [s.value for s in State]), name="state"),
        # At most one stable version per model, guaranteed by the database itself.
        Index(
            "uq_versions_one_stable",
            "model_id",
            unique=True,
            sqlite_where=text("is_stable"),
            postgresql_where=text("is_stable"),
        ),
        Index("ix_versions_state", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(20))
    is_stable: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    manifest: Mapped[dict[str, Any]]
    source_sha256: Mapped[str | None] = mapped_column(String(64))
    quality_metric: Mapped[str | None] = mapped_column(String(60))
    quality_value: Mapped[float | None] = mapped_column(Float)
    discovered_at: Mapped[datetime]
    state_changed_at: Mapped[datetime]
    stable_since: Mapped[datetime | None]
    retired_at: Mapped[datetime | None]
    reason: Mapped[str | None] = mapped_column(Text)


class RolloutRow(Base):
    __tablename__ = "rollouts"
    __table_args__ = (
        # One open rollout per candidate: start_rollout stays idempotent even under a race.
        Index(
            "uq_rollouts_one_open",
            "candidate_version_id",
            unique=True,
            sqlite_where=text("ended_at IS NULL"),
            postgresql_where=text("ended_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    candidate_version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"))
    stable_version_id: Mapped[int | None] = mapped_column(ForeignKey("versions.id", ondelete="SET NULL"))
    phase: Mapped[str] = mapped_column(String(20))
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    outcome: Mapped[str | None] = mapped_column(String(40))


STRATEGIES = ("canary", "bluegreen")


class RolloutStepRow(Base):
    """One step of a rollout: which replica had which role from `started_at` on.

    `roles` maps replica name -> "canary" | "baseline" | "stable" | "bluegreen"; `share` is the
    fleet's share of client traffic the candidate takes in the step (k/N, or 1 for bluegreen's
    cut-over, 0 for its step 0, which only observes the stable version before the cut-over).
    """

    __tablename__ = "rollout_steps"
    __table_args__ = (
        UniqueConstraint("rollout_id", "step"),
        CheckConstraint(_one_of("strategy", STRATEGIES), name="strategy"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    strategy: Mapped[str] = mapped_column(String(20))
    started_at: Mapped[datetime]
    share: Mapped[float] = mapped_column(Float)
    roles: Mapped[dict[str, Any]] = mapped_column(JSON)
    reason: Mapped[str | None] = mapped_column(Text)


class ReplicaRow(Base):
    """The last known health of each replica of the fleet; written only when it changes."""

    __tablename__ = "replicas"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    grpc: Mapped[str] = mapped_column(String(300))
    metrics: Mapped[str] = mapped_column(String(300))
    reachable: Mapped[bool] = mapped_column(Boolean)
    changed_at: Mapped[datetime]
    last_error: Mapped[str | None] = mapped_column(Text)


class MetricMarkRow(Base):
    """A replica's cumulative counters for one model at the end of the last window read from it.

    Kept in SQL so that a window read by the next pass, even from another process (a CronJob's
    `shepherd tick`), covers all client traffic since this one.
    """

    __tablename__ = "metric_marks"

    replica: Mapped[str] = mapped_column(String(200), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    taken_at: Mapped[datetime]
    counters: Mapped[dict[str, Any]] = mapped_column(JSON)


class TransitionRow(Base):
    __tablename__ = "transitions"
    __table_args__ = (
        CheckConstraint(_one_of("to_state", [s.value for s in State]), name="to_state"),
        Index("ix_transitions_version_id_at", "version_id", "at"),
        Index("ix_transitions_to_state_at", "to_state", "at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"))
    from_state: Mapped[str | None] = mapped_column(String(20))
    to_state: Mapped[str] = mapped_column(String(20))
    at: Mapped[datetime]
    reason: Mapped[str | None] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(200))
    evidence: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class ProbeWindowRow(Base):
    __tablename__ = "probe_windows"
    __table_args__ = (
        CheckConstraint(_one_of("role", ROLES), name="role"),
        Index("ix_probe_windows_version_id_started_at", "version_id", "started_at"),
        Index("ix_probe_windows_rollout_id", "rollout_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"))
    rollout_id: Mapped[int | None] = mapped_column(ForeignKey("rollouts.id", ondelete="SET NULL"))
    role: Mapped[str] = mapped_column(String(20))
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime]
    requests: Mapped[int | None] = mapped_column(Integer)
    errors: Mapped[int | None] = mapped_column(Integer)
    failure_by_reason: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    p50_ms: Mapped[float | None] = mapped_column(Float)
    p95_ms: Mapped[float | None] = mapped_column(Float)
    p99_ms: Mapped[float | None] = mapped_column(Float)
    avg_queue_ms: Mapped[float | None] = mapped_column(Float)
    avg_compute_ms: Mapped[float | None] = mapped_column(Float)
    client_p50_ms: Mapped[float | None] = mapped_column(Float)
    client_p95_ms: Mapped[float | None] = mapped_column(Float)
    quality: Mapped[float | None] = mapped_column(Float)
    agreement: Mapped[float | None] = mapped_column(Float)
    triton_cpu_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    gpu_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    samples: Mapped[list[float] | None] = mapped_column(JSON)
    raw: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    step: Mapped[int | None] = mapped_column(Integer)  # the rollout step the window belongs to


class DecisionRow(Base):
    __tablename__ = "decisions"
    __table_args__ = (
        CheckConstraint(_one_of("outcome", DECISION_OUTCOMES), name="outcome"),
        Index("ix_decisions_version_id_at", "version_id", "at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"))
    rollout_id: Mapped[int | None] = mapped_column(ForeignKey("rollouts.id", ondelete="SET NULL"))
    at: Mapped[datetime]
    outcome: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(Text)
    checks: Mapped[Any] = mapped_column(JSON)
    policy: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class AlertRow(Base):
    __tablename__ = "alerts"
    __table_args__ = (
        CheckConstraint(_one_of("event", ALERT_EVENTS), name="event"),
        CheckConstraint(_one_of("status", ALERT_STATUSES), name="status"),
        Index("ix_alerts_status_at", "status", "at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime]
    event: Mapped[str] = mapped_column(String(20))
    model: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    channel: Mapped[str] = mapped_column(String(200))
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20), default="pending", server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text)


class ManualActionRow(Base):
    __tablename__ = "manual_actions"
    __table_args__ = (
        CheckConstraint(_one_of("action", MANUAL_ACTIONS), name="action"),
        Index("ix_manual_actions_model_at", "model", "at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime]
    model: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(20))
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str | None] = mapped_column(Text)


API_ROLES = ("viewer", "operator", "admin")  # each may do what the ones before it may


class ApiTokenRow(Base):
    """A bearer token of `shepherd serve`: only its SHA-256 is kept, with its owner's name and role.

    The token itself is shown once when it is made and stored nowhere; a revoked token stays as a row
    (`revoked_at`) so the audit trail keeps who held it.
    """

    __tablename__ = "api_tokens"
    __table_args__ = (CheckConstraint(_one_of("role", API_ROLES), name="role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), index=True)
    role: Mapped[str] = mapped_column(String(20))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(200))
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
