"""The narrow API through which the control plane reads and writes its SQL history.

Why narrow: the reconciler is level-triggered and may crash at any line, so every write is one
short transaction that either happened completely or not at all, and every state change goes
through `transition`, which refuses moves the lifecycle does not allow. State changes use a
compare-and-set UPDATE (`... WHERE state = <the state we read>`) and re-read on conflict, so two
processes racing on one version cannot both win; the database itself guarantees at most one stable
version per model and one open rollout per candidate (partial unique indexes).

    store = Store.open("sqlite:///shepherd.db")          # or postgresql+psycopg://user@host/db
    store.record_version("intent", 3, manifest=manifest, kind="intent")
    store.transition("intent", 3, State.preflight, reason="next candidate")
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased, sessionmaker

from control_plane.errors import InvalidTransition, StoreError
from control_plane.store import lifecycle
from control_plane.store.database import DEFAULT_URL, make_engine, mask_url, ping, translated
from control_plane.store.database import migrate as migrate_schema
from control_plane.store.models import (
    ALERT_EVENTS,
    ALERT_STATUSES,
    DECISION_OUTCOMES,
    MANUAL_ACTIONS,
    ROLES,
    AlertRow,
    DecisionRow,
    ManualActionRow,
    ModelRow,
    ProbeWindowRow,
    RolloutRow,
    State,
    TransitionRow,
    VersionRow,
)
from control_plane.store.records import (
    AlertRecord,
    DecisionRecord,
    ProbeWindowRecord,
    RolloutRecord,
    VersionRecord,
)

__all__ = [
    "AlertRecord",
    "DecisionRecord",
    "ProbeWindowRecord",
    "RolloutRecord",
    "State",
    "Store",
    "VersionRecord",
]

WINDOW_COLUMNS = (
    "requests",
    "errors",
    "failure_by_reason",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "avg_queue_ms",
    "avg_compute_ms",
    "client_p50_ms",
    "client_p95_ms",
    "quality",
    "agreement",
    "triton_cpu_memory_bytes",
    "gpu_memory_bytes",
    "samples",
)
INT_COLUMNS = frozenset({"requests", "errors", "triton_cpu_memory_bytes", "gpu_memory_bytes"})
JSON_COLUMNS = frozenset({"failure_by_reason", "samples"})
OPEN_PHASE = "canary"
ENDED_PHASE = "ended"
CAS_RETRIES = 3


def utc_now() -> datetime:
    return datetime.now(UTC)


def plain_json(value: Any, *, where: str) -> Any:
    """`value` as plain JSON: numpy scalars become numbers, NaN and infinities None, tuples lists.

    Why: PostgreSQL's json type refuses NaN, and a numpy float from a percentile must not make a
    probe window unstorable; anything else that cannot be JSON is refused with its path named.
    """
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): plain_json(v, where=f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain_json(v, where=f"{where}[{i}]") for i, v in enumerate(value)]
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        return plain_json(item(), where=where)
    tolist = getattr(value, "tolist", None)  # numpy arrays
    if callable(tolist):
        return plain_json(tolist(), where=where)
    raise StoreError(f"{where} is not JSON: {type(value).__name__} {value!r:.80}")


def _number(value: Any, *, where: str, integer: bool) -> float | int | None:
    cleaned = plain_json(value, where=where)
    if cleaned is None:
        return None
    if isinstance(cleaned, bool) or not isinstance(cleaned, int | float):
        raise StoreError(f"{where} must be a number, got {value!r:.80}")
    return round(cleaned) if integer else float(cleaned)


def _aware(value: datetime, *, where: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise StoreError(f"{where} must be a timezone-aware datetime, got {value!r}")
    return value.astimezone(UTC)


def _one_of(value: str, allowed: Iterable[str], *, where: str) -> str:
    allowed = tuple(allowed)
    if value not in allowed:
        raise StoreError(f"{where} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def _state(value: State | str) -> State:
    try:
        return State(value)
    except ValueError:
        raise StoreError(f"unknown state {value!r}; states are {', '.join(s.value for s in State)}") from None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class Store:
    """The SQL history. Open it with `Store.open(url)`; every method is one short transaction."""

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] = utc_now) -> None:
        self.engine = engine
        self.safe_url = mask_url(engine.url)
        self._clock = clock
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, url: str = DEFAULT_URL, *, migrate: bool = True, clock: Callable[[], datetime] = utc_now) -> Store:
        """Connect (pool_pre_ping), bring the schema to the newest revision, and return the store.

        `clock` is injectable so a runtime driven by a fake clock writes the times it reads.
        A dead or unreachable database raises StoreError naming the URL (password masked).
        """
        engine = make_engine(url)
        try:
            if migrate:
                migrate_schema(engine)
            else:
                ping(engine)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, clock=clock)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------------------
    def now(self) -> datetime:
        return _aware(self._clock(), where="the store's clock")

    @contextmanager
    def _tx(self, doing: str) -> Iterator[Session]:
        with translated(self.safe_url, doing), self._sessions.begin() as session:
            yield session

    @staticmethod
    def _model_row(session: Session, name: str) -> ModelRow | None:
        return session.scalars(select(ModelRow).where(ModelRow.name == name)).one_or_none()

    def _need_model(self, session: Session, name: str) -> ModelRow:
        row = self._model_row(session, name)
        if row is None:
            raise StoreError(f"unknown model {name!r} in {self.safe_url}")
        return row

    @staticmethod
    def _version_row(session: Session, model: str, version: int) -> VersionRow | None:
        query = (
            select(VersionRow)
            .join(ModelRow, ModelRow.id == VersionRow.model_id)
            .where(ModelRow.name == model, VersionRow.version == version)
        )
        return session.scalars(query).one_or_none()

    def _need_version(self, session: Session, model: str, version: int) -> VersionRow:
        row = self._version_row(session, model, version)
        if row is None:
            raise StoreError(f"unknown version {model} v{version} in {self.safe_url}")
        return row

    # -- models and versions --------------------------------------------------------------------
    def ensure_model(self, name: str, *, kind: str) -> None:
        """Insert the model once; a concurrent insert of the same name is not an error."""
        if not name or not isinstance(name, str):
            raise StoreError(f"a model needs a non-empty name, got {name!r}")
        try:
            with self._tx(f"record model {name}") as session:
                self._ensure_model(session, name, kind)
        except StoreError as exc:
            if not isinstance(exc.__cause__, IntegrityError):
                raise

    def _ensure_model(self, session: Session, name: str, kind: str) -> ModelRow:
        row = self._model_row(session, name)
        if row is None:
            row = ModelRow(name=name, kind=kind, created_at=self.now(), automation_paused=False)
            session.add(row)
            session.flush()
        return row

    def record_version(self, model: str, version: int, *, manifest: dict[str, Any], kind: str) -> bool:
        """Insert the version in state `discovered` with its first transition; False if it was known."""
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise StoreError(f"{model}: a version is a positive integer, got {version!r}")
        if not isinstance(manifest, dict):
            raise StoreError(f"{model} v{version}: the manifest must be a dict, got {type(manifest).__name__}")
        clean = plain_json(manifest, where=f"{model} v{version} manifest")
        source = clean.get("source") if isinstance(clean.get("source"), dict) else {}
        quality = clean.get("quality") if isinstance(clean.get("quality"), dict) else {}
        metric, value = quality.get("metric"), quality.get("value")
        try:
            with self._tx(f"record {model} v{version}") as session:
                model_row = self._ensure_model(session, model, kind)
                if self._version_row(session, model, version) is not None:
                    return False
                now = self.now()
                row = VersionRow(
                    model_id=model_row.id,
                    version=version,
                    state=State.discovered.value,
                    is_stable=False,
                    manifest=clean,
                    source_sha256=source.get("sha256"),
                    quality_metric=str(metric) if metric is not None else None,
                    quality_value=float(value) if isinstance(value, int | float) else None,
                    discovered_at=now,
                    state_changed_at=now,
                    reason="version folder found",
                )
                session.add(row)
                session.flush()
                session.add(
                    TransitionRow(
                        version_id=row.id,
                        from_state=None,
                        to_state=State.discovered.value,
                        at=now,
                        reason="version folder found",
                        actor=lifecycle.SYSTEM_ACTOR,
                        evidence=None,
                    )
                )
                return True
        except StoreError as exc:
            if isinstance(exc.__cause__, IntegrityError) and self.get_version(model, version) is not None:
                return False  # another process recorded it first
            raise

    def get_version(self, model: str, version: int) -> VersionRecord | None:
        with self._tx(f"read {model} v{version}") as session:
            row = self._version_row(session, model, version)
            return VersionRecord.from_row(row, model=model) if row is not None else None

    def versions(
        self,
        *,
        model: str | None = None,
        states: Iterable[State] | None = None,
        since: datetime | None = None,
    ) -> list[VersionRecord]:
        """Versions ordered by model and number; `since` keeps those whose state changed at or after it."""
        query = select(VersionRow, ModelRow.name).join(ModelRow, ModelRow.id == VersionRow.model_id)
        if model is not None:
            query = query.where(ModelRow.name == model)
        if states is not None:
            query = query.where(VersionRow.state.in_([_state(s).value for s in states]))
        if since is not None:
            query = query.where(VersionRow.state_changed_at >= _aware(since, where="since"))
        query = query.order_by(ModelRow.name, VersionRow.version)
        with self._tx("list versions") as session:
            return [VersionRecord.from_row(row, model=name) for row, name in session.execute(query)]

    def stable(self, model: str) -> VersionRecord | None:
        query = (
            select(VersionRow)
            .join(ModelRow, ModelRow.id == VersionRow.model_id)
            .where(ModelRow.name == model, VersionRow.is_stable.is_(True))
        )
        with self._tx(f"read the stable version of {model}") as session:
            row = session.scalars(query).one_or_none()
            return VersionRecord.from_row(row, model=model) if row is not None else None

    # -- lifecycle ------------------------------------------------------------------------------
    def transition(
        self,
        model: str,
        version: int,
        to: State,
        *,
        reason: str,
        actor: str = lifecycle.SYSTEM_ACTOR,
        evidence: dict[str, Any] | None = None,
    ) -> VersionRecord:
        """Move a version to `to` (InvalidTransition if the lifecycle forbids it); a no-op if already there.

        Entering rolled_back, failed or rejected also takes away the stable flag: a version that
        must not serve cannot stay the one that serves requests naming no version.
        """
        target = _state(to)
        clean_evidence = plain_json(evidence, where="evidence") if evidence is not None else None
        for _ in range(CAS_RETRIES):
            with self._tx(f"move {model} v{version} to {target}") as session:
                row = self._need_version(session, model, version)
                source = State(row.state)
                if source == target:
                    return VersionRecord.from_row(row, model=model)
                if not lifecycle.allowed(source, target, actor=actor):
                    raise InvalidTransition(
                        f"{model} v{version} cannot move from {source} to {target} (actor {actor!r}); "
                        f"allowed from {source}: {', '.join(lifecycle.allowed_targets(source, actor=actor)) or 'nothing'}"
                    )
                now = self.now()
                values: dict[str, Any] = {"state": target.value, "state_changed_at": now, "reason": reason}
                if target in lifecycle.TERMINAL and row.is_stable:
                    values.update(is_stable=False, retired_at=now)
                changed = session.execute(
                    update(VersionRow)
                    .where(VersionRow.id == row.id, VersionRow.state == source.value)
                    .values(**values)
                    .execution_options(synchronize_session=False)
                )
                if getattr(changed, "rowcount", 0) != 1:
                    continue  # another process moved it meanwhile: re-read and decide again
                session.add(
                    TransitionRow(
                        version_id=row.id,
                        from_state=source.value,
                        to_state=target.value,
                        at=now,
                        reason=reason,
                        actor=actor,
                        evidence=clean_evidence,
                    )
                )
                session.flush()
                session.refresh(row)
                return VersionRecord.from_row(row, model=model)
        raise StoreError(f"{model} v{version} kept changing under a concurrent writer; try again")

    def set_stable(self, model: str, version: int, *, reason: str, actor: str = lifecycle.SYSTEM_ACTOR) -> None:
        """Make a promoted version the stable one; the old stable keeps `promoted`, loses the flag, gets retired_at.

        Both rows change in one transaction, and a marker transition (promoted -> promoted, evidence
        {"stable": true}) records who made it stable and why.
        """
        with self._tx(f"make {model} v{version} stable") as session:
            row = self._need_version(session, model, version)
            if row.is_stable:
                return
            if row.state != State.promoted.value:
                raise InvalidTransition(
                    f"{model} v{version} is {row.state}: only a promoted version can become the stable one"
                )
            now = self.now()
            old = session.scalars(
                select(VersionRow).where(VersionRow.model_id == row.model_id, VersionRow.is_stable.is_(True))
            ).one_or_none()
            if old is not None:
                old.is_stable = False
                old.retired_at = now
                session.flush()  # the partial unique index allows one stable: clear the old flag first
            row.is_stable = True
            row.stable_since = now
            row.retired_at = None
            row.reason = reason
            session.add(
                TransitionRow(
                    version_id=row.id,
                    from_state=State.promoted.value,
                    to_state=State.promoted.value,
                    at=now,
                    reason=reason,
                    actor=actor,
                    evidence={"stable": True, "replaces": old.version if old is not None else None},
                )
            )

    # -- rollouts -------------------------------------------------------------------------------
    def _rollout_query(self) -> Select:
        candidate, stable = aliased(VersionRow), aliased(VersionRow)
        return (
            select(RolloutRow, ModelRow.name, candidate.version, stable.version)
            .join(ModelRow, ModelRow.id == RolloutRow.model_id)
            .join(candidate, candidate.id == RolloutRow.candidate_version_id)
            .outerjoin(stable, stable.id == RolloutRow.stable_version_id)
        )

    def open_rollout(self, model: str, candidate: int) -> RolloutRecord | None:
        cand = aliased(VersionRow)
        query = (
            self._rollout_query()
            .where(ModelRow.name == model, RolloutRow.ended_at.is_(None))
            .where(RolloutRow.candidate_version_id.in_(select(cand.id).where(cand.version == candidate)))
        )
        with self._tx(f"read the open rollout of {model} v{candidate}") as session:
            found = session.execute(query).first()
            if found is None:
                return None
            row, name, cand_version, stable_version = found
            return RolloutRecord.from_row(row, model=name, candidate=cand_version, stable=stable_version)

    def start_rollout(self, model: str, candidate: int, stable: int | None) -> int:
        """Open a rollout of `candidate` against `stable`; returns the open one if there already is one."""
        existing = self.open_rollout(model, candidate)
        if existing is not None:
            return existing.id
        try:
            with self._tx(f"start the rollout of {model} v{candidate}") as session:
                cand_row = self._need_version(session, model, candidate)
                stable_row = self._need_version(session, model, stable) if stable is not None else None
                row = RolloutRow(
                    model_id=cand_row.model_id,
                    candidate_version_id=cand_row.id,
                    stable_version_id=stable_row.id if stable_row is not None else None,
                    phase=OPEN_PHASE,
                    started_at=self.now(),
                )
                session.add(row)
                session.flush()
                return row.id
        except StoreError as exc:
            raced = self.open_rollout(model, candidate) if isinstance(exc.__cause__, IntegrityError) else None
            if raced is None:
                raise
            return raced.id

    def end_rollout(self, rollout_id: int, *, outcome: str) -> None:
        """Close a rollout with its outcome; closing one already closed keeps the first outcome."""
        with self._tx(f"end rollout {rollout_id}") as session:
            row = session.get(RolloutRow, rollout_id)
            if row is None:
                raise StoreError(f"unknown rollout {rollout_id} in {self.safe_url}")
            if row.ended_at is None:
                row.ended_at = self.now()
                row.outcome = outcome
                row.phase = ENDED_PHASE

    # -- probe windows and decisions ------------------------------------------------------------
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
        _one_of(role, ROLES, where="role")
        start, end = _aware(started_at, where="started_at"), _aware(ended_at, where="ended_at")
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
                values[key] = plain_json(value, where=key)
            else:
                values[key] = _number(value, where=key, integer=key in INT_COLUMNS)
        if isinstance(values.get("samples"), list):
            values["samples"] = [s for s in values["samples"] if s is not None]
        clean_raw = plain_json(raw, where="raw")
        with self._tx(f"store a probe window of {model} v{version}") as session:
            row = self._need_version(session, model, version)
            if rollout_id is not None and session.get(RolloutRow, rollout_id) is None:
                raise StoreError(f"unknown rollout {rollout_id} for the probe window of {model} v{version}")
            window = ProbeWindowRow(
                version_id=row.id,
                rollout_id=rollout_id,
                role=role,
                started_at=start,
                ended_at=end,
                raw=clean_raw,
                **values,
            )
            session.add(window)
            session.flush()
            return window.id

    def probe_windows(
        self,
        model: str,
        version: int,
        *,
        role: str | None = None,
        rollout_id: int | None = None,
        since: datetime | None = None,
    ) -> list[ProbeWindowRecord]:
        """Windows of one version, oldest first."""
        query = (
            select(ProbeWindowRow)
            .join(VersionRow, VersionRow.id == ProbeWindowRow.version_id)
            .join(ModelRow, ModelRow.id == VersionRow.model_id)
            .where(ModelRow.name == model, VersionRow.version == version)
        )
        if role is not None:
            query = query.where(ProbeWindowRow.role == _one_of(role, ROLES, where="role"))
        if rollout_id is not None:
            query = query.where(ProbeWindowRow.rollout_id == rollout_id)
        if since is not None:
            query = query.where(ProbeWindowRow.started_at >= _aware(since, where="since"))
        query = query.order_by(ProbeWindowRow.started_at, ProbeWindowRow.id)
        with self._tx(f"read probe windows of {model} v{version}") as session:
            return [ProbeWindowRecord.from_row(r, model=model, version=version) for r in session.scalars(query)]

    def add_decision(
        self,
        model: str,
        version: int,
        *,
        outcome: str,
        reason: str,
        checks: dict[str, Any] | list[Any],
        policy: dict[str, Any],
        rollout_id: int | None = None,
    ) -> int:
        """Store a judge's decision with every check and its figures, and the policy it applied."""
        _one_of(outcome, DECISION_OUTCOMES, where="outcome")
        clean_checks = plain_json(checks, where="checks")
        clean_policy = plain_json(policy, where="policy")
        with self._tx(f"store a decision on {model} v{version}") as session:
            row = self._need_version(session, model, version)
            decision = DecisionRow(
                version_id=row.id,
                rollout_id=rollout_id,
                at=self.now(),
                outcome=outcome,
                reason=reason,
                checks=clean_checks,
                policy=clean_policy,
            )
            session.add(decision)
            session.flush()
            return decision.id

    def decisions(self, model: str, version: int) -> list[DecisionRecord]:
        query = (
            select(DecisionRow)
            .join(VersionRow, VersionRow.id == DecisionRow.version_id)
            .join(ModelRow, ModelRow.id == VersionRow.model_id)
            .where(ModelRow.name == model, VersionRow.version == version)
            .order_by(DecisionRow.at, DecisionRow.id)
        )
        with self._tx(f"read decisions on {model} v{version}") as session:
            return [DecisionRecord.from_row(r, model=model, version=version) for r in session.scalars(query)]

    # -- alerts and manual actions --------------------------------------------------------------
    def add_alert(self, *, event: str, model: str, version: int, channel: str, payload: dict[str, Any]) -> int:
        _one_of(event, ALERT_EVENTS, where="event")
        clean = plain_json(payload, where="payload")
        with self._tx(f"store a {event} alert") as session:
            row = AlertRow(
                at=self.now(),
                event=event,
                model=model,
                version=version,
                channel=channel,
                payload=clean,
                status="pending",
                attempts=0,
            )
            session.add(row)
            session.flush()
            return row.id

    def update_alert(self, alert_id: int, *, status: str, attempts: int, last_error: str | None = None) -> None:
        _one_of(status, ALERT_STATUSES, where="status")
        with self._tx(f"update alert {alert_id}") as session:
            row = session.get(AlertRow, alert_id)
            if row is None:
                raise StoreError(f"unknown alert {alert_id} in {self.safe_url}")
            row.status, row.attempts, row.last_error = status, attempts, last_error

    def pending_alerts(self) -> list[AlertRecord]:
        query = select(AlertRow).where(AlertRow.status == "pending").order_by(AlertRow.at, AlertRow.id)
        with self._tx("read pending alerts") as session:
            return [AlertRecord.from_row(r) for r in session.scalars(query)]

    def add_manual_action(self, *, model: str, version: int, action: str, actor: str, reason: str) -> int:
        _one_of(action, MANUAL_ACTIONS, where="action")
        with self._tx(f"record the manual {action} of {model} v{version}") as session:
            row = ManualActionRow(
                at=self.now(), model=model, version=version, action=action, actor=actor, reason=reason
            )
            session.add(row)
            session.flush()
            return row.id

    def set_pin(self, model: str, version: int | None) -> None:
        """Pin the model to one version (automation paused for it) or clear the pin with None."""
        with self._tx(f"pin {model}") as session:
            row = self._need_model(session, model)
            if version is not None:
                self._need_version(session, model, version)
            row.pinned_version = version
            row.automation_paused = version is not None

    def pinned(self, model: str) -> int | None:
        with self._tx(f"read the pin of {model}") as session:
            row = self._model_row(session, model)
            return row.pinned_version if row is not None else None

    # -- reports --------------------------------------------------------------------------------
    def history(self, *, model: str | None = None, since: datetime | None = None) -> list[dict[str, Any]]:
        """One JSON-serialisable dict per version, for `shepherd history` and scripts."""
        versions = self.versions(model=model, since=since)
        if not versions:
            return []
        ids = [v.id for v in versions]
        now = self.now()
        with self._tx("read the history") as session:
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
                d.version_id: d
                for d in session.scalars(select(DecisionRow).join(latest, latest.c.id == DecisionRow.id))
            }
        canary_seconds = _time_in_canary(transitions, now)
        rows = []
        for v in versions:
            decision = last_decisions.get(v.id)
            rows.append(
                {
                    "model": v.model,
                    "version": v.version,
                    "state": v.state.value,
                    "is_stable": v.is_stable,
                    "quality_metric": v.quality_metric,
                    "quality_value": v.quality_value,
                    "discovered_at": _iso(v.discovered_at),
                    "state_changed_at": _iso(v.state_changed_at),
                    "retired_at": _iso(v.retired_at),
                    "reason": v.reason,
                    "time_in_canary_s": canary_seconds.get(v.id),
                    "last_decision": (
                        {"outcome": decision.outcome, "reason": decision.reason, "at": _iso(decision.at)}
                        if decision is not None
                        else None
                    ),
                }
            )
        return rows

    def status(self) -> list[dict[str, Any]]:
        """Per model: the stable version, the candidate in flight (preflight or canary) and its rollout."""
        with self._tx("read the status") as session:
            models = session.scalars(select(ModelRow).order_by(ModelRow.name)).all()
            names = {m.id: m.name for m in models}
            stables = {
                v.model_id: v.version for v in session.scalars(select(VersionRow).where(VersionRow.is_stable.is_(True)))
            }
            in_flight: dict[int, VersionRow] = {}
            for v in session.scalars(
                select(VersionRow)
                .where(VersionRow.state.in_([State.preflight.value, State.canary.value]))
                .order_by(VersionRow.version)
            ):
                in_flight[v.model_id] = v
            open_rollouts = {
                r.candidate_version_id: r
                for r in session.scalars(select(RolloutRow).where(RolloutRow.ended_at.is_(None)))
            }
            result = []
            for m in models:
                candidate = in_flight.get(m.id)
                rollout = open_rollouts.get(candidate.id) if candidate is not None else None
                result.append(
                    {
                        "model": names[m.id],
                        "kind": m.kind,
                        "stable": stables.get(m.id),
                        "candidate": candidate.version if candidate is not None else None,
                        "phase": candidate.state if candidate is not None else None,
                        "phase_since": _iso(candidate.state_changed_at) if candidate is not None else None,
                        "rollout_id": rollout.id if rollout is not None else None,
                        "pinned": m.pinned_version,
                        "automation_paused": m.automation_paused,
                    }
                )
            return result


def _time_in_canary(transitions: Iterable[Any], now: datetime) -> dict[int, float]:
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
