"""`shepherd serve`: the HTTP API over a real SQLite history filled through the Store.

Tokens and roles (401, 403), every read, the error shape, /metrics, /healthz, /readyz, JSON logs with
secrets masked, the committed OpenAPI schema, and a schemathesis fuzz of that schema. One test runs
a real promote on the real local Triton through real uvicorn, then the `--server` CLI round trip;
one runs the `shepherd serve` command itself on PostgreSQL.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from prometheus_client.parser import text_string_to_metric_families
from schemathesis import GenerationMode
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from builders.repository import ModelRepository
from control_plane.api import logs, metrics
from control_plane.api.app import create_app, openapi_document
from control_plane.api.server import serving
from control_plane.api.tokens import Tokens
from control_plane.cli import main
from control_plane.errors import TritonUnreachable
from control_plane.local_triton import LocalTriton
from control_plane.report import TickReport
from control_plane.runtime import Runtime, open_runtime
from control_plane.settings import load_settings
from control_plane.store import Decision, State, Store
from probes.errors import MetricsUnavailable
from tests.classifier_models import publish
from tests.test_control_plane import FAST_POLICY, establish_stable, make_runtime, ready, state_of, tick_until

ROOT = Path(__file__).resolve().parent.parent
OPENAPI = ROOT / "docs" / "openapi.json"
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.at = T0

    def __call__(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> datetime:
        self.at += timedelta(seconds=seconds)
        return self.at


def dead_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fill(store: Store, clock: Clock) -> int:
    """intent v1 stable, v2 in canary (two steps, windows, a wait), v3 rejected; ranker v1 stable; two replicas.

    Returns the id of v2's rollout.
    """
    manifest = {"source": {"sha256": "0" * 64}, "quality": {"metric": "accuracy", "value": 0.9, "rows": 96}}
    for model, versions in (("intent", (1, 2, 3)), ("ranker", (1,))):
        for v in versions:
            store.lifecycle.record_version(model, v, manifest=manifest, kind="custom")
    for model in ("intent", "ranker"):
        store.lifecycle.transition(model, 1, State.preflight, reason="next candidate")
        store.lifecycle.transition(
            model, 1, State.promoted, reason="first version",
            decision=Decision(outcome="promote", reason="first version", checks={}, policy={}),
        )  # fmt: skip
    clock.advance(3600)
    store.lifecycle.transition("intent", 2, State.preflight, reason="next candidate")
    store.lifecycle.transition(
        "intent", 2, State.canary, reason="preflight passed",
        decision=Decision(outcome="promote", reason="preflight passed", checks={"quality": {"ok": True}}, policy={}),
    )  # fmt: skip
    rollout = store.lifecycle.start_rollout("intent", 2, 1)
    store.fleet.add_step(
        rollout, 0, strategy="canary", share=1 / 3, roles={"r0": "canary", "r1": "baseline", "r2": "baseline"},
        reason="one canary replica of three",
    )  # fmt: skip
    for role, version in (("candidate", 2), ("stable", 1)):
        store.evidence.add_probe_window(
            "intent", version, role=role, rollout_id=rollout, started_at=clock.at, ended_at=clock.advance(30),
            figures={"requests": 120, "errors": 0, "p50_ms": 2.0, "p95_ms": 4.0, "samples": [1.5, 2.0], "step": 0},
        )  # fmt: skip
    store.evidence.add_decision(
        "intent", 2,
        Decision(
            outcome="wait", reason="bake time: 30 of 600 s", checks=[{"name": "latency", "p_value": 0.4}],
            policy={"bake_seconds": 600}, rollout_id=rollout,
        ),
    )  # fmt: skip
    store.fleet.add_step(
        rollout, 1, strategy="canary", share=2 / 3, roles={"r0": "canary", "r1": "canary", "r2": "baseline"},
        reason="widening",
    )  # fmt: skip
    clock.advance(60)
    store.lifecycle.transition("intent", 3, State.rejected, reason="older than the stable version",
                               decision=Decision(outcome="reject", reason="older", checks={}, policy={}))  # fmt: skip
    store.fleet.record_health(
        [
            ("r0", "127.0.0.1:9001", "127.0.0.1:9002", True, None),
            ("r1", "127.0.0.1:9011", "127.0.0.1:9012", False, "refused"),
        ]
    )
    return rollout


def runtime_over(db_url: str, tmp_path: Path) -> Runtime:
    """A runtime on `db_url` whose Triton is a port where nothing listens (reads never touch it)."""
    (tmp_path / "repo").mkdir(exist_ok=True)
    config = tmp_path / "shepherd.yaml"  # not the checkout's own shepherd.yaml
    config.write_text("reconcile_interval_seconds: 5\n")
    port = dead_port()
    settings_ = load_settings(
        config,
        overrides={
            "repo": tmp_path / "repo",
            "triton_grpc": f"127.0.0.1:{port}",
            "triton_metrics": f"127.0.0.1:{port}",
            "db_url": db_url,
        },
        env={},
    )
    return open_runtime(settings_)


class Api:
    """A TestClient over a filled history, with one token per role."""

    def __init__(self, rt: Runtime, rollout: int) -> None:
        self.rt = rt
        self.rollout = rollout
        self.client = TestClient(create_app(rt))
        tokens = Tokens(rt.store.db)
        made = {
            role: tokens.create(name=f"{role}-owner", role=role, created_by="test")
            for role in ("viewer", "operator", "admin")
        }
        self.token = {role: m.token for role, m in made.items()}

    def get(self, path: str, as_: str = "viewer", **params: Any) -> httpx.Response:
        return self.client.get(path, params=params, headers=bearer(self.token[as_]))

    def post(self, path: str, body: dict[str, Any], as_: str = "operator") -> httpx.Response:
        return self.client.post(path, json=body, headers=bearer(self.token[as_]))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    url = f"sqlite:///{tmp_path / 'history.db'}"
    clock = Clock()
    with Store.open(url, clock=clock) as store:
        rollout = fill(store, clock)
    rt = runtime_over(url, tmp_path)
    try:
        yield Api(rt, rollout)
    finally:
        rt.close()


READS = [
    "/api/v1/whoami",
    "/api/v1/status",
    "/api/v1/history",
    "/api/v1/models/intent/versions/2/decisions",
    "/api/v1/models/intent/versions/2/transitions",
    "/api/v1/rollouts",
    "/api/v1/rollouts/1",
    "/api/v1/rollouts/1/windows",
    "/api/v1/rollouts/1/decisions",
    "/api/v1/fleet",
]


# -- tokens and roles ------------------------------------------------------------------------------
def test_every_route_under_api_refuses_a_missing_or_wrong_token(api: Api) -> None:
    revoked = Tokens(api.rt.store.db).create(name="gone", role="admin", created_by="test")
    Tokens(api.rt.store.db).revoke(revoked.record.id)
    wrong = {
        "none": {},
        "unknown": bearer("shp_" + "A" * 43),
        "malformed": bearer("hunter2"),
        "revoked": bearer(revoked.token),
        "not bearer": {"Authorization": f"Basic {api.token['admin']}"},
    }
    for path in READS:
        assert api.get(path).status_code == 200, path
        for why, headers in wrong.items():
            answer = api.client.get(path, headers=headers)
            assert answer.status_code == 401, (path, why, answer.text)
            assert answer.headers["WWW-Authenticate"] == "Bearer"
            assert answer.json()["error"] == "ApiAccessDenied" and answer.json()["exit_code"] == 71
    for path, body in (
        ("/api/v1/models/intent/versions/2/promote", {"reason": "x"}),
        ("/api/v1/models/intent/pin", {"version": 1, "reason": "x"}),
        ("/api/v1/tokens", {"name": "eve", "role": "admin"}),
    ):
        assert api.client.post(path, json=body).status_code == 401, path


def test_roles_viewer_reads_operator_acts_admin_manages_tokens(api: Api) -> None:
    promote = "/api/v1/models/intent/versions/2/promote"
    refused = api.post(promote, {"reason": "ship it"}, as_="viewer")
    assert refused.status_code == 403 and "operator" in refused.json()["detail"]
    assert api.post("/api/v1/models/intent/unpin", {"reason": "x"}, as_="viewer").status_code == 403
    assert api.rt.store.read.get_version("intent", 2).state == State.canary  # type: ignore[union-attr]
    with api.rt.store.db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM manual_actions")).scalar_one() == 0

    for role in ("viewer", "operator"):
        assert api.get("/api/v1/tokens", as_=role).status_code == 403
        assert api.post("/api/v1/tokens", {"name": "eve", "role": "admin"}, as_=role).status_code == 403
    assert api.get("/api/v1/whoami", as_="operator").json() == {
        "token_id": 2, "name": "operator-owner", "role": "operator"
    }  # fmt: skip

    made = api.post("/api/v1/tokens", {"name": "carol", "role": "viewer"}, as_="admin")
    assert made.status_code == 201, made.text
    carol = made.json()
    assert carol["token"].startswith("shp_") and carol["created_by"] == "admin-owner"
    assert api.client.get("/api/v1/status", headers=bearer(carol["token"])).status_code == 200
    listed = api.get("/api/v1/tokens", as_="admin").json()
    assert [t["name"] for t in listed] == ["viewer-owner", "operator-owner", "admin-owner", "carol"]
    assert all("token" not in t for t in listed) and listed[0]["last_used_at"] is not None
    revoked = api.client.delete(f"/api/v1/tokens/{carol['id']}", headers=bearer(api.token["admin"]))
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert api.client.get("/api/v1/status", headers=bearer(carol["token"])).status_code == 401
    assert api.client.delete("/api/v1/tokens/999", headers=bearer(api.token["admin"])).status_code == 404
    bad = api.post("/api/v1/tokens", {"name": "shepherd", "role": "admin"}, as_="admin")
    assert bad.status_code == 422 and bad.json()["error"] == "ConfigError"
    with api.rt.store.db.engine.connect() as conn:  # only digests are stored
        stored = [r[0] for r in conn.execute(text("SELECT token_sha256 FROM api_tokens"))]
    assert carol["token"] not in stored and all(len(s) == 64 for s in stored)


# -- reads -----------------------------------------------------------------------------------------
def test_reads_answer_from_the_history(api: Api) -> None:
    status = {m["model"]: m for m in api.get("/api/v1/status").json()}
    assert (status["intent"]["stable"], status["intent"]["candidate"], status["intent"]["phase"]) == (1, 2, "canary")
    assert status["intent"]["rollout_id"] == api.rollout and status["ranker"]["candidate"] is None

    every = api.get("/api/v1/history").json()
    assert [(h["model"], h["version"], h["state"]) for h in every] == [
        ("intent", 1, "promoted"), ("intent", 2, "canary"), ("intent", 3, "rejected"), ("ranker", 1, "promoted")
    ]  # fmt: skip
    assert every[1]["last_decision"]["outcome"] == "wait"
    assert [h["version"] for h in api.get("/api/v1/history", model="intent", state=["canary", "rejected"]).json()] == [
        2,
        3,
    ]
    since = (T0 + timedelta(minutes=30)).isoformat()
    until = (T0 + timedelta(hours=1, minutes=1)).replace(tzinfo=None).isoformat()  # naive: read as UTC
    assert [(h["model"], h["version"]) for h in api.get("/api/v1/history", since=since, until=until).json()] == [
        ("intent", 2)
    ]
    assert api.get("/api/v1/history", state="sideways").status_code == 422

    (rollout,) = api.get("/api/v1/rollouts", model="intent", open="true").json()
    assert (rollout["id"], rollout["candidate"], rollout["stable"], rollout["ended_at"]) == (api.rollout, 2, 1, None)
    detail = api.get(f"/api/v1/rollouts/{api.rollout}").json()
    assert [s["roles"] for s in detail["steps"]] == [
        {"r0": "canary", "r1": "baseline", "r2": "baseline"},
        {"r0": "canary", "r1": "canary", "r2": "baseline"},
    ]
    assert [round(s["share"], 3) for s in detail["steps"]] == [0.333, 0.667]
    windows = api.get(f"/api/v1/rollouts/{api.rollout}/windows").json()
    assert sorted((w["role"], w["version"], w["requests"]) for w in windows) == [
        ("candidate", 2, 120),
        ("stable", 1, 120),
    ]
    assert windows[0]["samples"] == [1.5, 2.0]
    assert [w["role"] for w in api.get(f"/api/v1/rollouts/{api.rollout}/windows", role="stable").json()] == ["stable"]

    decisions = api.get("/api/v1/models/intent/versions/2/decisions").json()
    assert [d["outcome"] for d in decisions] == ["promote", "wait"]
    assert decisions[1]["checks"] == [{"name": "latency", "p_value": 0.4}]
    assert decisions[1]["policy"] == {"bake_seconds": 600}
    assert [d["outcome"] for d in api.get(f"/api/v1/rollouts/{api.rollout}/decisions").json()] == ["wait"]
    moves = api.get("/api/v1/models/intent/versions/2/transitions").json()
    assert [(t["from_state"], t["to_state"], t["actor"]) for t in moves] == [
        (None, "discovered", "shepherd"),
        ("discovered", "preflight", "shepherd"),
        ("preflight", "canary", "shepherd"),
    ]
    fleet = api.get("/api/v1/fleet").json()
    assert [(r["name"], r["reachable"], r["last_error"]) for r in fleet] == [
        ("r0", True, None),
        ("r1", False, "refused"),
    ]

    for missing in ("/api/v1/models/intent/versions/9/decisions", "/api/v1/rollouts/99", "/api/v1/rollouts/99/windows"):
        answer = api.get(missing)
        assert answer.status_code == 404 and answer.json()["exit_code"] == 20, missing
    unknown = api.post("/api/v1/models/nosuch/versions/1/promote", {"reason": "x"})
    assert unknown.status_code == 404 and "nosuch" in unknown.json()["detail"]
    refused = api.post("/api/v1/models/intent/versions/3/rollback", {"reason": "x"})  # rejected: no way to rolled_back
    assert refused.status_code == 409 and refused.json()["error"] == "InvalidTransition", refused.text


def test_health_and_readiness(api: Api, tmp_path: Path) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
    assert api.client.get("/readyz").json() == {"status": "ready", "schema_revision": "0003"}
    with api.rt.store.db.engine.begin() as conn:  # a history at another revision is not ready
        conn.execute(text("UPDATE alembic_version SET version_num = '0002'"))
    answer = api.client.get("/readyz")
    assert answer.status_code == 503 and "0002" in answer.json()["detail"]
    gone = runtime_over(f"sqlite:///{tmp_path / 'gone.db'}", tmp_path)
    try:
        client = TestClient(create_app(gone))
        Path(tmp_path / "gone.db").unlink()
        (tmp_path / "gone.db").mkdir()  # the file is now a folder: the database cannot be opened
        gone.store.db.engine.dispose()
        assert client.get("/readyz").status_code == 503
        assert client.get("/healthz").status_code == 200
    finally:
        gone.close()


# -- /metrics --------------------------------------------------------------------------------------
def scrape(api: Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = api.client.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }


def test_metrics_expose_passes_decisions_rollbacks_errors_stable_versions_and_the_leader(api: Api) -> None:
    before = scrape(api)
    report = TickReport()
    report.add("canary", "intent", 2, reason="preflight passed", actor="shepherd")
    report.add("waiting", "intent", 2, reason="bake")
    report.add("rolled_back", "intent", 2, reason="p95 +60%", actor="shepherd")
    report.add("rolled_back", "intent", 3, reason="bad clicks", actor="alice")
    report.add("step", "intent", 2, step=1)
    report.fail(MetricsUnavailable("metrics at 127.0.0.1:1 did not answer"))
    report.fail(TritonUnreachable("no Triton at 127.0.0.1:1"))
    metrics.observe_pass(report, 0.42, job="reconcile")
    metrics.observe_pass(TickReport(), 0.01, job="probe")
    assert metrics.timed_pass("judge", lambda rt: TickReport(), api.rt).actions == []  # the scheduler's one-liner
    after = scrape(api)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after[key] - before.get(key, 0.0)

    assert [delta("shepherd_passes_total", job=job) for job in ("reconcile", "probe", "judge")] == [1, 1, 1]
    assert delta("shepherd_pass_duration_seconds_count", job="reconcile") == 1
    assert delta("shepherd_pass_duration_seconds_sum", job="reconcile") == pytest.approx(0.42)
    assert after[("shepherd_last_pass_timestamp_seconds", (("job", "reconcile"),))] > T0.timestamp()
    assert {o: delta("shepherd_decisions_total", outcome=o) for o in ("promote", "rollback", "reject", "wait", "fail")} == {
        "promote": 1, "rollback": 2, "reject": 0, "wait": 1, "fail": 0
    }  # fmt: skip
    assert delta("shepherd_rollbacks_total", trigger="automatic") == 1
    assert delta("shepherd_rollbacks_total", trigger="manual") == 1
    assert delta("shepherd_probe_errors_total") == 1 and delta("shepherd_triton_errors_total") == 1
    assert after[("shepherd_stable_version", (("model", "intent"),))] == 1
    assert after[("shepherd_stable_version", (("model", "ranker"),))] == 1
    assert after[("shepherd_history_up", ())] == 1

    states = {k[1][0][1]: v for k, v in after.items() if k[0] == "shepherd_leader"}
    assert states == {"unknown": 1, "leader": 0, "standby": 0, "stopped": 0}  # nobody said anything yet
    try:
        metrics.set_leader("leader")
        assert scrape(api)[("shepherd_is_leader", ())] == 1
        metrics.set_leader_source(lambda: "standby")  # read at each scrape
        now = scrape(api)
        assert now[("shepherd_is_leader", ())] == 0 and now[("shepherd_leader", (("shepherd_leader", "standby"),))] == 1
        with pytest.raises(ValueError, match="one of"):
            metrics.set_leader("maybe")
    finally:
        metrics.set_leader_source(None)
        metrics.set_leader("unknown")


# -- logs ------------------------------------------------------------------------------------------
def test_log_lines_mask_tokens_keys_and_passwords_in_both_formats() -> None:
    token = "shp_" + "x" * 43
    logs.add_secret("triton-key-0123456789")
    record = logging.LogRecord(
        "shepherd", logging.WARNING, __file__, 1,
        "token %s, header Bearer %s, db postgresql://u:pw-secret@db/h, key triton-key-0123456789", (token, token), None,
    )  # fmt: skip
    for formatter in (logs.JsonFormatter(), logs.TextFormatter()):
        line = formatter.format(record)
        for secret in (token, "pw-secret", "triton-key-0123456789"):
            assert secret not in line
        assert "postgresql://u:***@db/h" in line
    line = json.loads(logs.JsonFormatter().format(record))
    assert (line["level"], line["logger"]) == ("warning", "shepherd") and line["time"].endswith("+00:00")
    with pytest.raises(Exception, match="one of text, json"):
        logs.log_format("yaml")


# -- the OpenAPI schema and its fuzzing ------------------------------------------------------------
def test_the_committed_openapi_schema_is_current() -> None:
    assert OPENAPI.read_text() == openapi_document(), (
        "docs/openapi.json is stale: run `python -m control_plane.api.app > docs/openapi.json`"
    )
    schema = json.loads(OPENAPI.read_text())
    assert schema["components"]["securitySchemes"]["token"] == {
        "type": "http", "scheme": "bearer", "description": schema["components"]["securitySchemes"]["token"]["description"]
    }  # fmt: skip
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            secured = bool(operation.get("security"))
            assert secured == path.startswith("/api/"), (method, path)
            if secured:
                assert {"401", "403", "422"} <= operation["responses"].keys(), (method, path)


def test_fuzz_the_schema_no_server_errors(api: Api) -> None:
    """Schemathesis over every operation (valid and invalid data), as admin: no 5xx, every answer as documented.

    Revoking tokens is left out: a random id would revoke the fuzzer's own token (tested above).
    """
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.client.app).exclude(method="DELETE")
    headers = bearer(api.token["admin"])
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=10, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
            )
            def call(case: Any) -> None:
                case.call_and_validate(headers=headers)

            try:
                call()
            except Unsatisfiable:  # no parameter or body to make invalid
                assert mode == GenerationMode.NEGATIVE, operation.label


# -- a real promote on the real Triton, through real uvicorn, and `--server` -------------------------
@pytest.mark.triton
def test_an_operator_promotes_through_the_api_and_the_cli_round_trips_with_server(
    repo: ModelRepository,
    triton: LocalTriton,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    rt = make_runtime(repo, triton, tmp_path, policy=FAST_POLICY.replace("bake_seconds: 6", "bake_seconds: 600"))
    try:
        first = establish_stable(rt, repo, tmp_path)
        second = publish(repo, tmp_path / "build", "clf", "same")
        tick_until(rt, lambda: state_of(rt, "clf", second) == State.canary)
        tokens = Tokens(rt.store.db)
        operator = tokens.create(name="alice", role="operator", created_by="test").token
        viewer = tokens.create(name="bob", role="viewer", created_by="test").token
        manual_before = metrics.ROLLBACKS.labels(trigger="manual")._value.get()
        with serving(create_app(rt), "127.0.0.1:0") as url:
            promote = f"{url}/api/v1/models/clf/versions/{second}/promote"
            assert httpx.post(promote, json={"reason": "ship"}, headers=bearer(viewer)).status_code == 403
            assert state_of(rt, "clf", second) == State.canary
            done = httpx.post(promote, json={"reason": "the A/B test says so"}, headers=bearer(operator), timeout=60)
            assert done.status_code == 200, done.text
            assert "promoted" in [a["action"] for a in done.json()["actions"]] and done.json()["errors"] == []
            assert state_of(rt, "clf", second) == State.promoted
            assert rt.store.read.stable("clf").version == second  # type: ignore[union-attr]

            monkeypatch.setenv("SHEPHERD_TOKEN", operator)
            assert main(["rollback", "clf", str(second), "--reason", "bad clicks", "--server", url, "--json"]) == 0
            answer = json.loads(capsys.readouterr().out)
            assert answer["actions"][-1]["action"] == "rolled_back" and answer["actions"][-1]["actor"] == "alice"
            assert state_of(rt, "clf", second) == State.rolled_back
            assert rt.store.read.stable("clf").version == first  # type: ignore[union-attr]
            assert ready(rt, "clf") == {first}
            assert main(["pin", "clf", str(first), "--reason", "freeze", "--server", url]) == 0
            assert rt.store.read.pinned("clf") == first
            assert main(["pin", "clf", "--clear", "--reason", "thaw", "--server", url]) == 0
            assert rt.store.read.pinned("clf") is None

            assert main(["promote", "clf", "99", "--server", url]) == 20  # unknown version: as locally
            assert main(["promote", "clf", str(first), "--actor", "mallory", "--server", url]) == 2
            monkeypatch.setenv("SHEPHERD_TOKEN", viewer)
            assert main(["promote", "clf", str(second), "--server", url]) == 71
            monkeypatch.delenv("SHEPHERD_TOKEN")
            assert main(["promote", "clf", str(second), "--server", url]) == 71
        monkeypatch.setenv("SHEPHERD_TOKEN", operator)
        assert main(["promote", "clf", str(second), "--server", f"http://127.0.0.1:{dead_port()}"]) == 70
        errors = capsys.readouterr().err
        assert "refused" in errors and "SHEPHERD_TOKEN" in errors and "cannot reach" in errors

        assert metrics.ROLLBACKS.labels(trigger="manual")._value.get() == manual_before + 1
        engine = create_engine(rt.settings.db_url)
        with engine.connect() as conn:
            actions = [
                tuple(r) for r in conn.execute(text("SELECT action, actor, reason FROM manual_actions ORDER BY id"))
            ]
            moved = conn.execute(
                text("SELECT t.to_state, t.actor FROM transitions t JOIN versions v ON v.id = t.version_id "
                     "WHERE v.version = :v ORDER BY t.id"), {"v": second},
            ).all()  # fmt: skip
            everything = " ".join(
                str(row)
                for table in inspect(engine).get_table_names()
                for row in conn.execute(text(f"SELECT * FROM {table}"))
            )
        engine.dispose()
        assert actions == [
            ("promote", "alice", "the A/B test says so"),
            ("rollback", "alice", "bad clicks"),
            ("pin", "alice", "freeze"),
            ("unpin", "alice", "thaw"),
        ]
        assert [tuple(m) for m in moved][-2:] == [("promoted", "alice"), ("rolled_back", "alice")]
        for secret in (operator, viewer):
            assert secret not in everything
            assert secret not in caplog.text
        assert "promote clf v2 by alice" in caplog.text  # the action is logged, with the owner, not the token
    finally:
        rt.close()


# -- the `shepherd serve` command itself, on PostgreSQL -----------------------------------------------
@pytest.mark.postgres
def test_shepherd_serve_on_postgresql_logs_json_and_never_a_secret(postgres_url: str, tmp_path: Path) -> None:
    password, key = "db-pass-s3cret", "triton-key-0123456789abcdef"
    db_url = make_url(postgres_url).set(password=password).render_as_string(hide_password=False)  # trust auth
    with Store.open(db_url) as store:
        admin = Tokens(store.db).create(name="root", role="admin", created_by="test").token
    (tmp_path / "repo").mkdir()
    port = dead_port()
    env = {**os.environ, "SHEPHERD_DB": db_url, "SHEPHERD_LOG_FORMAT": "json", "SHEPHERD_TRITON_API_KEY": key}
    env.pop("SHEPHERD_CONFIG", None)
    log_file = tmp_path / "serve.log"
    with log_file.open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "control_plane.cli", "serve", "--listen", "127.0.0.1:0", "--repo", str(tmp_path / "repo"),
             "--triton-grpc", f"127.0.0.1:{port}", "--triton-metrics", f"127.0.0.1:{port}"],
            stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=tmp_path,
        )  # fmt: skip
        try:
            assert server.stdout is not None
            first = server.stdout.readline()
            assert "listening on http://127.0.0.1:" in first, first + log_file.read_text()
            assert password not in first and "***" in first
            url = first.split("listening on ")[1].split()[0]
            with httpx.Client(base_url=url, timeout=10) as http:
                assert http.get("/readyz").json() == {"status": "ready", "schema_revision": "0003"}
                assert http.get("/api/v1/status").status_code == 401
                made = http.post("/api/v1/tokens", json={"name": "ops", "role": "operator"}, headers=bearer(admin))
                assert made.status_code == 201
                operator = made.json()["token"]
                assert http.get("/api/v1/status", headers=bearer(operator)).json() == []
                pin = http.post(
                    "/api/v1/models/nosuch/pin", json={"version": 1, "reason": "x"}, headers=bearer(operator)
                )
                assert pin.status_code == 404
                page = http.get("/metrics").text
                assert 'shepherd_leader{shepherd_leader="stopped"} 1.0' in page and "shepherd_history_up 1.0" in page
        finally:
            server.terminate()
            code = server.wait(timeout=30)
    assert code == 0
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert any("GET /api/v1/status" in line["message"] and line["logger"] == "uvicorn.access" for line in lines)
    text_ = log_file.read_text()
    for secret in (password, key, admin, operator):
        assert secret not in text_
    with Store.open(db_url, migrate=False) as store, store.db.engine.connect() as conn:
        everything = " ".join(
            str(row)
            for table in inspect(conn).get_table_names()
            for row in conn.execute(text(f'SELECT * FROM "{table}"'))
        )
    for secret in (admin, operator, key):
        assert secret not in everything
