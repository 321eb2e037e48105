"""One leader per history database: only the process holding the database's leader lock acts.

    leadership = leadership_for(settings.db_url, role="run")   # PostgresLeader, FileLeader or LocalLeader
    if leadership.acquire():                                   # one try, never waits
        ...                                                    # act while leadership.is_leader()
        leadership.confirm()                                   # every LeaderTiming.check_seconds
    leadership.release()

    with leading(settings.db_url, role="tick"):                # one try; LeaderError when another leads
        reconciler.tick(rt)

Why a lock the database server (or the kernel) holds, rather than a lease row with a timestamp: the
death of the holder releases it at once (PostgreSQL ends a dead client's session and its
session-level advisory locks with it; the kernel drops a dead process's `flock`), no clocks of two
hosts are compared, and nothing has to be cleaned up after a crash.

Backends, chosen from the database URL by `leadership_for`:

- `PostgresLeader`: `pg_try_advisory_lock(LOCK_KEY)`, a session-level advisory lock, on a connection of
  its own (never the store's pool). Advisory locks are per database, so every shepherd on one history
  database (whatever its schema) competes for the same lock. The connection must reach PostgreSQL
  itself or a session-mode pooler: a transaction-mode pooler (PgBouncer's default) would hand the
  session, and the lock, to someone else. The holder is visible to operators:

      SELECT l.pid, a.application_name, a.client_addr, a.backend_start FROM pg_locks l
      JOIN pg_stat_activity a USING (pid) WHERE l.locktype = 'advisory' AND l.objid = 2047682198;

  (`application_name` is `shepherd run leader <host> pid <pid>`; `LOCK_KEY`'s low 32 bits are the objid.)
- `FileLeader` (SQLite): an exclusive `flock` on `<database file>.leader.lock`, beside the database,
  which holds the holder's description while held. The file is never deleted (a deleted lock file
  would let two processes lock two different files); it works on a local filesystem, as SQLite does.
- `LocalLeader`: an in-memory SQLite database belongs to one process: it always leads.

How long things take (defaults of `LeaderTiming`; tests/test_leader.py measures the process-death
takeover and the fence with short intervals; the network-partition bound is computed, not measured):

- a standby tries the lock every `retry_seconds` (5 s), so after the leader's process dies (SIGKILL,
  OOM kill, crash) a standby leads within `retry_seconds` plus one connection (about 5.1 s);
- the leader confirms the lock every `check_seconds` (2 s) on its connection; a failed confirmation
  (the connection broke, the session was terminated, the lock file was replaced) is lost leadership;
- the leader starts no job unless its last confirmation is younger than `lease_seconds` (5 s), and a
  leader that lost the lock stops its scheduler, waits for its running jobs, releases and becomes a
  standby; a job still running `fence_seconds` (8 s) after the last confirmation makes the process
  exit with LeaderError's code (23) so that it cannot act beside the next leader (its supervisor
  restarts it, as a standby);
- when the leader's host dies or the network between it and PostgreSQL is cut, nothing closes the
  connection: PostgreSQL drops the session (and the lock) by TCP keepalive, which the lock
  connection sets for its own session: `tcp_keepalives_idle=5`, `tcp_keepalives_interval=2`,
  `tcp_keepalives_count=3` (11 s of silence) and `tcp_user_timeout=10000` ms (10 s of unacknowledged
  data). So the lock is released 10 to 11 s after the last packet from the lost leader, which by
  then has stopped acting (fence 8 s < 10 s), and a standby leads at most `11 + retry_seconds` s
  (+ one connection) after the cut: 16 s with the defaults. The client side sets libpq keepalives
  too (2 s idle, 1 s interval, 3 probes; `tcp_user_timeout` 4 s) so the leader's own confirmation
  fails rather than hangs. A Unix-socket connection has no keepalives and needs none (same host).

What is not guaranteed: the lock is not a fencing token. If the lock is taken away from a live
leader (an administrator's `pg_terminate_backend`, a server restart, a deleted lock file), a standby
may lead at its next try while the old leader learns of it at its next confirmation: for up to
`check_seconds` (and a step already running, up to `fence_seconds`) both may act. The reconciler is
level-triggered and its transitions are conflict-checked in SQL, so such an overlap repeats steps;
it does not corrupt the history.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from control_plane.errors import ConfigError, LeaderError
from control_plane.store.database import CONNECT_TIMEOUT_S, cause_of, mask_url, parse_url

# A fixed 64-bit key derived from "shepherd": the same in every shepherd process and version.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"shepherd").digest()[:8], "big", signed=True)
_KEY_HIGH, _KEY_LOW = (LOCK_KEY & 0xFFFF_FFFF_FFFF_FFFF) >> 32, LOCK_KEY & 0xFFFF_FFFF  # pg_locks' classid, objid

# Set on the lock connection's own session (pg_settings names; those a server lacks are skipped).
SERVER_SESSION_SETTINGS = {
    "tcp_keepalives_idle": "5",
    "tcp_keepalives_interval": "2",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "10000",  # milliseconds
    "idle_session_timeout": "0",  # PostgreSQL 14+: an idle lock session must never be ended for idling
    "statement_timeout": "5000",
}
RELEASED_AFTER_S = 10.0  # the earliest PostgreSQL drops a silent leader's session (tcp_user_timeout)
RELEASED_WITHIN_S = 11.0  # the latest (keepalive: idle 5 s + 3 probes 2 s apart)
CLIENT_CONNECT_ARGS: dict[str, Any] = {
    "connect_timeout": CONNECT_TIMEOUT_S,
    "keepalives": 1,
    "keepalives_idle": 2,
    "keepalives_interval": 1,
    "keepalives_count": 3,
    "tcp_user_timeout": 4000,
}
MAX_CHECK_SECONDS = 2.0


@dataclass(frozen=True)
class LeaderTiming:
    """How often a standby tries and a leader confirms; the lease and the fence follow from the check.

        LeaderTiming()                                        # retry 5 s, check 2 s, lease 5 s, fence 8 s
        LeaderTiming(retry_seconds=0.5, check_seconds=0.5)    # tests: lease 1.25 s, fence 4.25 s
    """

    retry_seconds: float = 5.0
    check_seconds: float = MAX_CHECK_SECONDS

    def __post_init__(self) -> None:
        if not 0 < self.retry_seconds <= 300:
            raise ConfigError(f"leader retry: expected 0 < seconds <= 300, got {self.retry_seconds}")
        if not 0 < self.check_seconds <= MAX_CHECK_SECONDS:
            # The fence must come before PostgreSQL can release a silent leader's lock (RELEASED_AFTER_S).
            raise ConfigError(f"leader check: expected 0 < seconds <= {MAX_CHECK_SECONDS}, got {self.check_seconds}")

    @property
    def lease_seconds(self) -> float:
        """A leader starts no job unless it confirmed the lock this recently."""
        return 2.5 * self.check_seconds

    @property
    def fence_seconds(self) -> float:
        """A leader that lost the lock has stopped every job this long after its last confirmation, or exits."""
        return self.lease_seconds + 3.0


def describe_self(role: str) -> str:
    """This process, as the holder's description and PostgreSQL's application_name show it."""
    return f"shepherd {role} leader {socket.gethostname()} pid {os.getpid()}"[:63]


class Leadership(ABC):
    """The lock of one history database; its holder is the leader.

    `acquire`, `confirm` and `release` are called by one thread at a time; `is_leader` from any.
    """

    lock_name: str  # what the lock is, for logs: "PostgreSQL advisory lock ... in URL", "file lock PATH"

    def __init__(
        self, *, role: str = "run", timing: LeaderTiming | None = None, clock: Callable[[], float] = time.monotonic
    ):
        self.role = role
        self.timing = timing or LeaderTiming()
        self.me = describe_self(role)
        self._clock = clock
        self._held = False
        self._confirmed_at = float("-inf")
        self.lost_because: str | None = None  # why the last confirmation failed

    # -- what every backend provides --------------------------------------------------------------
    @abstractmethod
    def _try_lock(self) -> bool:
        """Take the lock if free; False when another holds it; LeaderError when it cannot be tried."""

    @abstractmethod
    def _still_ours(self) -> bool:
        """Whether the lock is still held by this object; raises (anything) when that cannot be known."""

    @abstractmethod
    def _unlock(self) -> None:
        """Let the lock go and free its resources (never raises)."""

    @abstractmethod
    def holder(self) -> str | None:
        """Who holds the lock now (this process or another), as far as can be seen; None: nobody or unknown."""

    # -- the shared protocol -----------------------------------------------------------------------
    def acquire(self) -> bool:
        """Try once to lead; True when this process holds the lock now (also when it already did)."""
        if self._held:
            return True
        if not self._try_lock():
            return False
        self._held = True
        self._confirmed_at = self._clock()
        self.lost_because = None
        return True

    def confirm(self) -> bool:
        """The leader's periodic check: True while the lock is still ours; False (and let go) once it is not."""
        if not self._held:
            return False
        try:
            ours = self._still_ours()
            problem = None if ours else "the lock is no longer held by this process"
        except Exception as exc:  # a broken connection, a vanished file: the lock is lost either way
            ours, problem = False, cause_of(exc)
        if ours:
            self._confirmed_at = self._clock()
            return True
        self.lost_because = problem
        self._held = False
        self._unlock()
        return False

    def is_leader(self) -> bool:
        """Held, and confirmed within the lease: what a job asks before it acts."""
        return self._held and self._clock() - self._confirmed_at <= self.timing.lease_seconds

    @property
    def confirmed_at(self) -> float:
        """When (on the monotonic clock) the lock was last known to be ours."""
        return self._confirmed_at

    def release(self) -> None:
        """Stop leading (a no-op for a standby): another process may take the lock at once."""
        was = self._held
        self._held = False
        if was:
            self._unlock()

    def close(self) -> None:
        self.release()

    def __enter__(self) -> Leadership:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class PostgresLeader(Leadership):
    """A session-level advisory lock on a dedicated connection (see the module's docstring)."""

    def __init__(self, url: URL, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.safe_url = mask_url(url)
        self.lock_name = f"PostgreSQL advisory lock {LOCK_KEY} in {self.safe_url}"
        connect_args = {k: v for k, v in CLIENT_CONNECT_ARGS.items() if k not in url.query}
        try:
            self._engine = create_engine(
                url, poolclass=NullPool, isolation_level="AUTOCOMMIT", connect_args=connect_args
            )
        except (ImportError, SQLAlchemyError) as exc:
            raise LeaderError(f"{self.safe_url}: cannot open the leader lock's connection: {cause_of(exc)}") from exc
        self._conn: Connection | None = None

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            self._drop()
            conn = self._engine.connect()
            try:
                conn.execute(
                    text(
                        "SELECT set_config(s.name, v.value, false) FROM json_each_text(CAST(:settings AS json)) AS v "
                        "JOIN pg_settings s ON s.name = v.key"
                    ).bindparams(settings=json.dumps(SERVER_SESSION_SETTINGS))
                )
                conn.execute(text("SELECT set_config('application_name', :name, false)"), {"name": self.standby_name})
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    @property
    def standby_name(self) -> str:
        return self.me.replace(" leader ", " standby ", 1)

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with suppress(Exception):
                conn.invalidate()
            with suppress(Exception):
                conn.close()

    def _try_lock(self) -> bool:
        try:
            conn = self._connection()
            got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": LOCK_KEY}).scalar_one())
            if got:
                conn.execute(text("SELECT set_config('application_name', :name, false)"), {"name": self.me})
            return got
        except SQLAlchemyError as exc:
            self._drop()
            raise LeaderError(f"{self.safe_url}: could not try the leader lock: {cause_of(exc)}") from exc

    def _still_ours(self) -> bool:
        if self._conn is None:
            return False
        count = self._conn.execute(
            text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
                "AND classid::bigint = :high AND objid::bigint = :low AND objsubid = 1 AND granted"
            ),
            {"high": _KEY_HIGH, "low": _KEY_LOW},
        ).scalar_one()
        return int(count) == 1

    def _unlock(self) -> None:
        # Closing the session releases its advisory locks; unlocking first keeps a pooled server
        # connection (should one ever sit in between) from carrying the lock on.
        if self._conn is not None and not self._conn.invalidated:
            with suppress(Exception):
                self._conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})
        self._drop()

    def backend_pid(self) -> int | None:
        """The PostgreSQL backend of the lock connection (what pg_locks shows), if connected."""
        if self._conn is None:
            return None
        return int(self._conn.execute(text("SELECT pg_backend_pid()")).scalar_one())

    def holder(self) -> str | None:
        if self._held:
            return self.me
        try:
            row = (
                self._connection()
                .execute(
                    text(
                        "SELECT l.pid, a.application_name, host(a.client_addr), a.backend_start FROM pg_locks l "
                        "LEFT JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
                        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                        "AND l.classid::bigint = :high AND l.objid::bigint = :low AND l.objsubid = 1 AND l.granted"
                    ),
                    {"high": _KEY_HIGH, "low": _KEY_LOW},
                )
                .first()
            )
        except SQLAlchemyError:
            self._drop()
            return None
        if row is None:
            return None
        pid, name, address, started = row
        where = f" from {address}" if address else ""
        since = f", connected {started:%Y-%m-%d %H:%M:%S %Z}" if started is not None else ""
        return f"{name or 'a session'} (PostgreSQL backend pid {pid}{where}{since})"

    def close(self) -> None:
        super().close()
        self._drop()
        self._engine.dispose()


class FileLeader(Leadership):
    """An exclusive `flock` on a lock file beside the SQLite database (see the module's docstring)."""

    def __init__(self, path: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.path = path
        self.lock_name = f"file lock {path}"
        self._fd: int | None = None

    def _try_lock(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise LeaderError(f"{self.path}: cannot open the leader lock file: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError as exc:
            os.close(fd)
            raise LeaderError(f"{self.path}: cannot lock the leader lock file: {exc.strerror}") from exc
        if not _same_file(fd, self.path):  # replaced between our open and our lock: try again next round
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.me}\n".encode(), 0)
        self._fd = fd
        return True

    def _still_ours(self) -> bool:
        return self._fd is not None and _same_file(self._fd, self.path)

    def _unlock(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with suppress(OSError):
            if _same_file(fd, self.path):
                os.ftruncate(fd, 0)  # nobody leads: an empty file
        os.close(fd)  # closing the only descriptor drops the flock

    def holder(self) -> str | None:
        if self._held:
            return self.me
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None  # no lock file: nobody has led yet
        try:
            # A shared lock is refused while someone holds the exclusive one; had, it tells that nobody
            # leads (what a killed holder wrote is stale) and goes again with the descriptor.
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
        except OSError:
            return None
        finally:
            os.close(fd)
        return None


class LocalLeader(Leadership):
    """An in-memory SQLite database: no other process can reach it, so this process always leads."""

    lock_name = "no lock (an in-memory database belongs to one process)"

    def _try_lock(self) -> bool:
        return True

    def _still_ours(self) -> bool:
        return True

    def _unlock(self) -> None:
        pass

    def holder(self) -> str | None:
        return self.me if self._held else None


def _same_file(fd: int, path: Path) -> bool:
    try:
        there = os.stat(path)
    except FileNotFoundError:
        return False
    here = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def sqlite_file(url: URL) -> Path | None:
    """The SQLite database file of `url`, or None for an in-memory database."""
    database = url.database or ""
    if database.startswith("file:"):  # a URI filename (`?uri=true`)
        path, _, query = database[len("file:") :].partition("?")
        return None if "mode=memory" in query or path in ("", ":memory:") else Path(path)
    return None if database in ("", ":memory:") else Path(database)


def leadership_for(
    db_url: str, *, role: str = "run", timing: LeaderTiming | None = None, clock: Callable[[], float] = time.monotonic
) -> Leadership:
    """The leader lock of the history at `db_url`: PostgreSQL's advisory lock, SQLite's lock file, or none."""
    url = parse_url(db_url)
    backend = url.get_backend_name()
    if backend == "postgresql":
        return PostgresLeader(url, role=role, timing=timing, clock=clock)
    if backend == "sqlite":
        database = sqlite_file(url)
        if database is None:
            return LocalLeader(role=role, timing=timing, clock=clock)
        lock = Path(os.path.abspath(f"{database}.leader.lock"))
        return FileLeader(lock, role=role, timing=timing, clock=clock)
    raise LeaderError(
        f"{mask_url(url)}: shepherd elects its leader on PostgreSQL and SQLite only, not on {backend} databases"
    )


@contextmanager
def leading(db_url: str, *, role: str = "tick") -> Iterator[Leadership]:
    """Hold the leader lock for the block, or raise LeaderError at once when another process leads.

        with leading(rt.settings.db_url, role="tick"):
            report = reconciler.tick(rt)
    """
    with leadership_for(db_url, role=role) as leadership:
        if not leadership.acquire():
            raise LeaderError(
                f"another shepherd leads this history: {leadership.holder() or 'a process'} holds the "
                f"{leadership.lock_name}; this {role} did nothing"
            )
        yield leadership
