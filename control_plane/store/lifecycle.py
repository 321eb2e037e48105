"""Which state changes a version may make, who may make them, and the one writer that makes them.

Why a table and not if-statements spread over the reconciler: the store refuses a wrong move at the
one place every move passes through, so a bug in a caller cannot write a history that never happened
(a rejected version suddenly promoted by the scheduler, say).

Why every write is one short transaction: the reconciler is level-triggered and may crash at any
line, so each write either happened completely or not at all. State changes use a compare-and-set
UPDATE (`... WHERE state = <the state we read>`) and re-read on conflict, so two processes racing on
one version cannot both win; the database itself guarantees at most one stable version per model and
one open rollout per candidate (partial unique indexes).

    store.lifecycle.record_version("intent", 3, manifest=manifest, kind="intent")
    store.lifecycle.transition("intent", 3, State.preflight, reason="next candidate")
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from control_plane.errors import InvalidTransition, StoreError
from control_plane.store import rows
from control_plane.store.database import Database
from control_plane.store.evidence import clean_decision, decision_row
from control_plane.store.models import ModelRow, RolloutRow, State, TransitionRow, VersionRow
from control_plane.store.records import Decision, VersionRecord
from control_plane.store.values import clean_json, state

OPEN_PHASE = "canary"
ENDED_PHASE = "ended"
CAS_RETRIES = 3

SYSTEM_ACTOR = "shepherd"

AUTOMATIC: dict[State, frozenset[State]] = {
    State.discovered: frozenset({State.preflight, State.failed, State.rejected}),
    # promoted straight from preflight: the first version of a model has no stable one to canary against
    State.preflight: frozenset({State.canary, State.promoted, State.rejected, State.failed}),
    State.canary: frozenset({State.promoted, State.rolled_back, State.failed}),
    State.promoted: frozenset({State.rolled_back}),
    State.rolled_back: frozenset(),
    State.failed: frozenset(),
    State.rejected: frozenset(),
}

# Terminal for automation; a person may still pin or promote such a version.
MANUAL_EXTRA: dict[State, frozenset[State]] = {
    State.rolled_back: frozenset({State.canary, State.promoted}),
    State.failed: frozenset({State.canary, State.promoted}),
    State.rejected: frozenset({State.canary, State.promoted}),
}

TERMINAL = frozenset({State.rolled_back, State.failed, State.rejected})


def is_manual(actor: str) -> bool:
    return actor != SYSTEM_ACTOR


def allowed(source: State, target: State, *, actor: str) -> bool:
    """True when `actor` may move a version from `source` to `target`."""
    if target in AUTOMATIC[source]:
        return True
    return is_manual(actor) and target in MANUAL_EXTRA.get(source, frozenset())


def allowed_targets(source: State, *, actor: str) -> list[str]:
    """The states reachable from `source` by `actor`, sorted, for error messages."""
    targets = set(AUTOMATIC[source])
    if is_manual(actor):
        targets |= MANUAL_EXTRA.get(source, frozenset())
    return sorted(t.value for t in targets)


def _raced(exc: StoreError) -> bool:
    """True when the write lost a race on a unique constraint (another process inserted it first)."""
    return isinstance(exc.__cause__, IntegrityError)


class Lifecycle:
    """Writes models, versions, their state changes, the stable flag, pins and rollouts."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- models and versions --------------------------------------------------------------------
    def ensure_model(self, name: str, *, kind: str) -> None:
        """Insert the model once; a concurrent insert of the same name is not an error."""
        if not name or not isinstance(name, str):
            raise StoreError(f"a model needs a non-empty name, got {name!r}")
        try:
            with self.db.tx(f"record model {name}") as session:
                self._ensure_model(session, name, kind)
        except StoreError as exc:
            if not _raced(exc):
                raise

    def _ensure_model(self, session: Session, name: str, kind: str) -> ModelRow:
        row = rows.model_row(session, name)
        if row is None:
            row = ModelRow(name=name, kind=kind, created_at=self.db.now(), automation_paused=False)
            session.add(row)
            session.flush()
        return row

    def record_version(self, model: str, version: int, *, manifest: dict[str, Any], kind: str) -> bool:
        """Insert the version in state `discovered` with its first transition; False if it was known."""
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise StoreError(f"{model}: a version is a positive integer, got {version!r}")
        if not isinstance(manifest, dict):
            raise StoreError(f"{model} v{version}: the manifest must be a dict, got {type(manifest).__name__}")
        clean = clean_json(manifest, where=f"{model} v{version} manifest")
        source = clean.get("source") if isinstance(clean.get("source"), dict) else {}
        quality = clean.get("quality") if isinstance(clean.get("quality"), dict) else {}
        metric, value = quality.get("metric"), quality.get("value")
        try:
            with self.db.tx(f"record {model} v{version}") as session:
                model_row = self._ensure_model(session, model, kind)
                if rows.version_row(session, model, version) is not None:
                    return False
                now = self.db.now()
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
                        actor=SYSTEM_ACTOR,
                        evidence=None,
                    )
                )
                return True
        except StoreError as exc:
            if _raced(exc) and self._version_exists(model, version):
                return False  # another process recorded it first
            raise

    def _version_exists(self, model: str, version: int) -> bool:
        with self.db.tx(f"read {model} v{version}") as session:
            return rows.version_row(session, model, version) is not None

    # -- state changes --------------------------------------------------------------------------
    def transition(
        self,
        model: str,
        version: int,
        to: State,
        *,
        reason: str,
        actor: str = SYSTEM_ACTOR,
        evidence: dict[str, Any] | None = None,
        decision: Decision | None = None,
    ) -> VersionRecord:
        """Move a version to `to` (InvalidTransition if the lifecycle forbids it); a no-op if already there.

        The lifecycle's consequences are written in the same transaction, so a crash between them
        cannot leave a half-made move for the next pass to trip over:
        - entering rolled_back, failed or rejected takes away the stable flag (a version that must
          not serve cannot stay the one that serves requests naming no version);
        - entering promoted makes the version the stable one (the old stable keeps `promoted`,
          loses the flag and gets `retired_at`, so it drains);
        - leaving canary closes its open rollout with the outcome.

        With `decision`, the decision that caused the move is stored in the same transaction, so
        the history never shows a state change without its reason, nor a decision that changed
        nothing; a refused move or a no-op stores no decision.
        """
        target = state(to)
        clean_evidence = clean_json(evidence, where="evidence") if evidence is not None else None
        clean = clean_decision(decision) if decision is not None else None
        for _ in range(CAS_RETRIES):
            with self.db.tx(f"move {model} v{version} to {target}") as session:
                row = rows.need_version(session, model, version, url=self.db.safe_url)
                source = State(row.state)
                if source == target:
                    return VersionRecord.from_row(row, model=model)
                if not allowed(source, target, actor=actor):
                    raise InvalidTransition(
                        f"{model} v{version} cannot move from {source} to {target} (actor {actor!r}); "
                        f"allowed from {source}: {', '.join(allowed_targets(source, actor=actor)) or 'nothing'}"
                    )
                now = self.db.now()
                values: dict[str, Any] = {"state": target.value, "state_changed_at": now, "reason": reason}
                if target in TERMINAL and row.is_stable:
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
                if clean is not None:
                    session.add(decision_row(row.id, clean, at=now))
                if source == State.canary:
                    _end_open_rollout(session, row.id, outcome=ROLLOUT_OUTCOME.get(target, target.value), at=now)
                if target == State.promoted:
                    session.flush()
                    _make_stable(session, row, at=now)
                session.flush()
                session.refresh(row)
                return VersionRecord.from_row(row, model=model)
        raise StoreError(f"{model} v{version} kept changing under a concurrent writer; try again")

    def set_stable(self, model: str, version: int, *, reason: str, actor: str = SYSTEM_ACTOR) -> None:
        """Make a promoted version the stable one; the old stable keeps `promoted`, loses the flag, gets retired_at.

        Both rows change in one transaction, and a marker transition (promoted -> promoted, evidence
        {"stable": true}) records who made it stable and why.
        """
        with self.db.tx(f"make {model} v{version} stable") as session:
            row = rows.need_version(session, model, version, url=self.db.safe_url)
            if row.is_stable:
                return
            if row.state != State.promoted.value:
                raise InvalidTransition(
                    f"{model} v{version} is {row.state}: only a promoted version can become the stable one"
                )
            now = self.db.now()
            old = _make_stable(session, row, at=now)
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

    def set_pin(self, model: str, version: int | None) -> None:
        """Pin the model to one version (automation paused for it) or clear the pin with None."""
        with self.db.tx(f"pin {model}") as session:
            row = rows.need_model(session, model, url=self.db.safe_url)
            if version is not None:
                rows.need_version(session, model, version, url=self.db.safe_url)
            row.pinned_version = version
            row.automation_paused = version is not None

    # -- rollouts -------------------------------------------------------------------------------
    def start_rollout(self, model: str, candidate: int, stable: int | None) -> int:
        """Open a rollout of `candidate` against `stable`; returns the open one if there already is one."""
        try:
            with self.db.tx(f"start the rollout of {model} v{candidate}") as session:
                existing = rows.open_rollout(session, model, candidate)
                if existing is not None:
                    return existing.id
                cand_row = rows.need_version(session, model, candidate, url=self.db.safe_url)
                stable_row = (
                    rows.need_version(session, model, stable, url=self.db.safe_url) if stable is not None else None
                )
                row = RolloutRow(
                    model_id=cand_row.model_id,
                    candidate_version_id=cand_row.id,
                    stable_version_id=stable_row.id if stable_row is not None else None,
                    phase=OPEN_PHASE,
                    started_at=self.db.now(),
                )
                session.add(row)
                session.flush()
                return row.id
        except StoreError as exc:
            if not _raced(exc):
                raise
            with self.db.tx(f"read the open rollout of {model} v{candidate}") as session:
                raced = rows.open_rollout(session, model, candidate)
            if raced is None:
                raise
            return raced.id

    def end_rollout(self, rollout_id: int, *, outcome: str) -> None:
        """Close a rollout with its outcome; closing one already closed keeps the first outcome."""
        with self.db.tx(f"end rollout {rollout_id}") as session:
            row = session.get(RolloutRow, rollout_id)
            if row is None:
                raise StoreError(f"unknown rollout {rollout_id} in {self.db.safe_url}")
            if row.ended_at is None:
                row.ended_at = self.db.now()
                row.outcome = outcome
                row.phase = ENDED_PHASE


ROLLOUT_OUTCOME = {State.promoted: "promoted", State.rolled_back: "rolled_back", State.failed: "failed"}


def _make_stable(session: Session, row: VersionRow, *, at: datetime) -> VersionRow | None:
    """Give `row` the stable flag; the model's old stable loses it and starts draining. Returns the old one."""
    old = session.scalars(
        select(VersionRow).where(
            VersionRow.model_id == row.model_id, VersionRow.is_stable.is_(True), VersionRow.id != row.id
        )
    ).one_or_none()
    if old is not None:
        old.is_stable = False
        old.retired_at = at
        session.flush()  # the partial unique index allows one stable: clear the old flag first
    row.is_stable = True
    row.stable_since = at
    row.retired_at = None
    return old


def _end_open_rollout(session: Session, version_id: int, *, outcome: str, at: datetime) -> None:
    """Close the version's open rollout, if any, with `outcome`."""
    session.execute(
        update(RolloutRow)
        .where(RolloutRow.candidate_version_id == version_id, RolloutRow.ended_at.is_(None))
        .values(ended_at=at, outcome=outcome, phase=ENDED_PHASE)
        .execution_options(synchronize_session=False)
    )
