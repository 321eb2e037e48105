"""One leader per history database: the lock backends, then two real `shepherd run` processes.

The processes are the real CLI on a fresh PostgreSQL database (the `postgres_url` fixture) or a
SQLite file, with an empty model repository and Triton's port closed: leadership needs no Triton,
and each reconcile pass still logs `pass reconcile: ...`, so the log of each process says when it
acted. The times measured are printed (`pytest -s`) and asserted with a margin.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from control_plane import scheduler
from control_plane.errors import ConfigError, LeaderError
from control_plane.leader import (
    LOCK_KEY,
    FileLeader,
    LeaderTiming,
    LocalLeader,
    PostgresLeader,
    leadership_for,
    leading,
)
from control_plane.runtime import open_runtime
from control_plane.scheduler import LeaderStatus
from control_plane.settings import load_settings
from tests.test_cli_errors import closed_port, fails_with, shepherd

ROOT = Path(__file__).resolve().parent.parent
RETRY_S = 0.5
CHECK_S = 0.5
TAKEOVER_MARGIN_S = 2.5  # on top of RETRY_S: one connection, one log line, this test's polling
FAST = LeaderTiming(retry_seconds=RETRY_S, check_seconds=CHECK_S)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / 'history.db'}"


def advisory_holders(db_url: str) -> list[tuple[int, str]]:
    """(backend pid, application_name) of every session holding shepherd's lock, from pg_locks."""
    low = LOCK_KEY & 0xFFFF_FFFF
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT l.pid, a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.objid::bigint = :low AND l.granted "
                    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                ),
                {"low": low},
            ).all()
        return [(int(pid), str(name)) for pid, name in rows]
    finally:
        engine.dispose()


def until(condition: Callable[[], object], timeout: float, what: str | Callable[[], str], step: float = 0.05) -> float:
    """Poll `condition` until it is true; return the seconds it took (`what` explains a timeout)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s: {what() if callable(what) else what}")
        time.sleep(step)
    return time.monotonic() - started


# -- the lock backends ----------------------------------------------------------------------------
def test_leadership_for_picks_the_backend_from_the_url(tmp_path: Path) -> None:
    file_leader = leadership_for(f"sqlite:///{tmp_path / 'h.db'}")
    assert isinstance(file_leader, FileLeader) and file_leader.path == tmp_path / "h.db.leader.lock"
    assert isinstance(leadership_for("sqlite://"), LocalLeader)
    assert isinstance(leadership_for("sqlite:///:memory:"), LocalLeader)
    pg = leadership_for("postgresql+psycopg://postgres:secret@127.0.0.1:5432/nowhere")
    assert isinstance(pg, PostgresLeader) and "secret" not in pg.lock_name  # nothing connects until acquire
    pg.close()
    with pytest.raises(LeaderError, match="PostgreSQL and SQLite only") as refused:
        leadership_for("mysql://u:p@127.0.0.1/x")
    assert refused.value.exit_code == 23
    with pytest.raises(ConfigError):
        LeaderTiming(check_seconds=3)  # the fence would come after PostgreSQL may release a silent leader


def test_lease_runs_out_without_confirmation(tmp_path: Path) -> None:
    now = [100.0]
    leader = leadership_for(f"sqlite:///{tmp_path / 'h.db'}", timing=FAST, clock=lambda: now[0])
    with leader:
        assert leader.acquire() and leader.is_leader()
        now[0] += FAST.lease_seconds + 0.01
        assert not leader.is_leader()  # held, but not confirmed within the lease: no job may start
        assert leader.confirm() and leader.is_leader()


def test_lock_excludes_a_second_holder_until_released(db_url: str) -> None:
    with leadership_for(db_url, timing=FAST) as first, leadership_for(db_url, timing=FAST) as second:
        assert first.acquire() and first.is_leader()
        assert not second.acquire() and not second.is_leader()
        assert f"pid {os.getpid()}" in (second.holder() or "")
        assert first.acquire()  # acquiring again while holding is a no-op
        if isinstance(first, PostgresLeader):
            assert [pid for pid, _ in advisory_holders(db_url)] == [first.backend_pid()]
        with pytest.raises(LeaderError, match="another shepherd leads") as refused, leading(db_url):
            pass
        assert refused.value.exit_code == 23
        assert first.confirm()
        first.release()
        assert not first.is_leader()
        assert second.acquire() and second.confirm()
        assert not first.acquire()
    with leading(db_url):  # both released (closed): free again
        pass


def test_lock_connection_lost_is_leadership_lost(postgres_url: str) -> None:
    with leadership_for(postgres_url, timing=FAST) as first, leadership_for(postgres_url, timing=FAST) as second:
        assert isinstance(first, PostgresLeader) and first.acquire()
        conn = first._connection()
        settings = {
            name: conn.execute(text(f"SHOW {name}")).scalar_one()
            for name in ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count", "tcp_user_timeout")
        }
        assert settings == {
            "tcp_keepalives_idle": "5",
            "tcp_keepalives_interval": "2",
            "tcp_keepalives_count": "3",
            "tcp_user_timeout": "10000",  # milliseconds
        }
        assert advisory_holders(postgres_url) == [(first.backend_pid(), first.me)]
        engine = create_engine(postgres_url)
        with engine.connect() as admin:
            admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first.backend_pid()})
        engine.dispose()
        until(second.acquire, timeout=5, what="PostgreSQL to release the lock with the session")
        assert not first.confirm() and not first.is_leader()
        assert first.lost_because and "terminat" in first.lost_because
        assert not first.acquire()  # it reconnects and finds the lock taken


def test_lock_file_replaced_is_leadership_lost(tmp_path: Path) -> None:
    with leadership_for(f"sqlite:///{tmp_path / 'h.db'}", timing=FAST) as leader:
        assert isinstance(leader, FileLeader) and leader.acquire()
        assert leader.path.read_text().strip() == leader.me
        leader.path.unlink()  # whoever opens the path now locks another file
        assert not leader.confirm() and not leader.is_leader()
        assert leader.acquire()  # a fresh file, locked afresh
    assert leader.path.read_text() == ""  # released: nobody leads


HOLD = """
import sys, time
from control_plane.leader import leadership_for
assert leadership_for(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""


def test_process_death_releases_the_lock_at_once(db_url: str) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, db_url], stdout=subprocess.PIPE, text=True, cwd=ROOT, env=_env()
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with leadership_for(db_url, timing=FAST) as standby:
            assert not standby.acquire()
            assert f"pid {holder.pid}" in (standby.holder() or "")
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=10)
            until(
                lambda: standby.holder() is None,
                timeout=5,
                what="nobody to hold the lock (a dead holder's note is stale)",
            )
            released = until(standby.acquire, timeout=5, what="the dead holder's lock to be free", step=0.01)
            assert standby.is_leader()
        print(f"measured: lock free {released:.3f} s after SIGKILL of its holder ({db_url.split(':')[0]})")
        assert released < 1.0, released
    finally:
        if holder.poll() is None:
            holder.kill()


def test_leader_status_follows_the_lock_in_process(tmp_path: Path) -> None:
    """What `/metrics` reads: `scheduler.leader_status()` says standby (and who leads), then leader, then stopped."""
    db_url = f"sqlite:///{tmp_path / 'h.db'}"
    (tmp_path / "repo").mkdir()
    rt = open_runtime(load_settings(overrides={"db_url": db_url, "repo": tmp_path / "repo"}))
    seen: list[LeaderStatus] = []
    other = leadership_for(db_url, role="other", timing=FAST)
    assert other.acquire()

    def watch() -> None:
        until(lambda: scheduler.leader_status().role == "standby", timeout=10, what="standby")
        seen.append(scheduler.leader_status())
        other.release()
        until(lambda: scheduler.leader_status().leading, timeout=10, what="leading")
        seen.append(scheduler.leader_status())

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        scheduler.run_forever(rt, max_seconds=2, timing=FAST)  # in this (the main) thread, as `shepherd run` does
    finally:
        watcher.join()
        other.close()
        rt.close()
    standby, leader = seen
    assert standby.holder == other.me and not standby.leading and standby.terms == 0
    assert leader.holder is not None and leader.holder.endswith(f"pid {os.getpid()}") and leader.terms == 1
    assert leader.as_dict()["leading"] is True and "file lock" in leader.lock
    assert scheduler.leader_status().role == "stopped"


# -- two real `shepherd run` processes -------------------------------------------------------------
LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (?:[A-Z]+ )?shepherd\.scheduler (.*)$")


@dataclass
class Shepherd:
    """One `shepherd run` process and its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def lines(self) -> list[tuple[datetime, str]]:
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            match = LINE.match(line)
            if match:
                found.append((datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f"), match[2]))
        return found

    def said(self, start: str) -> int:
        return sum(message.startswith(start) for _, message in self.lines())

    def passes(self) -> int:
        """Passes this process acted on (skipped ones say so and do not count)."""
        return sum(bool(re.match(r"pass \w+: \d+ actions", message)) for _, message in self.lines())

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Shepherd]]:
    repo = tmp_path / "empty_repository"
    repo.mkdir(exist_ok=True)
    config = tmp_path / "leader.yaml"
    config.write_text("reconcile_interval_seconds: 0.3\nprobe_interval_seconds: 0.3\n")
    started: list[Shepherd] = []

    def _start(name: str, db_url: str, *, grpc: str | None = None) -> Shepherd:
        triton = f"127.0.0.1:{closed_port()}"
        log = tmp_path / f"{name}.log"
        command = [
            sys.executable, "-m", "control_plane.cli", "run", "--config", str(config), "--db", db_url,
            "--repo", str(repo), "--triton-grpc", grpc or triton, "--triton-metrics", triton,
            "--leader-retry-seconds", str(RETRY_S), "--leader-check-seconds", str(CHECK_S),
        ]  # fmt: skip
        with log.open("wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env=_env())
        started.append(Shepherd(name, process, log))
        return started[-1]

    yield _start
    for one in started:
        if one.process.poll() is None:
            one.process.kill()
            one.process.wait(timeout=10)


def _env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SHEPHERD_")}
    return {**clean, "PYTHONPATH": str(ROOT)}


def _roles(pair: tuple[Shepherd, Shepherd]) -> tuple[Shepherd, Shepherd]:
    """(leader, standby) once one has said it leads and the other that it waits."""
    a, b = pair

    def settled() -> bool:
        for one in pair:
            assert one.process.poll() is None, f"{one.name} exited {one.process.returncode}:\n{one.text()}"
        return {a.said("leading:") + b.said("leading:"), a.said("standby:") + b.said("standby:")} == {1}

    until(settled, timeout=45, what=lambda: f"one leader and one standby:\n{a.text()}\n{b.text()}")
    return (a, b) if a.said("leading:") else (b, a)


def _check_lock_names(db_url: str, leader: Shepherd) -> None:
    """The lock itself says who leads: pg_locks (PostgreSQL) or the lock file (SQLite)."""
    if db_url.startswith("postgresql"):
        holders = advisory_holders(db_url)
        assert len(holders) == 1 and holders[0][1].endswith(f"pid {leader.process.pid}"), holders
    else:
        path = Path(db_url.removeprefix("sqlite:///") + ".leader.lock")
        assert path.read_text().strip().endswith(f"pid {leader.process.pid}")


def test_two_shepherds_one_leads_and_the_other_takes_over_after_sigkill(
    db_url: str, start: Callable[..., Shepherd], tmp_path: Path
) -> None:
    leader, standby = _roles((start("a", db_url), start("b", db_url)))
    _check_lock_names(db_url, leader)

    # While both run, only the leader acts; `shepherd tick` refuses to act beside it (exit 23).
    tick_result: list[subprocess.CompletedProcess[str]] = []
    where = (
        "--db",
        db_url,
        "--repo",
        str(tmp_path / "empty_repository"),
        "--triton-grpc",
        f"127.0.0.1:{closed_port()}",
    )
    ticking = threading.Thread(target=lambda: tick_result.append(shepherd(tmp_path, "tick", *where)))
    ticking.start()
    until(lambda: leader.passes() >= 4, timeout=15, what=lambda: f"passes of the leader:\n{leader.text()}")
    ticking.join(timeout=60)
    fails_with(tick_result[0], LeaderError, "another shepherd leads", f"pid {leader.process.pid}", "did nothing")
    assert standby.passes() == 0 and standby.process.poll() is None, standby.text()

    if db_url.startswith("postgresql"):
        # A lost connection is lost leadership: the leader stops acting, then competes again.
        engine = create_engine(db_url)
        with engine.connect() as admin:
            admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": advisory_holders(db_url)[0][0]})
        engine.dispose()
        until(
            lambda: leader.said("leadership lost") == 1, timeout=5, what=lambda: f"the loss noticed:\n{leader.text()}"
        )
        until(lambda: len(advisory_holders(db_url)) == 1, timeout=5, what="a leader again")
        pid = int(advisory_holders(db_url)[0][1].rsplit(" ", 1)[1])
        leader, standby = (leader, standby) if pid == leader.process.pid else (standby, leader)
        until(lambda: leader.said("leading:") >= 1 and standby.said("standby:") >= 1, 5, "roles after the loss")
        before = (leader.passes(), standby.passes())
        time.sleep(1.5)
        assert leader.passes() > before[0] and standby.passes() == before[1], (leader.text(), standby.text())

    # SIGKILL the leader: the standby leads within its retry interval (plus a margin), and acts.
    already = standby.said("leading:")
    leader.process.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    leader.process.wait(timeout=10)
    until(
        lambda: standby.said("leading:") > already,
        timeout=15,
        what=lambda: f"the takeover:\n{standby.text()}",
        step=0.01,
    )
    takeover = time.monotonic() - killed
    print(f"measured: standby leads {takeover:.2f} s after SIGKILL of the leader ({db_url.split(':')[0]})")
    assert takeover < RETRY_S + TAKEOVER_MARGIN_S, takeover
    _check_lock_names(db_url, standby)
    acted = standby.passes()
    until(
        lambda: standby.passes() >= acted + 2, timeout=10, what=lambda: f"passes of the new leader:\n{standby.text()}"
    )

    # SIGTERM: the leader stops after its running jobs and lets the lock go.
    standby.process.send_signal(signal.SIGTERM)
    assert standby.process.wait(timeout=20) == 0, standby.text()
    with leading(db_url):
        pass


def test_leader_that_loses_its_lock_with_a_job_running_exits_23(tmp_path: Path, start: Callable[..., Shepherd]) -> None:
    db_url = f"sqlite:///{tmp_path / 'history.db'}"
    # A "Triton" that accepts connections and never answers: the reconcile pass hangs for its 10 s timeout.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        one = start("a", db_url, grpc=f"127.0.0.1:{silent.getsockname()[1]}")
        until(lambda: one.said("leading:") == 1, timeout=30, what=lambda: f"leading:\n{one.text()}")
        time.sleep(1.0)  # the first reconcile pass is in flight, waiting for the silent Triton
        Path(db_url.removeprefix("sqlite:///") + ".leader.lock").unlink()
        taken = time.monotonic()
        code = one.process.wait(timeout=20)
        exited = time.monotonic() - taken
    finally:
        silent.close()
    assert code == LeaderError.exit_code, one.text()
    assert one.said("leadership lost") == 1 and one.said("a job still runs") == 1, one.text()
    assert exited < CHECK_S + FAST.fence_seconds + 2.0, exited  # the fence, not the job's 10 s timeout
    print(f"measured: exit {exited:.2f} s after the lock file was taken away with a pass in flight")
