"""The SQL history on real SQLite files and a real PostgreSQL server (one fresh database per test)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, get_type_hints

import numpy as np
import pytest
from alembic import command
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from control_plane.errors import InvalidTransition, StoreError
from control_plane.store import Decision, ModelRecord, ProbeWindowRecord, State, Store
from control_plane.store.database import alembic_config
from control_plane.store.evidence import INT_COLUMNS, JSON_COLUMNS, WINDOW_COLUMNS
from tests.conftest import POSTGRES_URL

SCHEMA_DOC = Path(__file__).resolve().parent.parent / "docs" / "schema.md"
TABLES = {
    "models",
    "versions",
    "rollouts",
    "rollout_steps",
    "replicas",
    "metric_marks",
    "transitions",
    "probe_windows",
    "decisions",
    "alerts",
    "manual_actions",
    "api_tokens",
}


class Clock:
    """A settable UTC clock, so durations in the history are exact."""

    def __init__(self, start: datetime) -> None:
        self.at = start

    def __call__(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> datetime:
        self.at += timedelta(seconds=seconds)
        return self.at


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'history.db'}"
    return str(request.getfixturevalue("postgres_schema_url"))


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2026, 11, 2, 9, 0, tzinfo=UTC))


@pytest.fixture
def store(db_url: str, clock: Clock) -> Iterator[Store]:
    s = Store.open(db_url, clock=clock)
    yield s
    s.close()


def manifest(version: int, quality: float = 0.9) -> dict[str, Any]:
    return {
        "model": "intent",
        "version": version,
        "kind": "intent",
        "source": {"path": "ckpt", "sha256": f"{version:064x}"},
        "quality": {"metric": "accuracy", "value": quality, "rows": 300},
    }


def walk(store: Store, model: str, version: int, *states: State, clock: Clock | None = None, step: float = 0) -> None:
    for state in states:
        if clock is not None and step:
            clock.advance(step)
        store.lifecycle.transition(model, version, state, reason=f"to {state}")


def rows(store: Store, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    with store.db.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql), params)]


# -- schema ------------------------------------------------------------------------------------
def test_migrations_create_every_table_and_match_the_models(db_url: str) -> None:
    Store.open(db_url).close()
    jobs = SQLAlchemyJobStore(url=db_url, tablename="apscheduler_jobs")  # the scheduler shares the database
    jobs.start(BackgroundScheduler(), "default")
    jobs.shutdown()
    again = Store.open(db_url)  # a second open finds the schema at head and changes nothing
    try:
        tables = set(inspect(again.db.engine).get_table_names())
        assert tables >= TABLES | {"alembic_version", "apscheduler_jobs"}
        assert rows(again, "SELECT version_num FROM alembic_version") == [("0003",)]
        config = alembic_config()
        config.set_main_option("sqlalchemy.url", db_url.replace("%", "%%"))  # configparser interpolation
        command.check(config)  # raises when the migrated schema and models.py disagree
        indexes = {i["name"] for i in inspect(again.db.engine).get_indexes("versions")}
        assert "uq_versions_one_stable" in indexes
        command.downgrade(config, "base")  # the way back works too, and leaves other tables alone
        assert set(inspect(again.db.engine).get_table_names()) == {"alembic_version", "apscheduler_jobs"}
    finally:
        again.close()
    with Store.open(db_url) as store:
        assert set(inspect(store.db.engine).get_table_names()) >= TABLES


def test_processes_starting_together_on_a_fresh_database_all_succeed(db_url: str) -> None:
    """Three `shepherd tick`s from cron at the same minute: one migrates, the others wait and find it done."""
    code = "import sys; from control_plane.store import Store; Store.open(sys.argv[1]).lifecycle.ensure_model('m', kind='k')"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, db_url], stderr=subprocess.PIPE, text=True) for _ in range(3)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    with Store.open(db_url) as store:
        assert rows(store, "SELECT name FROM models") == [("m",)]
        assert rows(store, "SELECT version_num FROM alembic_version") == [("0003",)]


def test_open_without_migrate_on_an_empty_database_is_a_clear_error(db_url: str) -> None:
    with pytest.raises(StoreError, match=r"schema is at revision none \(empty\).*shepherd tick"):
        Store.open(db_url, migrate=False)


# -- versions and transitions ------------------------------------------------------------------
def test_record_version_is_idempotent_and_keeps_the_manifest(store: Store) -> None:
    assert store.lifecycle.record_version("intent", 1, manifest=manifest(1, 0.91), kind="intent") is True
    assert store.lifecycle.record_version("intent", 1, manifest=manifest(1, 0.5), kind="intent") is False
    record = store.read.get_version("intent", 1)
    assert record is not None
    assert (record.state, record.is_stable, record.quality_metric, record.quality_value) == (
        State.discovered,
        False,
        "accuracy",
        0.91,
    )
    assert record.source_sha256 == f"{1:064x}" and record.manifest["quality"]["rows"] == 300
    assert record.discovered_at.tzinfo is not None and record.discovered_at == datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    assert rows(store, "SELECT from_state, to_state, actor FROM transitions") == [(None, "discovered", "shepherd")]
    assert rows(store, "SELECT COUNT(*) FROM versions") == [(1,)]
    assert store.read.get_version("intent", 2) is None and store.read.get_version("nobody", 1) is None


@pytest.mark.parametrize("bad", [0, -3, "2", True])
def test_record_version_refuses_a_bad_version_number(store: Store, bad: Any) -> None:
    with pytest.raises(StoreError, match="positive integer"):
        store.lifecycle.record_version("intent", bad, manifest={}, kind="intent")
    assert rows(store, "SELECT COUNT(*) FROM versions") == [(0,)]


def test_allowed_transitions_are_recorded_with_actor_and_evidence(store: Store, clock: Clock) -> None:
    store.lifecycle.record_version("intent", 1, manifest=manifest(1), kind="intent")
    clock.advance(5)
    store.lifecycle.transition("intent", 1, State.preflight, reason="next candidate")
    clock.advance(5)
    record = store.lifecycle.transition(
        "intent", 1, State.canary, reason="preflight passed", evidence={"p95": np.float64(3.5), "nan": float("nan")}
    )
    assert record.state == State.canary and record.state_changed_at == clock.at and record.reason == "preflight passed"
    again = store.lifecycle.transition("intent", 1, State.canary, reason="repeat")  # already there: a no-op
    assert again.reason == "preflight passed"
    history = rows(store, "SELECT from_state, to_state, actor, evidence FROM transitions ORDER BY id")
    assert [(f, t, a) for f, t, a, _ in history] == [
        (None, "discovered", "shepherd"),
        ("discovered", "preflight", "shepherd"),
        ("preflight", "canary", "shepherd"),
    ]
    evidence = history[-1][3]
    assert (json.loads(evidence) if isinstance(evidence, str) else evidence) == {"p95": 3.5, "nan": None}


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ((), State.canary),  # discovered cannot skip preflight
        ((), State.promoted),
        ((State.preflight, State.canary), State.preflight),
        ((State.preflight, State.rejected), State.promoted),  # terminal for automation
        ((State.preflight, State.canary, State.rolled_back), State.canary),
        ((State.preflight, State.failed), State.preflight),
    ],
)
def test_refused_transitions_raise_and_change_nothing(store: Store, path: tuple[State, ...], target: State) -> None:
    store.lifecycle.record_version("intent", 1, manifest=manifest(1), kind="intent")
    walk(store, "intent", 1, *path)
    before = store.read.get_version("intent", 1)
    count = rows(store, "SELECT COUNT(*) FROM transitions")
    with pytest.raises(InvalidTransition, match=rf"cannot move from \w+ to {target.value}") as caught:
        store.lifecycle.transition("intent", 1, target, reason="should fail")
    assert caught.value.exit_code == 22
    assert store.read.get_version("intent", 1) == before
    assert rows(store, "SELECT COUNT(*) FROM transitions") == count


def test_a_person_may_bring_back_a_terminal_version(store: Store) -> None:
    store.lifecycle.record_version("intent", 1, manifest=manifest(1), kind="intent")
    walk(store, "intent", 1, State.preflight, State.canary, State.rolled_back)
    record = store.lifecycle.transition("intent", 1, State.canary, reason="re-run by hand", actor="alice")
    assert record.state == State.canary
    assert rows(store, "SELECT actor FROM transitions ORDER BY id DESC LIMIT 1") == [("alice",)]
    with pytest.raises(InvalidTransition):
        store.lifecycle.transition("intent", 1, State.discovered, reason="no way back", actor="alice")


def test_unknown_version_and_state_are_clear_errors(store: Store) -> None:
    with pytest.raises(StoreError, match="unknown version intent v7"):
        store.lifecycle.transition("intent", 7, State.preflight, reason="x")
    store.lifecycle.record_version("intent", 1, manifest=manifest(1), kind="intent")
    with pytest.raises(StoreError, match="unknown state 'baked'"):
        store.lifecycle.transition("intent", 1, "baked", reason="x")  # type: ignore[arg-type]


# -- stable ------------------------------------------------------------------------------------
def test_exactly_one_stable_version(store: Store, clock: Clock) -> None:
    for v in (1, 2, 3):
        store.lifecycle.record_version("intent", v, manifest=manifest(v), kind="intent")
    walk(store, "intent", 1, State.preflight, State.promoted)  # entering promoted makes it the stable one
    clock.advance(60)
    walk(store, "intent", 2, State.preflight, State.canary, State.promoted)
    with pytest.raises(InvalidTransition, match="only a promoted version"):
        store.lifecycle.set_stable("intent", 3, reason="not promoted")
    store.lifecycle.set_stable("intent", 2, reason="again")  # already stable: nothing to write

    old, new = store.read.get_version("intent", 1), store.read.stable("intent")
    assert new is not None and new.version == 2 and new.stable_since == clock.at
    assert old is not None and (old.state, old.is_stable, old.retired_at) == (State.promoted, False, clock.at)
    assert rows(store, "SELECT COUNT(*) FROM versions WHERE is_stable") == [(1,)]
    last = rows(store, "SELECT from_state, to_state, reason FROM transitions ORDER BY id DESC LIMIT 1")
    assert last == [("canary", "promoted", "to promoted")]

    with store.db.engine.connect() as conn, pytest.raises(IntegrityError):  # the database refuses a second one
        conn.execute(text("UPDATE versions SET is_stable = true WHERE version = 1"))
        conn.commit()

    store.lifecycle.transition("intent", 2, State.rolled_back, reason="manual rollback of the stable", actor="bob")
    assert store.read.stable("intent") is None
    assert store.read.get_version("intent", 2).retired_at == clock.at  # type: ignore[union-attr]
    store.lifecycle.set_stable("intent", 1, reason="back to v1", actor="bob")  # a promoted version made stable again
    marker = rows(store, "SELECT from_state, to_state, reason, actor FROM transitions ORDER BY id DESC LIMIT 1")
    assert marker == [("promoted", "promoted", "back to v1", "bob")]
    assert store.read.stable("intent").version == 1  # type: ignore[union-attr]


# -- rollouts, windows, decisions, alerts ------------------------------------------------------
def test_rollouts_are_idempotent_per_candidate(store: Store, clock: Clock) -> None:
    for v in (1, 2):
        store.lifecycle.record_version("intent", v, manifest=manifest(v), kind="intent")
    first = store.lifecycle.start_rollout("intent", 2, 1)
    assert store.lifecycle.start_rollout("intent", 2, 1) == first
    rollout = store.read.open_rollout("intent", 2)
    assert rollout is not None and (rollout.id, rollout.candidate, rollout.stable, rollout.phase) == (
        first,
        2,
        1,
        "canary",
    )
    assert store.read.open_rollout("intent", 1) is None
    clock.advance(30)
    store.lifecycle.end_rollout(first, outcome="rolled_back")
    store.lifecycle.end_rollout(first, outcome="promoted")  # closing twice keeps the first outcome
    assert store.read.open_rollout("intent", 2) is None
    assert rows(store, "SELECT outcome, phase FROM rollouts") == [("rolled_back", "ended")]
    assert store.lifecycle.start_rollout("intent", 2, None) != first
    with pytest.raises(StoreError, match="unknown rollout 999"):
        store.lifecycle.end_rollout(999, outcome="x")


def test_probe_windows_keep_figures_and_unknown_keys(store: Store, clock: Clock) -> None:
    for v in (1, 2):
        store.lifecycle.record_version("intent", v, manifest=manifest(v), kind="intent")
    rollout = store.lifecycle.start_rollout("intent", 2, 1)
    start = clock.at
    figures = {
        "requests": np.int64(40),
        "errors": 1,
        "p95_ms": np.float64(12.5),
        "p99_ms": float("nan"),
        "client_p95_ms": 13.0,
        "triton_cpu_memory_bytes": 3.2e9,
        "failure_by_reason": {"OTHER": 1},
        "samples": [1.0, np.float32(2.5), 3.0],
        "agreement": 0.99,
        "batch": 8,
        "raw": {"server": {"requests": 40}},
    }
    first = store.evidence.add_probe_window(
        "intent", 2, role="candidate", rollout_id=rollout, started_at=start, ended_at=clock.advance(10), figures=figures
    )
    store.evidence.add_probe_window(
        "intent", 1, role="stable", rollout_id=rollout, started_at=start, ended_at=clock.at, figures={"requests": 40}
    )
    store.evidence.add_probe_window(
        "intent", 2, role="candidate", rollout_id=rollout, started_at=clock.advance(10), ended_at=clock.advance(10),
        figures={"requests": 5},
    )  # fmt: skip
    windows = store.read.probe_windows("intent", 2, role="candidate", rollout_id=rollout)
    assert windows[0].id == first and len(windows) == 2
    w = windows[0]
    assert (w.requests, w.errors, w.p95_ms, w.p99_ms, w.triton_cpu_memory_bytes) == (40, 1, 12.5, None, 3_200_000_000)
    assert w.samples == (1.0, 2.5, 3.0) and w.failure_by_reason == {"OTHER": 1}
    assert w.raw == {"server": {"requests": 40}, "batch": 8}
    assert len(store.read.probe_windows("intent", 2, since=start + timedelta(seconds=15))) == 1
    assert [x.role for x in store.read.probe_windows("intent", 1)] == ["stable"]

    with pytest.raises(StoreError, match="role must be one of"):
        store.evidence.add_probe_window(
            "intent", 2, role="shadow", rollout_id=None, started_at=start, ended_at=start, figures={}
        )
    with pytest.raises(StoreError, match="timezone-aware"):
        store.evidence.add_probe_window(
            "intent", 2, role="candidate", rollout_id=None, started_at=datetime(2026, 1, 1), ended_at=start, figures={}
        )
    with pytest.raises(StoreError, match="p95_ms must be a number"):
        store.evidence.add_probe_window(
            "intent", 2, role="candidate", rollout_id=None, started_at=start, ended_at=start, figures={"p95_ms": "fast"}
        )
    assert rows(store, "SELECT COUNT(*) FROM probe_windows") == [(3,)]


def test_decisions_alerts_manual_actions_and_pins(store: Store, clock: Clock) -> None:
    store.lifecycle.record_version("intent", 1, manifest=manifest(1), kind="intent")
    store.evidence.add_decision(
        "intent",
        1,
        Decision(outcome="wait", reason="not enough samples", checks=[{"name": "latency", "n": 3}], policy={"a": 1}),
    )
    clock.advance(1)
    store.evidence.add_decision(
        "intent", 1, Decision(outcome="promote", reason="ok", checks={"latency": {"p": 0.4}}, policy={})
    )
    assert [(d.outcome, d.checks) for d in store.read.decisions("intent", 1)] == [
        ("wait", [{"name": "latency", "n": 3}]),
        ("promote", {"latency": {"p": 0.4}}),
    ]
    with pytest.raises(StoreError, match="outcome must be one of"):
        store.evidence.add_decision("intent", 1, Decision(outcome="maybe", reason="", checks={}, policy={}))

    sent = store.evidence.add_alert(
        event="rollback", model="intent", version=1, channel="slack", payload={"reason": "slow"}
    )
    failed = store.evidence.add_alert(event="rollback", model="intent", version=1, channel="email", payload={})
    assert [a.id for a in store.read.pending_alerts()] == [sent, failed]
    store.evidence.update_alert(sent, status="sent", attempts=1)
    store.evidence.update_alert(failed, status="failed", attempts=3, last_error="SMTP 554")
    assert store.read.pending_alerts() == []
    assert rows(store, "SELECT status, attempts, last_error FROM alerts ORDER BY id") == [
        ("sent", 1, None),
        ("failed", 3, "SMTP 554"),
    ]
    with pytest.raises(StoreError, match="event must be one of"):
        store.evidence.add_alert(event="party", model="intent", version=1, channel="slack", payload={})

    store.evidence.add_manual_action(model="intent", version=1, action="pin", actor="alice", reason="incident 42")
    store.lifecycle.set_pin("intent", 1)
    assert store.read.pinned("intent") == 1 and store.read.status()[0]["automation_paused"] is True
    store.lifecycle.set_pin("intent", None)
    assert store.read.pinned("intent") is None and store.read.pinned("unknown") is None
    with pytest.raises(StoreError, match="unknown version intent v9"):
        store.lifecycle.set_pin("intent", 9)
    assert rows(store, "SELECT action, actor, reason FROM manual_actions") == [("pin", "alice", "incident 42")]


def test_history_and_status_are_json_with_time_in_canary(store: Store, clock: Clock) -> None:
    for v in (1, 2, 3):
        store.lifecycle.record_version("intent", v, manifest=manifest(v), kind="intent")
    walk(store, "intent", 1, State.preflight, State.promoted)
    store.lifecycle.set_stable("intent", 1, reason="first version")
    walk(store, "intent", 2, State.preflight, State.canary)
    rollout = store.lifecycle.start_rollout("intent", 2, 1)
    clock.advance(90)
    store.evidence.add_decision(
        "intent", 2, Decision(outcome="rollback", reason="p95 +60%", checks={}, policy={}, rollout_id=rollout)
    )
    store.lifecycle.transition("intent", 2, State.rolled_back, reason="p95 +60%")
    clock.advance(20)
    walk(store, "intent", 3, State.preflight, State.canary)
    clock.advance(30)  # v3 still in canary: counts up to now

    history = store.read.history()
    json.dumps(history)  # JSON-serialisable as it is
    by_version = {h["version"]: h for h in history}
    assert [(h["model"], h["version"], h["state"]) for h in history] == [
        ("intent", 1, "promoted"),
        ("intent", 2, "rolled_back"),
        ("intent", 3, "canary"),
    ]
    assert by_version[1]["is_stable"] is True and by_version[1]["time_in_canary_s"] is None
    assert by_version[2]["time_in_canary_s"] == 90.0 and by_version[3]["time_in_canary_s"] == 30.0
    assert by_version[2]["last_decision"]["outcome"] == "rollback"
    assert by_version[2]["last_decision"]["at"] == (clock.at - timedelta(seconds=50)).isoformat()
    assert [h["version"] for h in store.read.history(since=clock.at - timedelta(seconds=40))] == [3]
    assert store.read.history(model="other") == []

    (status,) = store.read.status()
    assert (status["model"], status["stable"], status["candidate"], status["phase"]) == ("intent", 1, 3, "canary")


# -- the reconciler's snapshot, decisions stored with their transition ---------------------------
@contextmanager
def counted_selects(store: Store) -> Iterator[list[str]]:
    """The SELECT statements the store sends while the block runs."""
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append(statement)

    event.listen(store.db.engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(store.db.engine, "before_cursor_execute", count)


def test_snapshot_holds_the_whole_state_in_few_selects(store: Store, clock: Clock) -> None:
    for v in (1, 2, 3, 4):
        store.lifecycle.record_version("intent", v, manifest=manifest(v), kind="intent")
    store.lifecycle.record_version("ranker", 1, manifest={}, kind="ranker")
    walk(store, "intent", 1, State.preflight, State.promoted)
    store.lifecycle.set_stable("intent", 1, reason="first version")
    walk(store, "intent", 2, State.preflight, State.canary, State.rolled_back)
    walk(store, "intent", 3, State.preflight, State.canary)
    rollout = store.lifecycle.start_rollout("intent", 3, 1)
    ended = store.lifecycle.start_rollout("intent", 2, 1)
    store.lifecycle.end_rollout(ended, outcome="rolled_back")
    store.lifecycle.set_pin("ranker", 1)
    store.fleet.add_step(rollout, 0, strategy="canary", share=1 / 3, roles={"r0": "canary", "r1": "baseline"}, reason="")
    store.fleet.add_step(rollout, 1, strategy="canary", share=2 / 3, roles={"r0": "canary", "r1": "canary"}, reason="")
    store.fleet.add_step(ended, 0, strategy="bluegreen", share=0.0, roles={"r0": "stable"}, reason="")
    store.fleet.record_health([("r0", "127.0.0.1:1", "127.0.0.1:2", True, None)])
    clock.advance(7)

    with counted_selects(store) as selects:
        snap = store.read.snapshot()
    # models, versions, open rollouts, their current steps, the fleet's health: one each
    assert len(selects) <= 5, selects
    assert set(snap.steps) == {rollout} and snap.steps[rollout].step == 1  # the latest step of open rollouts only
    assert snap.steps[rollout].role_of("r1") == "canary" and snap.steps[rollout].role_of("r9") == "stable"
    assert snap.replicas["r0"].reachable

    assert snap.taken_at == clock.at
    assert set(snap.models) == {"intent", "ranker"}
    assert snap.models["ranker"] == ModelRecord(name="ranker", kind="ranker", pinned_version=1, automation_paused=True)
    assert snap.models["intent"].pinned_version is None and snap.models["intent"].automation_paused is False
    assert [(v.model, v.version) for v in snap.versions] == [("intent", n) for n in (1, 2, 3, 4)] + [("ranker", 1)]
    assert snap.versions == tuple(store.read.versions())  # the same records the single reads give
    assert [v.version for v in snap.versions_of("intent")] == [1, 2, 3, 4]
    assert [v.version for v in snap.versions_of("intent", State.canary, State.discovered)] == [3, 4]
    assert snap.versions_of("nobody") == []
    assert snap.get("intent", 3) == store.read.get_version("intent", 3) and snap.get("intent", 9) is None
    assert snap.stable("intent") == store.read.stable("intent") and snap.stable("ranker") is None
    assert (snap.pinned("ranker"), snap.pinned("intent"), snap.pinned("nobody")) == (1, None, None)
    assert snap.open_rollouts == (store.read.open_rollout("intent", 3),)
    assert snap.open_rollout("intent", 3) is not None and snap.open_rollout("intent", 3).id == rollout  # type: ignore[union-attr]
    assert snap.open_rollout("intent", 2) is None  # ended
    assert snap.known("intent") == {1, 2, 3, 4} and snap.known("nobody") == set()


def test_snapshot_of_an_empty_history(store: Store) -> None:
    snap = store.read.snapshot()
    assert (snap.models, snap.versions, snap.open_rollouts) == ({}, (), ())


def decision_rows(store: Store) -> list[tuple[Any, ...]]:
    return rows(store, "SELECT outcome, reason, rollout_id FROM decisions ORDER BY id")


def test_a_transition_stores_its_decision_in_the_same_transaction(store: Store, clock: Clock) -> None:
    for v in (1, 2):
        store.lifecycle.record_version("intent", v, manifest=manifest(v), kind="intent")
    walk(store, "intent", 2, State.preflight, State.canary)
    rollout = store.lifecycle.start_rollout("intent", 2, 1)
    clock.advance(60)
    rollback = Decision(
        outcome="rollback",
        reason="p95 +60%",
        checks=[{"name": "latency", "p": np.float64(0.001), "ratio": float("inf")}],
        policy={"max_latency_increase": 0.2},
        rollout_id=rollout,
    )
    record = store.lifecycle.transition("intent", 2, State.rolled_back, reason="p95 +60%", decision=rollback)
    assert record.state == State.rolled_back
    (stored,) = store.read.decisions("intent", 2)
    assert (stored.outcome, stored.reason, stored.rollout_id, stored.at) == ("rollback", "p95 +60%", rollout, clock.at)
    assert stored.checks == [{"name": "latency", "p": 0.001, "ratio": None}]
    assert stored.policy == {"max_latency_increase": 0.2}
    at = rows(store, "SELECT at FROM transitions WHERE to_state = 'rolled_back'")[0][0]
    assert _at(at) == stored.at  # one instant for the move and its cause

    clock.advance(5)  # already rolled back: a no-op, and no second decision
    store.lifecycle.transition("intent", 2, State.rolled_back, reason="again", decision=rollback)
    assert decision_rows(store) == [("rollback", "p95 +60%", rollout)]


class NotJSONAble:
    pass


@pytest.mark.parametrize(
    ("decision", "error"),
    [
        (Decision(outcome="rollback", reason="x", checks={"obj": NotJSONAble()}, policy={}), StoreError),
        (Decision(outcome="maybe", reason="x", checks={}, policy={}), StoreError),
        (Decision(outcome="rollback", reason="x", checks={}, policy={}, rollout_id=999), StoreError),  # FK refused
        (Decision(outcome="promote", reason="x", checks={}, policy={}), InvalidTransition),  # discovered -> promoted
    ],
)
def test_a_transition_and_its_decision_are_stored_together_or_not_at_all(
    store: Store, decision: Decision, error: type[Exception]
) -> None:
    store.lifecycle.record_version("intent", 1, manifest=manifest(1), kind="intent")
    if error is not InvalidTransition:
        walk(store, "intent", 1, State.preflight, State.canary)
    target = State.promoted if error is InvalidTransition else State.rolled_back
    before, transitions = store.read.get_version("intent", 1), rows(store, "SELECT COUNT(*) FROM transitions")
    with pytest.raises(error):
        store.lifecycle.transition("intent", 1, target, reason="x", decision=decision)
    assert store.read.get_version("intent", 1) == before
    assert rows(store, "SELECT COUNT(*) FROM transitions") == transitions
    assert decision_rows(store) == []


def test_probe_window_columns_are_read_off_the_table_and_match_the_record() -> None:
    record_fields = {f.name for f in fields(ProbeWindowRecord)}
    identity = {"id", "model", "version", "role", "rollout_id", "started_at", "ended_at", "raw"}
    assert set(WINDOW_COLUMNS) == record_fields - identity
    assert len(WINDOW_COLUMNS) == len(set(WINDOW_COLUMNS)) and {"requests", "p95_ms", "samples"} <= set(WINDOW_COLUMNS)
    hints = get_type_hints(ProbeWindowRecord)  # the record's types agree with the column types
    assert {n for n in WINDOW_COLUMNS if hints[n] == int | None} == INT_COLUMNS
    assert {n for n in WINDOW_COLUMNS if hints[n] not in (int | None, float | None)} == JSON_COLUMNS


# -- failures ----------------------------------------------------------------------------------
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_dead_postgres_is_a_store_error_with_the_url_masked() -> None:
    url = f"postgresql+psycopg://shepherd:s3cret@127.0.0.1:{_closed_port()}/history"
    with pytest.raises(StoreError) as caught:
        Store.open(url)
    message = str(caught.value)
    assert "s3cret" not in message and "shepherd:***@127.0.0.1" in message
    assert re.search(r"could not migrate the schema.*(refused|failed)", message), message
    assert caught.value.exit_code == 21


def test_an_unopenable_sqlite_file_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"sqlite:///.*/missing/h\.db: could not .*unable to open database file"):
        Store.open(f"sqlite:///{tmp_path / 'missing' / 'h.db'}")
    with pytest.raises(StoreError, match="not a database URL"):
        Store.open("this is not a url")


def test_a_database_that_dies_later_is_a_store_error(postgres_url: str) -> None:
    store = Store.open(postgres_url)
    try:
        store.lifecycle.record_version("intent", 1, manifest={}, kind="intent")
        name = make_url(postgres_url).database
        admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()
        with pytest.raises(StoreError, match=rf"{name}: could not read intent v1: .*{name}"):
            store.read.get_version("intent", 1)
    finally:
        store.close()


FAIL_ON_BOOM = {
    "sqlite": [
        "CREATE TRIGGER boom BEFORE INSERT ON transitions WHEN NEW.reason = 'boom' "
        "BEGIN SELECT RAISE(ABORT, 'boom refused'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF NEW.reason = 'boom' THEN RAISE EXCEPTION 'boom refused'; END IF; RETURN NEW; END $$",
        "CREATE TRIGGER boom BEFORE INSERT ON transitions FOR EACH ROW EXECUTE FUNCTION boom()",
    ],
}


def test_a_write_that_fails_halfway_leaves_no_partial_row(store: Store) -> None:
    """Rows are updated before the transition row is inserted; when that insert fails, none of it stays."""
    with store.db.engine.begin() as conn:
        for statement in FAIL_ON_BOOM[store.db.engine.dialect.name]:
            conn.execute(text(statement))
    for v in (1, 2, 3):
        store.lifecycle.record_version("intent", v, manifest=manifest(v), kind="intent")
    walk(store, "intent", 1, State.preflight, State.promoted)
    walk(store, "intent", 2, State.preflight, State.canary, State.promoted)  # v2 stable, v1 promoted and retired
    walk(store, "intent", 3, State.preflight, State.canary)
    before = store.read.versions()
    transitions = rows(store, "SELECT COUNT(*) FROM transitions")

    with pytest.raises(StoreError, match="boom refused"):
        store.lifecycle.transition(
            "intent", 3, State.rolled_back, reason="boom"
        )  # versions updated, then the insert fails
    with pytest.raises(StoreError, match="boom refused"):
        store.lifecycle.set_stable("intent", 1, reason="boom")  # both stable flags flipped, then the insert fails
    assert store.read.versions() == before
    assert store.read.stable("intent").version == 2  # type: ignore[union-attr]
    assert rows(store, "SELECT COUNT(*) FROM transitions") == transitions


def test_promotion_makes_stable_and_closes_the_rollout_in_one_transaction(store: Store) -> None:
    """A crash between "promoted" and "stable" must not exist: both, and the rollout's end, or none of it."""
    with store.db.engine.begin() as conn:
        for statement in FAIL_ON_BOOM[store.db.engine.dialect.name]:
            conn.execute(text(statement))
    for v in (1, 2):
        store.lifecycle.record_version("intent", v, manifest=manifest(v), kind="intent")
    walk(store, "intent", 1, State.preflight, State.promoted)
    assert store.read.stable("intent").version == 1  # type: ignore[union-attr]  (first version: no set_stable call)
    walk(store, "intent", 2, State.preflight, State.canary)
    rollout = store.lifecycle.start_rollout("intent", 2, 1)

    with pytest.raises(StoreError, match="boom refused"):
        store.lifecycle.transition("intent", 2, State.promoted, reason="boom")  # the transition insert fails
    assert store.read.get_version("intent", 2).state == State.canary  # type: ignore[union-attr]
    assert store.read.stable("intent").version == 1  # type: ignore[union-attr]
    assert store.read.open_rollout("intent", 2) is not None

    store.lifecycle.transition("intent", 2, State.promoted, reason="passed")
    old, new = store.read.get_version("intent", 1), store.read.get_version("intent", 2)
    assert new is not None and new.is_stable and old is not None and not old.is_stable
    assert old.retired_at is not None  # the old stable drains
    assert store.read.open_rollout("intent", 2) is None
    assert rows(store, "SELECT outcome FROM rollouts WHERE id = :id", id=rollout) == [("promoted",)]


# -- the five example queries of docs/schema.md -------------------------------------------------
def documented_queries(dialect: str) -> dict[str, str]:
    """The SQL blocks of docs/schema.md for `dialect` (blocks marked `any` serve both)."""
    found: dict[str, str] = {}
    for block in re.findall(r"```sql\n(.*?)```", SCHEMA_DOC.read_text(), flags=re.S):
        name = re.search(r"^-- name: (\w+)$", block, flags=re.M)
        target = re.search(r"^-- dialect: (\w+)$", block, flags=re.M)
        assert name and target, f"an SQL block in {SCHEMA_DOC} lacks its name/dialect header:\n{block}"
        if target.group(1) in (dialect, "any"):
            found[name.group(1)] = block
    return found


def seed(store: Store, clock: Clock) -> dict[str, Any]:
    """Four versions of `intent` over ten days: v1 stable, v2 rolled back 10 days ago, v3 two days ago, v4 promoted."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    day_10, day_2, day_1 = today - timedelta(days=10), today - timedelta(days=2), today - timedelta(days=1)
    clock.at = day_10 + timedelta(hours=8)
    for v in (1, 2):
        store.lifecycle.record_version("intent", v, manifest=manifest(v), kind="intent")
    walk(store, "intent", 1, State.preflight, State.promoted)
    store.lifecycle.set_stable("intent", 1, reason="first version")
    walk(store, "intent", 2, State.preflight, State.canary)
    rollout = store.lifecycle.start_rollout("intent", 2, 1)
    for p95, client in ((10.0, 11.0), (14.0, 15.0)):
        start = clock.at
        store.evidence.add_probe_window(
            "intent", 1, role="stable", rollout_id=rollout, started_at=start, ended_at=clock.advance(300),
            figures={"p95_ms": p95, "client_p95_ms": client},
        )  # fmt: skip
        store.evidence.add_probe_window(
            "intent", 2, role="candidate", rollout_id=rollout, started_at=start, ended_at=clock.at,
            figures={"p95_ms": p95 * 1.6},
        )  # fmt: skip
    store.lifecycle.transition("intent", 2, State.rolled_back, reason="p95 latency +60% (Mann-Whitney p=0.001)")
    store.lifecycle.end_rollout(rollout, outcome="rolled_back")

    clock.at = day_2 + timedelta(hours=10)
    store.lifecycle.record_version("intent", 3, manifest=manifest(3, 0.86), kind="intent")
    walk(store, "intent", 3, State.preflight, State.canary)
    rollout = store.lifecycle.start_rollout("intent", 3, 1)
    for p95 in (20.0, 22.0):
        start = clock.at
        store.evidence.add_probe_window(
            "intent", 1, role="stable", rollout_id=rollout, started_at=start, ended_at=clock.advance(450),
            figures={"p95_ms": p95, "client_p95_ms": p95 + 1},
        )  # fmt: skip
    store.evidence.add_decision(
        "intent",
        3,
        Decision(
            outcome="wait",
            reason="12 samples < 30",
            checks={"samples": 12},
            policy={"min_samples": 30},
            rollout_id=rollout,
        ),
    )
    store.evidence.add_decision(
        "intent",
        3,
        Decision(
            outcome="rollback",
            reason="quality 0.86 < 0.90 - 0.02",
            checks={"quality": {"candidate": 0.86, "stable": 0.9}},
            policy={"min_samples": 30},
            rollout_id=rollout,
        ),
    )
    store.lifecycle.transition(
        "intent", 3, State.rolled_back, reason="quality 0.86 < 0.90 - 0.02", evidence={"q": 0.86}
    )
    store.lifecycle.end_rollout(rollout, outcome="rolled_back")
    store.evidence.add_alert(event="rollback", model="intent", version=3, channel="slack", payload={})
    failed = store.evidence.add_alert(event="rollback", model="intent", version=3, channel="email", payload={})
    store.evidence.update_alert(failed, status="failed", attempts=3, last_error="SMTP 554 relay denied")
    store.evidence.update_alert(failed - 1, status="sent", attempts=1)

    clock.at = day_1 + timedelta(hours=9)
    store.lifecycle.record_version("intent", 4, manifest=manifest(4), kind="intent")
    walk(store, "intent", 4, State.preflight, State.canary)
    clock.advance(1200)
    store.lifecycle.transition("intent", 4, State.promoted, reason="all checks passed")
    store.lifecycle.set_stable("intent", 4, reason="all checks passed")
    return {
        "day_10": day_10.date(),
        "day_2": day_2.date(),
        "v3_rolled_back_at": day_2 + timedelta(hours=10, seconds=900),
    }


def _day(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def _at(value: Any) -> datetime:
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def test_example_queries(store: Store, clock: Clock) -> None:
    seeded = seed(store, clock)
    queries = documented_queries(store.db.engine.dialect.name)
    assert set(queries) == {
        "rolled_back_last_week",
        "time_in_canary",
        "stable_p95_per_day",
        "decisions_for_version",
        "failed_alerts",
    }

    rolled = rows(store, queries["rolled_back_last_week"])
    assert [(m, v, actor, reason) for m, v, _, actor, reason in rolled] == [
        ("intent", 3, "shepherd", "quality 0.86 < 0.90 - 0.02")
    ]  # v2 was rolled back ten days ago: not last week
    assert _at(rolled[0][2]) == seeded["v3_rolled_back_at"]

    canary = {(m, v): (state, float(s)) for m, v, state, s in rows(store, queries["time_in_canary"])}
    assert canary == {
        ("intent", 2): ("rolled_back", 600.0),
        ("intent", 3): ("rolled_back", 900.0),
        ("intent", 4): ("promoted", 1200.0),
    }

    per_day = [
        (m, _day(d), v, n, float(avg), float(top), float(client))
        for m, d, v, n, avg, top, client in rows(store, queries["stable_p95_per_day"])
    ]
    assert per_day == [
        ("intent", seeded["day_10"], 1, 2, 12.0, 14.0, 13.0),
        ("intent", seeded["day_2"], 1, 2, 21.0, 22.0, 22.0),
    ]

    decisions = rows(store, queries["decisions_for_version"])
    assert [(outcome, reason) for _, outcome, reason, *_ in decisions] == [
        ("wait", "12 samples < 30"),
        ("rollback", "quality 0.86 < 0.90 - 0.02"),
    ]
    checks = decisions[1][4]
    assert (json.loads(checks) if isinstance(checks, str) else checks) == {
        "quality": {"candidate": 0.86, "stable": 0.9}
    }

    failed = rows(store, queries["failed_alerts"])
    assert [(event, m, v, channel, attempts, error) for _, event, m, v, channel, attempts, error in failed] == [
        ("rollback", "intent", 3, "email", 3, "SMTP 554 relay denied")
    ]


def test_two_writers_racing_on_one_version_cannot_both_win(db_url: str) -> None:
    """Both read `canary`, then both try to move it; the compare-and-set lets one through, the other re-reads."""
    import threading

    barrier = threading.Barrier(2, timeout=20)
    armed = threading.Event()

    def clock() -> datetime:
        if armed.is_set() and threading.current_thread() is not threading.main_thread():
            barrier.wait()  # both writers have read the row before either writes
        return datetime.now(UTC)

    setup = Store.open(db_url)
    setup.lifecycle.record_version("intent", 1, manifest=manifest(1), kind="intent")
    walk(setup, "intent", 1, State.preflight, State.canary)
    first, second = Store.open(db_url, clock=clock), Store.open(db_url, clock=clock)
    outcomes: dict[str, object] = {}

    def move(store: Store, target: State) -> None:
        try:
            outcomes[target.value] = store.lifecycle.transition("intent", 1, target, reason=f"race to {target}").state
        except StoreError as exc:
            outcomes[target.value] = exc

    armed.set()
    threads = [
        threading.Thread(target=move, args=(first, State.promoted)),
        threading.Thread(target=move, args=(second, State.failed)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    armed.clear()
    try:
        winners = [k for k, v in outcomes.items() if isinstance(v, State)]
        losers = [v for v in outcomes.values() if not isinstance(v, State)]
        assert len(winners) == 1 and len(losers) == 1, outcomes
        assert isinstance(losers[0], InvalidTransition), losers[0]
        final = setup.read.get_version("intent", 1)
        assert final is not None and final.state.value == winners[0]
        assert rows(setup, "SELECT from_state, to_state FROM transitions WHERE from_state = 'canary'") == [
            ("canary", winners[0])
        ]
    finally:
        for s in (setup, first, second):
            s.close()
