"""The long part of the reliability suite: crashes, a cut database, a full disk, a killed Triton, a soak.

Why: the control plane promises that a crash at any line is repaired by the next pass (desired state
is written to SQL before Triton is touched), that a database outage stops it cleanly instead of
letting it act unrecorded, that a publish never leaves half a version, and that loading and
unloading versions for hours never fails a client request nor leaks memory. Each case below drives
the real local Triton, the real `shepherd` CLI or `reconciler.tick`, SQLite and PostgreSQL, and
counts how often the promise held. Traffic goes only to 127.0.0.1.

    .venv/bin/python bench/reliability.py [--only killed db_cut full_disk triton_killed soak]
        [--rollouts 50] [--cut-seconds 60] [--swaps 200] [--triton-kills 3] [--quick] [--out DIR]

Cases (see docs/reliability.md for what each one checks):
- killed:        SIGKILL of `shepherd run` at a random point of a rollout, then a restart, on SQLite and PostgreSQL
- db_cut:        PostgreSQL unreachable for --cut-seconds mid-canary (a TCP proxy of ours is cut), ticks go on
- full_disk:     a `shepherd build` into a small tmpfs repository that runs out of space midway
- triton_killed: tritonserver and its stubs SIGKILLed mid-canary, started again on the same ports
- soak:          [1] -> [1,2] -> [1] version swaps under client load, Triton's memory sampled

Results: one JSON per case in --out (default bench/results/reliability), and docs/reliability.md
rendered from every case JSON there (a later run of one case keeps the others' figures).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench.common import ROOT, machine, table
from bench.control_plane_harness import runtime_for
from builders.repository import STAGING_PREFIX, ModelRepository
from control_plane import reconciler
from control_plane.audit import history_mismatches
from control_plane.local_triton import LocalTriton, group_processes
from control_plane.runtime import Runtime
from control_plane.store.models import State
from control_plane.triton_admin import TritonAdmin
from probes.load import LoadGenerator
from tests.classifier_models import golden_set, publish

CASES = ("killed", "db_cut", "full_disk", "triton_killed", "soak")
POSTGRES_URL = os.environ.get("SHEPHERD_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
DOC = ROOT / "docs" / "reliability.md"
DEFAULT_OUT = ROOT / "bench" / "results" / "reliability"
FINAL = (State.promoted, State.rolled_back, State.rejected, State.failed)
LIVE_STATES = ("READY", "LOADING", "UNLOADING")
TABLES = ("models", "versions", "transitions", "probe_windows", "decisions", "rollouts", "alerts", "manual_actions")
MODEL = "clf"
SOAK_MEMORY_LIMIT_MIB = 64.0  # growth of server + stubs RSS over the soak that still counts as no leak

# The tests' FAST_POLICY (tests/test_control_plane.py) with a bake of our choosing and a fast reconcile.
POLICY = """
reconcile_interval_seconds: 1
probe_interval_seconds: 0.5
defaults:
  bake_seconds: {bake}
  probe_interval_seconds: 0.5
  probe_rows: 32
  probe_batch_size: 8
  min_samples: 24
  drain_seconds: 0
"""


def now_s() -> float:
    return time.time()


# -- databases -----------------------------------------------------------------------------------------
@contextlib.contextmanager
def database(backend: str, scratch: Path, *, name: str = "history") -> Iterator[str]:
    """A fresh SQLite file, or a fresh PostgreSQL schema in the test database dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{scratch / f'{name}.db'}"
        return
    schema = f"shepherd_rel_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def counts(db_url: str) -> dict[str, int]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return {t: int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()) for t in TABLES}
    finally:
        engine.dispose()


def funnel_twice(db_url: str) -> dict[str, list[str]]:
    """Decisions that caused a transition, written twice; transitions made twice; final decisions that moved nothing.

    A decision and the transition it caused are written in one transaction with the same `at`
    (store.lifecycle.transition), which pairs them.
    """
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            decisions = conn.execute(
                text(
                    "SELECT d.version_id, v.version, d.outcome, d.at FROM decisions d JOIN versions v ON v.id = d.version_id WHERE d.outcome <> 'wait'"
                )
            ).all()
            moves = conn.execute(
                text(
                    "SELECT t.version_id, v.version, t.from_state, t.to_state, t.at FROM transitions t JOIN versions v ON v.id = t.version_id"
                )
            ).all()
    finally:
        engine.dispose()
    moved_to = {(m[0], str(m[4])): m[3] for m in moves}
    caused = Counter((d[1], d[2], moved_to.get((d[0], str(d[3])))) for d in decisions)
    duplicates = [f"v{v} {outcome} -> {to} x{n}" for (v, outcome, to), n in caused.items() if n > 1 and to]
    orphans = [f"v{v} {outcome} moved nothing x{n}" for (v, outcome, to), n in caused.items() if to is None]
    twice = Counter((m[1], m[3]) for m in moves if m[2] != m[3])
    duplicates += [f"v{v} entered {to} x{n}" for (v, to), n in twice.items() if n > 1]
    return {"duplicates": duplicates, "orphans": orphans}


def audit(db_url: str) -> list[str]:
    from control_plane.store import Store

    with Store.open(db_url, migrate=False) as store:
        return history_mismatches(store)


# -- control plane pieces ------------------------------------------------------------------------------
def write_policy(scratch: Path, *, bake: float) -> Path:
    path = scratch / "shepherd.yaml"
    path.write_text(POLICY.format(bake=bake))
    return path


runtime = runtime_for  # config, repo, triton, db_url -> Runtime


def shepherd_command(verb: str, config: Path, repo: ModelRepository, triton: LocalTriton, db_url: str) -> list[str]:
    return [
        sys.executable, "-m", "control_plane.cli", verb, "--config", str(config), "--repo", str(repo.root),
        "--triton-grpc", triton.state.grpc_url, "--triton-metrics", f"127.0.0.1:{triton.state.metrics_port}",
        "--db", db_url,
    ]  # fmt: skip


def state_of(rt: Runtime, model: str, version: int) -> State | None:
    record = rt.store.read.get_version(model, version)
    return State(record.state) if record is not None else None


def tick_until(rt: Runtime, done: Callable[[], bool], *, timeout: float, pause: float = 0.3) -> tuple[bool, list[str]]:
    errors: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            report = reconciler.tick(rt)
            errors += [str(e) for e in report.errors]
        except Exception as exc:  # a tick must not raise; if it does, it is a finding, and we go on ticking
            errors.append(f"tick raised {type(exc).__name__}: {exc}")
        if done():
            return True, errors
        time.sleep(pause)
    return False, errors


def establish_stable(rt: Runtime, repo: ModelRepository, scratch: Path) -> int:
    version = publish(repo, scratch / "build", MODEL, "good")
    ok, errors = tick_until(rt, lambda: state_of(rt, MODEL, version) == State.promoted, timeout=120)
    if not ok:
        raise SystemExit(f"{MODEL} v{version} was not promoted within 120 s: {errors[-3:]}")
    return version


def live_index(admin: TritonAdmin) -> set[tuple[str, int | None]]:
    return {(e.model, e.version) for e in admin.index() if e.state in LIVE_STATES}


def half_loaded(rt: Runtime, model: str) -> list[str]:
    """What Triton serves beyond the desired versions (the stable one, once a rollout is over), and aliases left."""
    stable = rt.store.read.stable(model)
    wanted = {stable.version} if stable is not None else set()
    problems = []
    live = live_index(rt.admin)
    served = {v for m, v in live if m == model}
    if served != wanted:
        problems.append(f"{model} serves {sorted(v for v in served if v is not None)}, SQL wants {sorted(wanted)}")
    problems += [f"{m} v{v} is live" for m, v in live if m.endswith("__preflight")]
    if (rt.repo.root / f"{model}__preflight").is_symlink() or (rt.repo.root / f"{model}__preflight").exists():
        problems.append(f"{model}__preflight is still in the repository")
    return problems


def converged(rt: Runtime, model: str, version: int) -> bool:
    if state_of(rt, model, version) not in FINAL:
        return False
    try:
        return not half_loaded(rt, model)
    except Exception:
        return False


def stop_process(process: subprocess.Popen[str]) -> str:
    """SIGTERM, then SIGKILL after 20 s; returns what it printed."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            out, _ = process.communicate(timeout=20)
            return out or ""
        except subprocess.TimeoutExpired:
            process.kill()
    out, _ = process.communicate()
    return out or ""


# -- case 1: shepherd run killed at random points ----------------------------------------------------------
# Which phases each variant can be in (a broken version fails on its first load, a worse one is
# rejected in preflight; only the candidates that pass preflight have a canary).
PHASES = {
    "same": ("discovery", "preflight", "canary", "decided"),
    "slow": ("discovery", "preflight", "canary", "decided"),
    "worse": ("discovery", "preflight", "decided"),
    "failing": ("discovery", "preflight", "decided"),
    "broken": ("discovery", "decided"),
}
REACHED = {
    "discovery": set(State),
    "preflight": {State.preflight, State.canary, *FINAL},
    "canary": {State.canary, *FINAL},
    "decided": set(FINAL),
}
JITTER_S = {"discovery": 0.3, "preflight": 1.0, "canary": 3.0, "decided": 0.5}


def killed_rollouts(scratch: Path, backend: str, *, rollouts: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    runs: list[dict[str, Any]] = []
    repo = ModelRepository(scratch / "model_repository")
    repo.root.mkdir(parents=True)
    config = write_policy(scratch, bake=5)
    with LocalTriton(repo.root, state_dir=scratch / "triton-state") as triton, database(backend, scratch) as url:
        rt = runtime(config, repo, triton, url)
        try:
            establish_stable(rt, repo, scratch)
        finally:
            rt.close()
        seen_mismatches: set[str] = set()
        for number in range(rollouts):
            variant = rng.choice(tuple(PHASES))
            phase = rng.choice(PHASES[variant])
            jitter = rng.uniform(0.0, JITTER_S[phase])
            run = one_killed_rollout(scratch, config, repo, triton, url, variant=variant, phase=phase, jitter=jitter)
            mismatches = set(audit(url))
            run["audit_mismatches"] = sorted(mismatches - seen_mismatches)
            seen_mismatches |= mismatches
            run["held"] = not (run["lost_rows"] or run["half_loaded"] or run["duplicates"] or run["audit_mismatches"])
            run["held"] = run["held"] and run["finished"]
            print(f"  killed/{backend} #{number}: {json.dumps(run, default=str)}", flush=True)
            runs.append(run)
    return {"backend": backend, "seed": seed, "runs": runs}


def one_killed_rollout(
    scratch: Path,
    config: Path,
    repo: ModelRepository,
    triton: LocalTriton,
    url: str,
    *,
    variant: str,
    phase: str,
    jitter: float,
) -> dict[str, Any]:
    rt = runtime(config, repo, triton, url)
    twice_before = funnel_twice(url)
    candidate = publish(repo, scratch / "build", MODEL, variant)
    run: dict[str, Any] = {"variant": variant, "version": candidate, "phase": phase, "jitter_s": round(jitter, 3)}
    log = scratch / f"run-{candidate}.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            shepherd_command("run", config, repo, triton, url), stdout=out, stderr=subprocess.STDOUT, text=True
        )
    started = time.monotonic()
    try:
        deadline = started + 120
        while time.monotonic() < deadline:
            state = state_of(rt, MODEL, candidate)
            if state in REACHED[phase] if state is not None else False:
                break
            if process.poll() is not None:
                break
            time.sleep(0.05)
        reached = state_of(rt, MODEL, candidate)
        time.sleep(jitter)
        before = counts(url)
        state_at_kill = state_of(rt, MODEL, candidate)
        run["exited_before_kill"] = process.poll()
        process.send_signal(signal.SIGKILL)  # a crash at an arbitrary line
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    after_kill = counts(url)
    run.update(
        {
            "reached": reached.value if reached else None,
            "state_at_kill": state_at_kill.value if state_at_kill else None,
            "killed_after_s": round(time.monotonic() - started, 2),
        }
    )
    rt.close()
    # Restart: a fresh Runtime (open_runtime is what `shepherd run` does at start), ticks until the
    # version is final and Triton serves exactly what SQL wants.
    rt = runtime(config, repo, triton, url)
    try:
        restarted = time.monotonic()
        finished, errors = tick_until(rt, lambda: converged(rt, MODEL, candidate), timeout=120)
        final = state_of(rt, MODEL, candidate)
        run["final_state"] = final.value if final else None
        run["finished"] = final in FINAL
        run["restart_to_converged_s"] = round(time.monotonic() - restarted, 2) if finished else None
        run["half_loaded"] = half_loaded(rt, MODEL) if not finished else []
        run["tick_errors"] = errors[-3:]
    finally:
        rt.close()
    end = counts(url)
    run["lost_rows"] = {t: [before[t], after_kill[t], end[t]] for t in TABLES if min(after_kill[t], end[t]) < before[t]}
    twice = funnel_twice(url)
    run["duplicates"] = sorted(
        set(twice["duplicates"] + twice["orphans"]) - set(twice_before["duplicates"] + twice_before["orphans"])
    )
    return run


# -- case 2: PostgreSQL cut mid-canary ---------------------------------------------------------------------
class CutProxy:
    """A threaded TCP proxy on 127.0.0.1 to `upstream`; `cut()` closes every connection and stops listening."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._cut = threading.Event()
        self.accepted = 0
        self.refused_while_cut = 0

    def start(self) -> CutProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._cut.clear()
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if self._cut.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns |= {client, server}
                self.accepted += 1
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(client, selectors.EVENT_READ, server)
        selector.register(server, selectors.EVENT_READ, client)
        try:
            while not self._cut.is_set():
                for key, _ in selector.select(timeout=0.5):
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            selector.close()
            for sock in (client, server):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
                with self._lock:
                    self._conns.discard(sock)

    def cut(self) -> None:
        """Refuse new connections (nothing listens) and reset every open one."""
        self._cut.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):  # wakes the accept() thread; the port stops listening
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            conns = list(self._conns)
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def restore(self) -> None:
        self.start()

    def close(self) -> None:
        self.cut()


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except OSError:
        return True


@dataclass
class TickRecord:
    began: float
    ended: float
    rc: int | None
    last_line: str
    traceback: bool


@dataclass
class TickRunner:
    """`shepherd tick` subprocesses back to back in a thread (each a fresh process: a cron job's view)."""

    command: list[str]
    pause: float = 0.5
    records: list[TickRecord] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> TickRunner:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            began = now_s()
            try:
                done = subprocess.run(self.command, capture_output=True, text=True, timeout=180)
                rc, err = done.returncode, done.stderr
            except subprocess.TimeoutExpired as exc:
                rc, err = None, f"hung for 180 s: {exc}"
            lines = [line for line in err.splitlines() if line.strip()]
            self.records.append(
                TickRecord(
                    began, now_s(), rc, lines[-1][:300] if lines else "", "Traceback" in err or "this is a bug" in err
                )
            )
            self._stop.wait(self.pause)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=200)


def db_cut(scratch: Path, *, cut_seconds: float) -> dict[str, Any]:
    upstream = make_url(POSTGRES_URL)
    proxy = CutProxy((upstream.host or "127.0.0.1", upstream.port or 5432)).start()
    repo = ModelRepository(scratch / "model_repository")
    repo.root.mkdir(parents=True)
    config = write_policy(scratch, bake=15)
    result: dict[str, Any] = {"cut_seconds": cut_seconds}
    try:
        with (
            LocalTriton(repo.root, state_dir=scratch / "triton-state") as triton,
            database("postgresql", scratch) as direct,
        ):
            proxied = make_url(direct).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
            rt = runtime(config, repo, triton, proxied)
            try:
                stable = establish_stable(rt, repo, scratch)
            finally:
                rt.close()
            candidate = publish(repo, scratch / "build", MODEL, "same")
            watch = TritonAdmin(triton.state.grpc_url)
            reader = runtime(config, repo, triton, direct)  # reads SQL past the proxy, never cut
            ticks = TickRunner(shepherd_command("tick", config, repo, triton, proxied)).start()
            try:
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    if state_of(reader, MODEL, candidate) == State.canary and reader.store.read.probe_windows(
                        MODEL, candidate, role="candidate"
                    ):
                        break
                    time.sleep(0.2)
                else:
                    raise SystemExit(f"db_cut: v{candidate} never reached a probed canary: {ticks.records[-3:]}")
                time.sleep(random.Random(7).uniform(0.0, 2.0))  # land anywhere in a tick
                before_state = state_of(reader, MODEL, candidate)
                expected = {stable, candidate} if before_state == State.canary else None
                result["sql_before_cut"] = {
                    "state": before_state.value if before_state else None,
                    "serving": sorted(expected or []),
                }
                samples: list[tuple[float, list[int]]] = []
                cut_at = now_s()
                proxy.cut()
                time.sleep(0.2)
                result["refused_during_cut"] = refused(proxy.port)
                while now_s() - cut_at < cut_seconds:
                    with contextlib.suppress(Exception):
                        samples.append((now_s(), sorted(watch.live_versions(MODEL))))
                    time.sleep(0.2)
                restored_at = now_s()
                proxy.restore()
                finished = False
                deadline = time.monotonic() + 150
                while time.monotonic() < deadline:
                    if converged(reader, MODEL, candidate):
                        finished = True
                        break
                    time.sleep(0.5)
            finally:
                ticks.stop()
                watch.close()
            final = state_of(reader, MODEL, candidate)
            reader.close()
            differed = [s for s in samples if expected is None or set(s[1]) != expected]
            during = [r for r in ticks.records if r.began >= cut_at and r.ended <= restored_at]
            straddling = [r for r in ticks.records if r.began < cut_at < r.ended or r.began < restored_at < r.ended]
            after = [r for r in ticks.records if r.began >= restored_at]
            mismatches = audit(direct)
            result.update(
                {
                    "index_samples_during_cut": len(samples),
                    "index_differed": differed[:5],
                    "ticks_during_cut": [(r.rc, r.last_line) for r in during],
                    "ticks_straddling": [(r.rc, r.last_line) for r in straddling],
                    "ticks_after": Counter(str(r.rc) for r in after),
                    "tracebacks": sum(r.traceback for r in ticks.records),
                    "final_state": final.value if final else None,
                    "converged_after_restore": finished,
                    "audit_mismatches": mismatches,
                    "proxy_connections": proxy.accepted,
                }
            )
            checks = {
                "the cut was real (new connections refused)": bool(result.get("refused_during_cut")),
                "no Triton action without its record": bool(samples) and not differed and expected is not None,
                "ticks in the cut exit 21 (StoreError)": bool(during) and all(r.rc == 21 for r in during),
                "no tick crashed or hung": all(r.rc not in (1, None) and not r.traceback for r in ticks.records),
                "the rollout finishes after the cut": finished and final in FINAL,
                "audit clean": not mismatches,
            }
            result["checks"] = checks
            result["held"] = all(checks.values())
    finally:
        proxy.close()
    print(f"  db_cut: {json.dumps(result, default=str)}", flush=True)
    return result


# -- case 3: full disk during a publish --------------------------------------------------------------------
@contextlib.contextmanager
def tmpfs(path: Path, size_kib: int) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        for _ in range(10):
            if subprocess.run(["umount", str(path)], check=False, capture_output=True).returncode == 0:
                break
            time.sleep(1)
        else:
            subprocess.run(["umount", "-l", str(path)], check=False)


def fill(root: Path, leave_bytes: int) -> Path:
    """A filler file that leaves about `leave_bytes` free on root's file system (tmpfs: whole pages)."""
    filler = root / "filler.bin"
    stat = os.statvfs(root)
    free = stat.f_bavail * stat.f_frsize
    size = max(0, free - leave_bytes)
    with filler.open("wb") as handle:
        chunk = b"\0" * (1 << 20)
        while size > 0:
            handle.write(chunk[: min(size, len(chunk))])
            size -= min(size, len(chunk))
    stat = os.statvfs(root)
    return filler


def free_bytes(root: Path) -> int:
    stat = os.statvfs(root)
    return stat.f_bavail * stat.f_frsize


def full_disk(scratch: Path, *, leave_pages: list[int]) -> dict[str, Any]:
    import torch

    from builders.ranker import example_ranker

    scratch.mkdir(parents=True, exist_ok=True)
    weights = scratch / "ranker.pt"
    torch.save(example_ranker().state_dict(), weights)
    model = "ctr_ranker"
    tries: list[dict[str, Any]] = []
    mount = scratch / "tmpfs"
    with tmpfs(mount, 2048) as root:
        repo = ModelRepository(root / "model_repository")
        repo.root.mkdir()
        build = [
            sys.executable, "-m", "control_plane.cli", "build", "ranker", "--factory", "builders.ranker:example_ranker",
            "--weights", str(weights), "--repo", str(repo.root), "--name", model,
        ]  # fmt: skip
        first = subprocess.run(build, capture_output=True, text=True, timeout=300)
        if first.returncode != 0:
            raise SystemExit(f"full_disk: the first build failed: {first.stderr[-500:]}")
        need = sum(p.stat().st_size for p in repo.version_dir(model, 1).iterdir())
        config = write_policy(scratch, bake=5)
        with LocalTriton(repo.root, state_dir=scratch / "triton-state") as triton:
            url = f"sqlite:///{scratch / 'history.db'}"
            rt = runtime(config, repo, triton, url)
            try:
                tick_until(rt, lambda: state_of(rt, model, 1) in FINAL, timeout=120)
                first_state = state_of(rt, model, 1)
            finally:
                rt.close()
            config_bytes = repo.config_path(model).read_bytes()
            for pages in leave_pages:
                filler = fill(root, pages * 4096)
                left = free_bytes(root)
                done = subprocess.run(build, capture_output=True, text=True, timeout=300)
                err = done.stderr
                error_lines = [line for line in err.splitlines() if line.startswith("error:")]
                visible = [str(p.relative_to(repo.root)) for p in repo.model_dir(model).iterdir() if p.name.isdigit()]
                staging_after_build = [p.name for p in repo.root.glob(f"{STAGING_PREFIX}*")]
                rt = runtime(config, repo, triton, url)  # the next control-plane start, disk still full
                try:
                    staging_after_start = [p.name for p in repo.root.glob(f"{STAGING_PREFIX}*")]
                    report = reconciler.tick(rt)
                    versions = sorted(int(r["version"]) for r in rt.store.read.history(model=model))
                    tick_errors = [str(e) for e in report.errors]
                finally:
                    rt.close()
                filler.unlink()
                outcome = {
                    "free_bytes_left": left,
                    "version_bytes": need,
                    "rc": done.returncode,
                    "error": error_lines[-1][:300] if error_lines else (err.strip().splitlines() or [""])[-1][:300],
                    "traceback": "Traceback" in err or "this is a bug" in err,
                    "version_folders": sorted(visible),
                    "staging_after_build": staging_after_build,
                    "staging_after_start": staging_after_start,
                    "versions_in_sql": versions,
                    "config_unchanged": repo.config_path(model).read_bytes() == config_bytes,
                    "tick_errors": tick_errors[:3],
                }
                checks = {
                    "build failed with a shepherd error": done.returncode not in (0, 1)
                    and bool(error_lines)
                    and not outcome["traceback"],
                    "no half version visible": outcome["version_folders"] == [f"{model}/1"],
                    "no staging folder after the next start": not staging_after_start,
                    "nothing half-written discovered": versions == [1] and outcome["config_unchanged"],
                }
                outcome["checks"] = checks
                outcome["held"] = all(checks.values())
                print(f"  full_disk (leave {pages} pages): {json.dumps(outcome, default=str)}", flush=True)
                tries.append(outcome)
    return {"first_version_state": first_state.value if first_state else None, "tries": tries}


# -- case 4: Triton killed mid-canary -------------------------------------------------------------------
def triton_killed(scratch: Path, *, kills: int) -> dict[str, Any]:
    repo = ModelRepository(scratch / "model_repository")
    repo.root.mkdir(parents=True)
    config = write_policy(scratch, bake=8)
    tries: list[dict[str, Any]] = []
    with LocalTriton(repo.root, state_dir=scratch / "triton-state") as triton:
        url = f"sqlite:///{scratch / 'history.db'}"
        rt = runtime(config, repo, triton, url)
        try:
            establish_stable(rt, repo, scratch)
            for attempt in range(kills):
                variant = ("same", "slow")[attempt % 2]
                stable_record = rt.store.read.stable(MODEL)
                stable = stable_record.version if stable_record else None
                candidate = publish(repo, scratch / "build", MODEL, variant)
                ok, errors = tick_until(
                    rt,
                    lambda c=candidate: (
                        state_of(rt, MODEL, c) == State.canary  # type: ignore[misc]
                        and bool(rt.store.read.probe_windows(MODEL, c, role="candidate"))
                    ),
                    timeout=120,
                )
                run: dict[str, Any] = {"variant": variant, "version": candidate, "stable": stable, "reached_canary": ok}
                if not ok:
                    run.update(held=False, note=f"never reached a probed canary: {errors[-3:]}")
                    tries.append(run)
                    continue
                pids = group_processes(triton.state.pid)
                run["processes_killed"] = len(pids)
                os.killpg(triton.state.pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
                while group_processes(triton.state.pid) and time.monotonic() < deadline:
                    with contextlib.suppress(ChildProcessError, OSError):
                        os.waitpid(triton.state.pid, os.WNOHANG)
                    time.sleep(0.05)
                run["stubs_left"] = len(group_processes(triton.state.pid))
                began = time.monotonic()
                triton.restart()  # same ports, nothing loaded
                run["restart_s"] = round(time.monotonic() - began, 2)
                rt.admin.close()
                rt.admin = TritonAdmin(triton.state.grpc_url)
                reloaded_after = None
                for tick in range(1, 4):
                    reconciler.tick(rt)
                    state = state_of(rt, MODEL, candidate)
                    ready = rt.admin.ready_versions(MODEL)
                    if (state == State.canary and ready == {stable, candidate}) or (
                        state in FINAL and stable in ready | {None}
                    ):
                        reloaded_after = tick
                        break
                run["reloaded_after_ticks"] = reloaded_after
                finished, errors = tick_until(rt, lambda c=candidate: converged(rt, MODEL, c), timeout=150)  # type: ignore[misc]
                final = state_of(rt, MODEL, candidate)
                decisions = rt.store.read.decisions(MODEL, candidate)
                run.update(
                    {
                        "final_state": final.value if final else None,
                        "last_decision": f"{decisions[-1].outcome}: {decisions[-1].reason}"[:300]
                        if decisions
                        else None,
                        "converged": finished,
                        "half_loaded": half_loaded(rt, MODEL) if not finished else [],
                        "tick_errors": errors[-3:],
                    }
                )
                mismatches = audit(url)
                run["audit_mismatches"] = mismatches
                checks = {
                    "next ticks reload stable and canary": reloaded_after is not None,
                    "the rollout finishes": finished,
                    "audit clean": not mismatches,
                }
                run["checks"] = checks
                run["held"] = all(checks.values())
                print(f"  triton_killed #{attempt}: {json.dumps(run, default=str)}", flush=True)
                tries.append(run)
        finally:
            rt.close()
    return {"tries": tries}


# -- case 5: soak ------------------------------------------------------------------------------------------
def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def cpu_memory_metric(metrics_url: str) -> int | None:
    try:
        body = requests.get(metrics_url, timeout=5).text
    except requests.RequestException:
        return None
    for line in body.splitlines():
        if line.startswith("nv_cpu_memory_used_bytes"):
            return int(float(line.split()[-1]))
    return None


def soak(scratch: Path, *, swaps: int, concurrency: int, every: int = 50) -> dict[str, Any]:
    x, _ = golden_set()
    repo = ModelRepository(scratch / "model_repository")
    repo.root.mkdir(parents=True)
    memory: list[dict[str, Any]] = []
    load_errors: list[str] = []
    with LocalTriton(repo.root, state_dir=scratch / "triton-state") as triton:
        admin = TritonAdmin(triton.state.grpc_url)
        try:
            first = publish(repo, scratch / "build", "swap", "good")
            second = publish(repo, scratch / "build", "swap", "same")
            config = repo.read_config("swap")
            admin.load_versions("swap", config, [first])

            def sample(done: int) -> None:
                pids = group_processes(triton.state.pid)
                memory.append(
                    {
                        "swaps": done,
                        "at": now_s(),
                        "processes": len(pids),
                        "rss_mib": round(rss_bytes(pids) / 2**20, 1),
                        "nv_cpu_memory_used_mib": (
                            round(m / 2**20, 1) if (m := cpu_memory_metric(triton.state.metrics_url)) else None
                        ),
                    }
                )
                print(f"  soak memory: {memory[-1]}", flush=True)

            with LoadGenerator(
                triton.state.grpc_url, "swap", {"x": x[:4]}, concurrency=concurrency, pause_s=0.01, max_seconds=4 * 3600
            ) as load:
                time.sleep(1.0)
                sample(0)
                began = time.monotonic()
                for done in range(1, swaps + 1):
                    try:
                        admin.load_versions("swap", config, [first, second])
                        time.sleep(0.25)
                        admin.load_versions("swap", config, [first])
                        if not admin.wait_gone("swap", [second], timeout_s=30):
                            load_errors.append(f"swap {done}: v{second} not gone after 30 s")
                    except Exception as exc:
                        load_errors.append(f"swap {done}: {type(exc).__name__}: {exc}"[:300])
                    time.sleep(0.25)
                    if done % every == 0 or done == swaps:
                        sample(done)
                seconds = time.monotonic() - began
                report = load.stop()
        finally:
            admin.close()
    growth = memory[-1]["rss_mib"] - memory[0]["rss_mib"]
    result = {
        "swaps": swaps,
        "concurrency": concurrency,
        "seconds": round(seconds, 1),
        "requests": report.requests,
        "failures": report.failures,
        "failure_messages": list(report.failure_messages)[:5],
        "served_by": dict(report.served_by),
        "swap_errors": load_errors[:5],
        "memory": memory,
        "rss_growth_mib": round(growth, 1),
        "limit_mib": SOAK_MEMORY_LIMIT_MIB,
    }
    checks = {
        "0 failed client requests": report.failures == 0 and report.requests > 0,
        "every swap loaded and unloaded": not load_errors,
        f"RSS growth < {SOAK_MEMORY_LIMIT_MIB:g} MiB": growth < SOAK_MEMORY_LIMIT_MIB,
    }
    result["checks"] = checks
    result["held"] = all(checks.values())
    print(f"  soak: {json.dumps({k: v for k, v in result.items() if k != 'memory'}, default=str)}", flush=True)
    return result


# -- report ------------------------------------------------------------------------------------------------
def summary_rows(results: dict[str, dict[str, Any]]) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for backend in ("sqlite", "postgresql"):
        data = results.get(f"killed-{backend}")
        if data:
            runs = data["data"]["runs"]
            held = sum(1 for r in runs if r["held"])
            rows.append([f"killed at random points ({backend})", len(runs), held, len(runs) - held])
    labels = {
        "db_cut": "database cut mid-rollout (postgresql)",
        "full_disk": "full disk during a publish",
        "triton_killed": "Triton killed mid-canary",
        "soak": "soak: load/unload swaps under load",
    }
    for case, label in labels.items():
        data = results.get(case)
        if not data:
            continue
        body = data["data"]
        tries = body.get("tries", [body])
        held = sum(1 for t in tries if t.get("held"))
        name = label
        if case == "soak":
            name = f"{label} ({body['swaps']} swaps)"
        if case == "db_cut":
            name = f"{label}, {body['cut_seconds']:g} s"
        rows.append([name, len(tries), held, len(tries) - held])
    return rows


def killed_table(runs: list[dict[str, Any]]) -> str:
    by_phase: dict[str, Counter[str]] = {}
    for r in runs:
        c = by_phase.setdefault(f"{r['phase']} ({r['variant']})", Counter())
        c["tries"] += 1
        c["held"] += r["held"]
        c["lost"] += bool(r["lost_rows"])
        c["half"] += bool(r["half_loaded"]) or not r["finished"]
        c["dup"] += bool(r["duplicates"])
        c["audit"] += bool(r["audit_mismatches"])
    rows = [[k, c["tries"], c["held"], c["lost"], c["half"], c["dup"], c["audit"]] for k, c in sorted(by_phase.items())]
    states = Counter(str(r.get("state_at_kill")) for r in runs)
    finals = Counter(str(r.get("final_state")) for r in runs)
    lines = [
        table(
            [
                "kill aimed at (variant)",
                "tries",
                "held",
                "lost rows",
                "half-loaded / unfinished",
                "duplicate decisions",
                "audit mismatches",
            ],
            rows,
        ),
        "",
        f"State of the candidate when the kill landed: {dict(sorted(states.items()))}; final states: {dict(sorted(finals.items()))}.",
    ]
    return "\n".join(lines)


def render(results: dict[str, dict[str, Any]]) -> str:
    info = machine()
    lines = [
        "# Reliability: the long suite",
        "",
        "Produced by `bench/reliability.py` (each case's command is below); rendered "
        f"{info['date']}. Machine: {info['nproc']} cores ({info['cpu']}), Python {info['python']}, "
        f"nvidia-pytriton {info['nvidia-pytriton']} (tritonserver 2.51, CPU only), tritonclient {info['tritonclient']}, "
        "PostgreSQL at 127.0.0.1:5432 (a fresh schema per run, dropped after).",
        "",
        "**Caveat: this is a noisy, shared 2-core machine** (other sessions' builds and tests ran at the same "
        "time). Timings below are what happened on it, not capacities; the counts (held / failed) are the result.",
        "",
        "A try *holds* when every check of its case passed; a try that does not hold is a finding and is listed under "
        "'Tries that did not hold' with what happened and the command to reproduce it.",
        "",
        table(["case", "tries", "held", "failed"], summary_rows(results)),
        "",
        "## What each case checks",
        "",
        "1. **Killed at random points** (`--only killed`, `--rollouts N` per database, default 50, seeded RNG "
        "`--seed`): one real Triton and one database (SQLite file, or a fresh PostgreSQL schema) per backend, a "
        "stable `good` classifier, then N rollouts one after the other. Each publishes a candidate (variant drawn "
        "from same, slow, worse, failing, broken), starts `shepherd run` as a subprocess (policy: bake 5 s, probe "
        "every 0.5 s, reconcile every 1 s) and SIGKILLs it when the candidate reaches the drawn phase "
        "(discovery: its row exists; preflight; canary; decided: a final state) plus a random delay "
        "(up to 0.3 / 1 / 3 / 0.5 s). Recovery: a fresh Runtime (`open_runtime`, what `shepherd run` does at "
        "start) ticks (`reconciler.tick`) until the version is final and Triton serves what SQL wants (120 s "
        "limit). Counted per rollout: lost rows (any table's count, read just before the kill, lower just after "
        "it or at the end), half-loaded (after convergence Triton's index serves anything but the stable version, "
        "a `__preflight` alias is live or its symlink is left, or the rollout never finished), duplicate decisions "
        "(a decision that caused a transition written twice, a version entering the same state twice, or a final "
        "decision that moved nothing; decisions and transitions are paired by their shared timestamp), and "
        "`control_plane.audit.history_mismatches`. Held = all four zero.",
        "2. **Database cut** (`--only db_cut`, `--cut-seconds`, default 60; PostgreSQL): shepherd reaches "
        "PostgreSQL through a threaded TCP proxy of this script on 127.0.0.1 (the machine's PostgreSQL is never "
        "touched). `shepherd tick` runs as a subprocess back to back (bake 15 s). Once the candidate is a probed "
        "canary, the proxy is cut: every connection shut down, the listening socket closed (new connections "
        "refused), for the cut's length; then it listens again. Held when: Triton's index (polled every 0.2 s "
        "during the cut) always serves exactly the versions SQL said before the cut (stable + canary), every tick "
        "that ran wholly inside the cut exited 21 (StoreError), no tick crashed (exit 1, a traceback) or hung, "
        "after the cut the rollout reaches a final state with Triton converged, and the audit is clean.",
        "3. **Full disk during a publish** (`--only full_disk`): a 2 MiB tmpfs mounted as the model repository "
        "(unmounted in a `finally`), `ctr_ranker` v1 built into it with `shepherd build ranker` and rolled out "
        "by the control plane; then, per try, a filler file leaves 0, 1, 3, 7 or 8 free 4 KiB pages (v2 needs "
        "about 9: model.onnx, manifest.json, the staged config), and `shepherd build ranker` is run again. Held "
        "when the build exits with a shepherd error (one `error:` line, exit code not 0 or 1, no traceback), no "
        "`ctr_ranker/2` folder is visible, no `.staging-*` folder is left after the next control-plane start "
        "(`open_runtime` -> `remove_leftover_staging`, disk still full), and a tick on the still-full disk "
        "discovers nothing new (SQL knows only v1; config.pbtxt unchanged).",
        "4. **Triton killed mid-canary** (`--only triton_killed`, `--triton-kills`, default 3; candidates "
        "alternate same and slow): once the candidate is a probed canary, the tritonserver process group (server "
        "and Python stubs) gets SIGKILL, and `LocalTriton.restart` starts it again on the same ports with nothing "
        "loaded. Held when one of the next 3 ticks has Triton serving the stable and the canary again (or the "
        "canary decided with the stable serving), the rollout reaches a final state with Triton converged, and "
        "the audit is clean.",
        f"5. **Soak** (`--only soak`, `--swaps`, default 200): version policy [1] -> [1,2] -> [1] via "
        "`TritonAdmin.load_versions` (as `bench/rollback.py` swaps_run, 0.25 s pauses), each unload followed by "
        "`wait_gone`, under a LoadGenerator (4 threads, 4-row requests naming no version). Memory: the RSS of "
        "the server and every stub (from /proc) and Triton's `nv_cpu_memory_used_bytes` (the whole machine's "
        "used memory, so noisy here) at the start, every 50 swaps and the end, each taken while only v1 is "
        f"loaded. Held when 0 client requests failed, every swap loaded and unloaded, and RSS grew by less than "
        f"{SOAK_MEMORY_LIMIT_MIB:g} MiB (a leak of 0.3 MiB per swap would cross it over 200 swaps).",
        "",
    ]
    lines += ["## Results", ""]
    for backend in ("sqlite", "postgresql"):
        data = results.get(f"killed-{backend}")
        if data:
            lines += [f"### Killed at random points, {backend}", "", f"Command: `{data['command']}`", ""]
            lines += [killed_table(data["data"]["runs"]), ""]
    if "db_cut" in results:
        d = results["db_cut"]["data"]
        lines += [
            "### Database cut", "", f"Command: `{results['db_cut']['command']}`", "",
            table(["check", "held"], [[k, v] for k, v in d["checks"].items()]), "",
            f"SQL before the cut: {d.get('sql_before_cut')}; index samples during the cut: "
            f"{d['index_samples_during_cut']} (differing: {len(d['index_differed'])}); new connections refused "
            f"during the cut: {d.get('refused_during_cut')}; ticks wholly inside the cut (exit code, last line): "
            f"{len(d['ticks_during_cut'])}, e.g. {d['ticks_during_cut'][:1]}; ticks straddling the cut's start or "
            f"end: {d['ticks_straddling']}; exit codes after the cut: {d['ticks_after']}; final state "
            f"{d['final_state']}.",
            "",
        ]  # fmt: skip
    if "full_disk" in results:
        d = results["full_disk"]["data"]
        rows = [
            [
                t["free_bytes_left"],
                t["rc"],
                t["error"][:140].replace("|", "/"),
                t["version_folders"],
                t["staging_after_build"],
                t["staging_after_start"],
                t["versions_in_sql"],
                t["held"],
            ]
            for t in d["tries"]
        ]
        lines += [
            "### Full disk during a publish", "", f"Command: `{results['full_disk']['command']}`", "",
            table(["free bytes left", "exit", "error line", "version folders", "staging after build", "staging after start", "versions in SQL", "held"], rows),
            "",
        ]  # fmt: skip
    if "triton_killed" in results:
        d = results["triton_killed"]["data"]
        rows = [
            [
                t["variant"],
                t.get("processes_killed"),
                t.get("restart_s"),
                t.get("reloaded_after_ticks"),
                t.get("final_state"),
                (t.get("last_decision") or "")[:120].replace("|", "/"),
                len(t.get("audit_mismatches", [])),
                t["held"],
            ]
            for t in d["tries"]
        ]
        lines += [
            "### Triton killed mid-canary", "", f"Command: `{results['triton_killed']['command']}`", "",
            table(["candidate", "processes killed", "restart s", "reloaded after ticks", "final state", "last decision", "audit mismatches", "held"], rows),
            "",
        ]  # fmt: skip
    if "soak" in results:
        d = results["soak"]["data"]
        rows = [[m["swaps"], m["processes"], m["rss_mib"], m["nv_cpu_memory_used_mib"]] for m in d["memory"]]
        lines += [
            "### Soak", "", f"Command: `{results['soak']['command']}`", "",
            f"{d['swaps']} swaps in {d['seconds']} s; client requests {d['requests']}, failed {d['failures']} "
            f"{d['failure_messages'][:2] if d['failure_messages'] else ''}; served by {d['served_by']}; swap errors "
            f"{d['swap_errors'] or 'none'}; RSS growth {d['rss_growth_mib']} MiB (limit {d['limit_mib']:g}).",
            "",
            table(["after swaps", "server + stub processes", "RSS MiB (server + stubs)", "nv_cpu_memory_used MiB (machine)"], rows),
            "",
        ]  # fmt: skip
    failed = not_held(results)
    lines += ["## Tries that did not hold", ""]
    lines += [f"- {line}" for line in failed] if failed else ["None."]
    lines.append("")
    return "\n".join(lines)


def not_held(results: dict[str, dict[str, Any]]) -> list[str]:
    """One line per try that did not hold: what happened, enough to reproduce it."""
    found = []
    for name, result in sorted(results.items()):
        body = result["data"]
        tries = body.get("runs") or body.get("tries") or [body]
        for number, run in enumerate(tries):
            if run.get("held"):
                continue
            failed_checks = [k for k, v in (run.get("checks") or {}).items() if not v]
            detail = {k: v for k, v in run.items() if k not in ("checks", "memory", "held")}
            found.append(
                f"{name} try {number}: failed {failed_checks or 'see detail'}; `{result['command']}`; "
                + json.dumps(detail, default=str)[:1500]
            )
    return found


NOTES_MARKER = "<!-- notes: kept when bench/reliability.py renders this file again -->"


def kept_notes(doc: Path) -> str:
    """The hand-written part of the doc (findings, what ran), from the marker on; a new marker if none."""
    text = doc.read_text() if doc.is_file() else ""
    at = text.find(NOTES_MARKER)
    return text[at:] if at >= 0 else NOTES_MARKER + "\n"


def load_results(out: Path) -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted(out.glob("reliability-*.json")):
        found[path.stem.removeprefix("reliability-")] = json.loads(path.read_text())
    return found


def save(out: Path, name: str, data: dict[str, Any], command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"reliability-{name}.json").write_text(json.dumps({"command": command, "data": data}, indent=2, default=str))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=CASES, default=list(CASES))
    parser.add_argument("--rollouts", type=int, default=50, help="killed rollouts per database")
    parser.add_argument("--backends", nargs="*", choices=("sqlite", "postgresql"), default=["sqlite", "postgresql"])
    parser.add_argument("--cut-seconds", type=float, default=60.0)
    parser.add_argument("--swaps", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4, help="client threads during the soak")
    parser.add_argument("--triton-kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--quick", action="store_true", help="a few tries of each: a smoke run")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--doc", type=Path, default=DOC, help="where to render the markdown")
    parser.add_argument("--render", action="store_true", help="only render --doc from --out's JSON")
    args = parser.parse_args(argv)
    command = "python bench/reliability.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.quick:
        args.rollouts, args.cut_seconds, args.swaps, args.triton_kills = 3, 10.0, 10, 1
    if not args.render:
        with tempfile.TemporaryDirectory(prefix="shepherd-reliability-") as scratch_dir:
            scratch = Path(scratch_dir)
            if "killed" in args.only:
                for backend in args.backends:
                    data = killed_rollouts(
                        scratch / f"killed-{backend}", backend, rollouts=args.rollouts, seed=args.seed
                    )
                    save(args.out, f"killed-{backend}", data, command.strip())
            if "db_cut" in args.only:
                save(args.out, "db_cut", db_cut(scratch / "db_cut", cut_seconds=args.cut_seconds), command.strip())
            if "full_disk" in args.only:
                pages = [0, 8] if args.quick else [0, 1, 3, 7, 8]
                save(args.out, "full_disk", full_disk(scratch / "full_disk", leave_pages=pages), command.strip())
            if "triton_killed" in args.only:
                data = triton_killed(scratch / "triton_killed", kills=args.triton_kills)
                save(args.out, "triton_killed", data, command.strip())
            if "soak" in args.only:
                data = soak(scratch / "soak", swaps=args.swaps, concurrency=args.concurrency)
                save(args.out, "soak", data, command.strip())
    results = load_results(args.out)
    print(table(["case", "tries", "held", "failed"], summary_rows(results)), flush=True)
    args.doc.write_text(render(results) + "\n" + kept_notes(args.doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
