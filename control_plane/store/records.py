"""Frozen records handed out by the store, converted from ORM rows with `from_row`.

Why: callers (the reconciler, the judge, the CLI) must never hold a live ORM object, whose
attributes reload lazily from a session that is already closed; a record is a plain value that can
be compared, logged and turned into JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, TypeVar

from control_plane.store.models import (
    AlertRow,
    DecisionRow,
    ProbeWindowRow,
    ReplicaRow,
    RolloutRow,
    RolloutStepRow,
    State,
    VersionRow,
)

R = TypeVar("R")


def _from_row(cls: type[R], row: object, **given: Any) -> R:
    """A record from an ORM row: each field from the row's column of the same name, unless `given`.

    `given` holds what the row does not have (the model's name, from a join) or what must be
    converted (JSON columns copied into plain dicts, so no record shares a live ORM value).
    """
    return cls(**{f.name: given[f.name] if f.name in given else getattr(row, f.name) for f in fields(cls)})  # type: ignore[arg-type]


@dataclass(frozen=True)
class ModelRecord:
    name: str
    kind: str
    pinned_version: int | None
    automation_paused: bool


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
        return _from_row(
            cls,
            row,
            model=model,
            state=State(row.state),
            is_stable=bool(row.is_stable),
            manifest=dict(row.manifest or {}),
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
        return _from_row(cls, row, model=model, candidate=candidate, stable=stable)


@dataclass(frozen=True)
class RolloutStepRecord:
    """Which replica had which role in one step of a rollout (see RolloutStepRow)."""

    rollout_id: int
    step: int
    strategy: str
    started_at: datetime
    share: float
    roles: dict[str, str]
    reason: str | None

    @classmethod
    def from_row(cls, row: RolloutStepRow) -> RolloutStepRecord:
        return _from_row(cls, row, roles={str(k): str(v) for k, v in (row.roles or {}).items()})

    def replicas(self, role: str) -> tuple[str, ...]:
        return tuple(sorted(name for name, r in self.roles.items() if r == role))

    def role_of(self, replica: str) -> str:
        """The replica's role in this step. One the step does not name (it joined later) serves stable,
        except after a blue-green cut-over, where every replica serves the candidate."""
        return self.roles.get(replica, "bluegreen" if self.strategy == "bluegreen" and self.share >= 1 else "stable")


@dataclass(frozen=True)
class ReplicaRecord:
    name: str
    grpc: str
    metrics: str
    reachable: bool
    changed_at: datetime
    last_error: str | None

    @classmethod
    def from_row(cls, row: ReplicaRow) -> ReplicaRecord:
        return _from_row(cls, row, reachable=bool(row.reachable))


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
    step: int | None = None

    @classmethod
    def from_row(cls, row: ProbeWindowRow, *, model: str, version: int) -> ProbeWindowRecord:
        samples = tuple(float(x) for x in (row.samples or ()))
        return _from_row(cls, row, model=model, version=version, samples=samples, raw=dict(row.raw or {}))


@dataclass(frozen=True)
class Decision:
    """What a judge decided about a version, to be stored (alone, or with the transition it causes).

    `checks` holds every check with its figures and `policy` the thresholds applied; both are
    cleaned to plain JSON on the way in, and anything with no JSON form is refused.
    """

    outcome: str
    reason: str
    checks: list[Any] | dict[str, Any]
    policy: dict[str, Any]
    rollout_id: int | None = None


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
        return _from_row(cls, row, model=model, version=version, policy=dict(row.policy or {}))


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
        return _from_row(cls, row, payload=dict(row.payload or {}))


@dataclass(frozen=True)
class StoreSnapshot:
    """Everything the reconciler needs for one pass, read in one transaction at `taken_at`.

    Why a snapshot: a pass that asked the database model by model would issue dozens of small
    queries and could see a half-finished write of another process between two of them; one
    consistent picture, then decisions, then writes through the lifecycle (which re-checks).
    """

    models: dict[str, ModelRecord]
    versions: tuple[VersionRecord, ...]  # all of them, ordered by model and version
    open_rollouts: tuple[RolloutRecord, ...]
    taken_at: datetime
    steps: dict[int, RolloutStepRecord] = field(default_factory=dict)  # open rollout id -> its current step
    replicas: dict[str, ReplicaRecord] = field(default_factory=dict)  # the fleet's last known health
    _by_model: dict[str, tuple[VersionRecord, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_model: dict[str, list[VersionRecord]] = {}
        for record in sorted(self.versions, key=lambda v: (v.model, v.version)):
            by_model.setdefault(record.model, []).append(record)
        object.__setattr__(self, "_by_model", {m: tuple(vs) for m, vs in by_model.items()})

    def versions_of(self, model: str, *states: State) -> list[VersionRecord]:
        """The model's versions ordered by number; only those in `states` when any are named."""
        return [v for v in self._by_model.get(model, ()) if not states or v.state in states]

    def get(self, model: str, version: int) -> VersionRecord | None:
        return next((v for v in self._by_model.get(model, ()) if v.version == version), None)

    def stable(self, model: str) -> VersionRecord | None:
        return next((v for v in self._by_model.get(model, ()) if v.is_stable), None)

    def pinned(self, model: str) -> int | None:
        record = self.models.get(model)
        return record.pinned_version if record is not None else None

    def open_rollout(self, model: str, candidate: int) -> RolloutRecord | None:
        return next((r for r in self.open_rollouts if r.model == model and r.candidate == candidate), None)

    def step(self, rollout_id: int) -> RolloutStepRecord | None:
        return self.steps.get(rollout_id)

    def known(self, model: str) -> set[int]:
        """The version numbers recorded for the model, whatever their state."""
        return {v.version for v in self._by_model.get(model, ())}
