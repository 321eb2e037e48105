"""`shepherd status` and `shepherd history` against real SQLite and PostgreSQL histories."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from control_plane.cli import history_cmd
from control_plane.errors import StoreError
from control_plane.store import Decision, State, Store
from tests.test_store import Clock, db_url, manifest, walk  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parent.parent


def local_app() -> typer.Typer:
    """The two commands as the lead registers them on the `shepherd` app."""
    app = typer.Typer()
    app.command("status")(history_cmd.status)
    app.command("history")(history_cmd.history)
    return app


def seeded(url: str) -> datetime:
    """intent: v1 stable (promoted 10 days ago), v2 rolled back 3 days ago, v3 in canary now; ranker: v1 failed."""
    now = datetime.now(UTC)
    clock = Clock(now - timedelta(days=10))
    with Store.open(url, clock=clock) as store:
        for v in (1, 2, 3):
            store.lifecycle.record_version("intent", v, manifest=manifest(v), kind="intent")
        walk(store, "intent", 1, State.preflight, State.promoted)
        store.lifecycle.set_stable("intent", 1, reason="first version")
        clock.at = now - timedelta(days=3)
        walk(store, "intent", 2, State.preflight, State.canary)
        clock.advance(600)
        store.evidence.add_decision("intent", 2, Decision(outcome="rollback", reason="p95 +60%", checks={}, policy={}))
        store.lifecycle.transition("intent", 2, State.rolled_back, reason="p95 +60%")
        clock.at = now - timedelta(minutes=5)
        walk(store, "intent", 3, State.preflight, State.canary)
        store.lifecycle.start_rollout("intent", 3, 1)
        store.lifecycle.record_version("ranker", 1, manifest={}, kind="ranker")
        store.lifecycle.transition("ranker", 1, State.failed, reason="Triton could not load it")
    return now


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, BaseException | None]:
    result = CliRunner().invoke(local_app(), list(args), env=env)
    return result.exit_code, result.stdout, result.exception


def test_history_json_lists_every_version_with_its_state(db_url: str) -> None:  # noqa: F811
    seeded(db_url)
    code, out, exc = invoke("history", "--db", db_url, "--json")
    assert code == 0, exc
    versions = json.loads(out)
    assert [(v["model"], v["version"], v["state"]) for v in versions] == [
        ("intent", 1, "promoted"),
        ("intent", 2, "rolled_back"),
        ("intent", 3, "canary"),
        ("ranker", 1, "failed"),
    ]
    assert versions[0]["is_stable"] is True and versions[1]["time_in_canary_s"] == 600.0
    assert versions[1]["last_decision"]["outcome"] == "rollback"

    code, out, _ = invoke("history", "--db", db_url, "--json", "--model", "intent", "--since", "7d")
    assert [v["version"] for v in json.loads(out)] == [2, 3]
    day = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    code, out, _ = invoke("history", "--db", db_url, "--json", "--since", day)
    assert [(v["model"], v["version"]) for v in json.loads(out)] == [("intent", 3), ("ranker", 1)]


def test_history_and_status_tables_from_the_environment_url(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    seeded(url)
    code, out, exc = invoke("history", env={"SHEPHERD_DB": url, "COLUMNS": "250"})
    assert code == 0, exc
    lines = [line for line in out.splitlines() if "intent" in line or "ranker" in line]
    assert len(lines) == 4
    assert "rolled_back" in lines[1] and "10m00s" in lines[1] and "p95 +60%" in lines[1]
    assert "Triton could not load it" in lines[3]

    code, out, exc = invoke("status", env={"SHEPHERD_DB": url, "COLUMNS": "250"})
    assert code == 0, exc
    intent = next(line for line in out.splitlines() if "intent" in line)
    assert [cell.strip() for cell in intent.split("│")][3:6] == ["1", "3", "canary"]


def test_status_json(db_url: str) -> None:  # noqa: F811
    seeded(db_url)
    code, out, exc = invoke("status", "--db", db_url, "--json")
    assert code == 0, exc
    status = {m["model"]: m for m in json.loads(out)}
    assert (status["intent"]["stable"], status["intent"]["candidate"], status["intent"]["phase"]) == (1, 3, "canary")
    assert status["intent"]["rollout_id"] is not None
    assert (status["ranker"]["stable"], status["ranker"]["candidate"]) == (None, None)


def test_status_and_history_read_a_read_only_database(tmp_path: Path) -> None:
    """Readers never migrate: a read-only SQLite file (SQLite's own read-only mode: root ignores file modes)."""
    path = tmp_path / "history.db"
    seeded(f"sqlite:///{path}")
    read_only = f"sqlite:///file:{path}?mode=ro&uri=true"
    for command in (["status", "--json"], ["history", "--json"]):
        result = CliRunner().invoke(local_app(), [*command, "--db", read_only])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)


def test_a_missing_database_file_is_an_error_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "typo.db"
    _, _, exc = invoke("history", "--db", f"sqlite:///{path}")
    assert isinstance(exc, StoreError) and exc.exit_code == 21 and "no history database" in str(exc)
    assert not path.exists()


def test_a_bad_since_is_a_usage_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    seeded(url)
    code, _, exc = invoke("history", "--db", url, "--since", "last tuesday")
    assert code == 2, exc


def test_parse_since() -> None:
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    assert history_cmd.parse_since("7d", now=now) == now - timedelta(days=7)
    assert history_cmd.parse_since("90m", now=now) == now - timedelta(minutes=90)
    assert history_cmd.parse_since("2026-11-01", now=now) == datetime(2026, 11, 1, tzinfo=UTC)
    assert history_cmd.parse_since("2026-11-01T08:00:00+02:00") == datetime(2026, 11, 1, 6, tzinfo=UTC)
    with pytest.raises(typer.BadParameter):
        history_cmd.parse_since("soon")


def _registered() -> bool:
    from control_plane.cli import app

    return {"status", "history"} <= {c.name for c in app.registered_commands}


@pytest.mark.skipif(not _registered(), reason="the lead has not registered status/history on the shepherd app yet")
def test_the_shepherd_command_in_a_subprocess(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    seeded(url)
    env = {**os.environ, "SHEPHERD_DB": url}
    done = subprocess.run(
        [sys.executable, "-m", "control_plane.cli", "history", "--json"], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [v["state"] for v in json.loads(done.stdout)] == ["promoted", "rolled_back", "canary", "failed"]
    missing = subprocess.run(
        [sys.executable, "-m", "control_plane.cli", "status", "--db", f"sqlite:///{tmp_path / 'nope.db'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert missing.returncode == 21 and "no history database" in missing.stderr


def test_status_and_history_read_the_database_shepherd_yaml_names(tmp_path: Path) -> None:
    """Without --db or SHEPHERD_DB they read `db_url` of shepherd.yaml, the history `shepherd run` writes."""
    url = f"sqlite:///{tmp_path / 'from-config.db'}"
    seeded(url)
    config = tmp_path / "shepherd.yaml"
    config.write_text(f"db_url: {url}\n")
    code, out, exc = invoke("status", "--config", str(config), "--json", env={"SHEPHERD_DB": ""})
    assert code == 0, exc
    assert {m["model"] for m in json.loads(out)} == {"intent", "ranker"}
    code, out, exc = invoke("history", "--json", env={"SHEPHERD_DB": "", "SHEPHERD_CONFIG": str(config)})
    assert code == 0, exc
    assert len(json.loads(out)) == 4
    code, _, exc = invoke("history", "--config", str(tmp_path / "missing.yaml"), env={"SHEPHERD_DB": ""})
    assert code != 0 and "settings file not found" in str(exc)
